"""The CT normalization options (issue: the default must hold on data it was not chosen on): CTClipZScore against
hand-computed values and against nnU-Net's CTNormalization on a chest-like intensity mix, its name in dataset.json,
planning one dataset with several normalizations side by side (--modality_normalization), compare's normalization
arms, and the generator's thorax variant that shows why it matters."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization, ZScoreNormalization

from nnunet_cin.dataset_conversion import synthetic
from nnunet_cin.experiments.compare.arms import parse_normalization_arm, plan_arms
from nnunet_cin.modalities import ModalityError
from nnunet_cin.planning.planners import modality_normalization, normalization_schemes
from nnunet_cin.preprocessing.normalization import CTClipZScoreNormalization, scheme_class
from nnunet_helpers import plan_in_process

# padding outside the scan circle, air, lung, fat, myocardium, blood, bone, saturated metal
CHEST = np.array([-3024, -1000, -850, -100, 100, 300, 700, 4000], np.float32)
FOREGROUND = {"mean": 250.0, "std": 90.0, "percentile_00_5": 60.0, "percentile_99_5": 380.0}


def test_ct_clip_zscore_by_hand():
    clipped = np.array([-1024, -1000, -850, -100, 100, 300, 700, 3071], np.float64)  # the HU range of a 12-bit CT
    expected = (clipped - clipped.mean()) / clipped.std()
    got = CTClipZScoreNormalization(False, FOREGROUND).run(CHEST.copy())
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got.dtype == np.float32
    # needs no statistics (unlabelled cases, add-modality --unlabeled)
    np.testing.assert_allclose(CTClipZScoreNormalization(False, {}).run(CHEST.copy()), expected, rtol=1e-5)


def test_ct_clip_zscore_is_nnunets_zscore_inside_the_hu_range_and_robust_to_padding():
    rng = np.random.default_rng(0)
    ct = rng.choice(CHEST[1:-1], size=(8, 16, 16)) + rng.normal(0, 5, (8, 16, 16)).astype(np.float32)  # in range
    zscore = ZScoreNormalization(False, {}).run(ct.copy())
    np.testing.assert_allclose(CTClipZScoreNormalization(False, {}).run(ct.copy()), zscore, atol=1e-5)
    # the same scan padded outside its circle, as scanners store it: nnU-Net's z-score moves every tissue (its mean
    # and sd now depend on the padding), ours keeps the tissues where they were relative to each other
    padded = ct.copy()
    padded[:, :4, :] = -3024
    inside = (slice(None), slice(4, None), slice(None))
    ours = CTClipZScoreNormalization(False, {}).run(padded.copy())[inside]
    theirs = ZScoreNormalization(False, {}).run(padded.copy())[inside]
    spread = lambda x: float(np.percentile(x, 95) - np.percentile(x, 5))
    assert spread(ours) > 1.5 * spread(theirs)


def test_ct_clip_zscore_keeps_the_contrast_nnunets_ct_normalization_clips_away():
    ours = CTClipZScoreNormalization(False, FOREGROUND).run(CHEST.copy())
    nnunet = CTNormalization(False, FOREGROUND).run(CHEST.copy())
    # nnU-Net clips below at the foreground's 0.5th percentile: air, lung and fat become one value
    assert nnunet[1] == nnunet[2] == nnunet[3]
    # ours keeps padding = air < lung < fat < myocardium < blood < bone < metal
    assert ours[0] < ours[1] < ours[2] < ours[3] < ours[4] < ours[5] < ours[6] < ours[7]


def test_ct_clip_zscore_never_uses_the_nonzero_mask():
    # nnU-Net sets use_mask_for_norm only for schemes that leave the outside at zero; 0 HU is water, not outside
    assert not CTClipZScoreNormalization.leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true
    per = {m: {"median_relative_size_after_cropping": 0.5} for m in ("CT", "MR")}
    schemes, use_mask = modality_normalization(["CT", "MR"], per, {"modality_normalization": {"CT": "CTClipZScore"}})
    assert schemes["CT"] == "CTClipZScoreNormalization" and use_mask == {"CT": False, "MR": True}


def test_dataset_json_names_the_scheme_and_unknown_names_list_it():
    schemes = normalization_schemes(["CT", "MR"], {"modality_normalization": {"CT": "ctclipzscore"}})
    assert schemes == {"CT": "CTClipZScoreNormalization", "MR": "ZScoreNormalization"}
    assert scheme_class("CTClipZScoreNormalization") is CTClipZScoreNormalization
    assert scheme_class("CTNormalization") is CTNormalization  # nnU-Net's, found in its package
    with pytest.raises(ModalityError) as e:
        normalization_schemes(["CT", "MR"], {"modality_normalization": {"CT": "clip"}}, "D/dataset.json")
    assert "'clip'" in str(e.value) and "ctclipzscore" in str(e.value) and "D/dataset.json" in str(e.value)
    with pytest.raises(RuntimeError, match="NoSuchNormalization"):
        scheme_class("NoSuchNormalization")


def _plan(*args, returncode=0):
    return plan_in_process(*args, "-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar", returncode=returncode)


def test_one_dataset_planned_with_several_normalizations_side_by_side(nnunet_env, monkeypatch):
    """--modality_normalization with -overwrite_plans_name: a second plans file and its own preprocessed data, the
    first plans untouched; a CT case preprocessed with CT=zscore equals the formula applied to the raw image."""
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

    from nnunet_cin.preprocessing.preprocessor import CINPreprocessor

    monkeypatch.setenv("nnUNet_cin_fingerprint_samples", "3e5")
    raw = synthetic.write_nnunet_dataset(nnunet_env.raw, 993, cases_per_modality={"CT": 2, "MR": 2},
                                         shape=(20, 20, 20), variant="thorax")
    _plan("-d", "993")
    pre = nnunet_env.preprocessed / raw.name
    default_plans = (pre / "nnUNetPlansCIN.json").read_bytes()
    bad = _plan("-d", "993", "--modality_normalization", "CT", returncode=2).stderr
    assert "--modality_normalization CT: expected MODALITY=SCHEME" in bad
    bad = _plan("-d", "993", "--modality_normalization", "PET=zscore", returncode=2).stderr
    assert "PET" in bad and "not in" in bad
    assert json.loads(default_plans)["cin"]["normalization_schemes"]["CT"] == "CTClipZScoreNormalization"  # default
    _plan("-d", "993", "--modality_normalization", "CT=CT", "-overwrite_plans_name", "CTNormPlans")
    plans = json.loads((pre / "CTNormPlans.json").read_text())
    assert plans["cin"]["normalization_schemes"] == {"CT": "CTNormalization", "MR": "ZScoreNormalization"}
    assert plans["cin"]["modality_normalization"] == {"CT": "CT"}
    assert (pre / "nnUNetPlansCIN.json").read_bytes() == default_plans
    assert sorted(p.name for p in pre.glob("*_3d_fullres")) == ["CTNormPlans_3d_fullres", "nnUNetPlansCIN_3d_fullres"]

    # each plans' CT normalization, applied by the preprocessor, against its formula on the raw image
    img = raw / "imagesTr" / "ct_0001_0000.nii.gz"
    dataset_json = json.loads((raw / "dataset.json").read_text())
    for p in (json.loads(default_plans), plans):
        pm, tf = PlansManager(p), p["transpose_forward"]
        spacing = list(sitk.ReadImage(str(img)).GetSpacing())[::-1]
        cm = ConfigurationManager({**pm.get_configuration("3d_fullres").configuration,
                                   "spacing": [spacing[i] for i in tf]})
        data, _, _ = CINPreprocessor(verbose=False).run_case([str(img)], None, pm, cm, dataset_json)
        x = sitk.GetArrayFromImage(sitk.ReadImage(str(img))).astype(np.float64).transpose(tf)
        if p is plans:
            stats = p["cin"]["intensity_properties"]["CT"]["0"]
            expected = (np.clip(x, stats["percentile_00_5"], stats["percentile_99_5"]) - stats["mean"]) / stats["std"]
        else:
            x = np.clip(x, -1024, 3071)
            expected = (x - x.mean()) / x.std()
        np.testing.assert_allclose(data[0], expected, atol=1e-4)


def test_compare_normalization_arms():
    assert parse_normalization_arm("CT=zscore") == (("CT", "zscore"),)
    assert parse_normalization_arm("CT=CT,MR=noNorm") == (("CT", "CT"), ("MR", "noNorm"))
    for bad in ("CT", "=zscore", "CT=z score"):
        with pytest.raises(ValueError, match="--normalization"):
            parse_normalization_arm(bad)
    plan = plan_arms(["CT", "MR"], ["nnunet"], "_5epochs",
                     normalizations=[(("CT", "CT"),), (("CT", "CTClipZScore"),)])
    assert list(plan.arms) == ["nnunet", "cin_CT-CT", "cin_CT-CTClipZScore"]
    arm = plan.arms["cin_CT-CTClipZScore"]
    assert arm.trainer == "nnUNetTrainerCIN_5epochs" and arm.normalization == (("CT", "CTClipZScore"),)
    assert [r.key for r in plan.rows] == ["nnunet", "cin_CT-CT", "cin_CT-CTClipZScore"]


def test_compare_dry_run_plans_each_normalization(nnunet_env):
    synthetic.write_nnunet_dataset(nnunet_env.raw, 554, "Norms", {"CT": 3, "MR": 3}, shape=(8, 8, 8))
    res = subprocess.run([sys.executable, "-m", "nnunet_cin.experiments.compare", "-d", "554", "-f", "0",
                          "--schedule", "_5epochs", "--dry-run", "-device", "cpu", "--arms", "nnunet",
                          "--normalization", "CT=zscore", "--normalization", "CT=CTClipZScore"],
                         capture_output=True, text=True, env=dict(os.environ))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    for tag, scheme in (("CT-zscore", "CT=zscore"), ("CT-CTClipZScore", "CT=CTClipZScore")):
        assert (f"nnUNetv2_plan_and_preprocess_cin -d 554 -c 3d_fullres -np 1 -npfp 1 --modality_normalization "
                f"{scheme} -overwrite_plans_name nnUNetPlansCIN_{tag}") in out
        assert f"[cin_{tag} fold 0] training: nnUNetv2_train Dataset554_Norms 3d_fullres 0 -tr " \
               f"nnUNetTrainerCIN_5epochs -p nnUNetPlansCIN_{tag} " in out
    assert not (nnunet_env.preprocessed / "Dataset554_Norms").exists()


def test_thorax_ct_holds_the_chest_around_the_heart():
    foreground = []
    for seed in range(3):
        image, label = synthetic.generate_case("CT", seed, (24, 24, 24), variant="thorax")
        img, lab = sitk.GetArrayFromImage(image).astype(np.float64), sitk.GetArrayFromImage(label)
        assert image.GetPixelID() == sitk.sitkInt16
        outside = img[lab == 0]
        share = lambda lo, hi: np.mean((outside >= lo) & (outside < hi))
        assert share(-1024, -950) > 0.01, seed  # air around the body
        assert share(-950, -600) > 0.10, seed  # lung
        assert share(-200, -40) > 0.05, seed  # fat
        assert share(400, 3071) > 0.001, seed  # bone (the spine)
        foreground.append(img[lab > 0])
    # nnU-Net's CT normalization clips below at the labelled foreground's 0.5th percentile (over all cases): above
    # the fat, so the fat, the lung and the air become that one value
    assert np.percentile(np.concatenate(foreground), 0.5) > -40


def test_thorax_mr_fat_bright_lung_dark():
    for seed in range(3):
        image, label = synthetic.generate_case("MR", seed, (24, 24, 24), variant="thorax")
        img, lab = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)
        myo = img[lab == synthetic.LABELS["MYO"]].mean()
        outside = img[lab == 0]
        assert img.dtype == np.float32 and img.min() >= 0
        assert np.percentile(outside, 95) > 1.5 * myo  # fat as bright as blood, brighter than the myocardium
        assert np.percentile(outside, 20) < 0.5 * myo  # lung and air dark
