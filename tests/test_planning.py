"""nnUNetv2_plan_and_preprocess_cin on generated data: per-modality statistics and normalization checked against
values computed here from the raw files, conditional architecture in the plans, modality in the case properties."""
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_cin.dataset_conversion.synthetic import generate_case, write_nnunet_dataset
from nnunet_cin.modalities import ModalityError, ModalityRules
from nnunet_cin.planning import signature
from nnunet_cin.planning.fingerprint import SAMPLES_ENV, fingerprint_is_current
from nnunet_cin.planning.planners import modality_normalization, normalization_schemes
from nnunet_cin.plans import CINPlans
from nnunet_helpers import plan_in_process

SHAPE = (24, 24, 24)


def tree_hash(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(*args, returncode=0):
    return plan_in_process(*args, "-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar", returncode=returncode)


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)


def expected_stats(folder: Path, cases) -> dict:
    """nnU-Net's foreground intensity statistics, computed exactly: every case weighs the same (nnU-Net draws the
    same number of samples from each case's labelled voxels)."""
    values, weights = [], []
    for c in cases:
        img, seg = read(folder / "imagesTr" / f"{c}_0000.nii.gz"), read(folder / "labelsTr" / f"{c}.nii.gz")
        fg = img[seg > 0]
        values.append(fg)
        weights.append(np.full(fg.size, 1.0 / fg.size))
    v, w = np.concatenate(values), np.concatenate(weights)
    mean = np.average(v, weights=w)
    p = np.percentile(v, (0.5, 50, 99.5), weights=w, method="inverted_cdf")
    return {"mean": mean, "std": np.sqrt(np.average((v - mean) ** 2, weights=w)), "min": v.min(), "max": v.max(),
            "percentile_00_5": p[0], "median": p[1], "percentile_99_5": p[2]}


def assert_stats_close(got: dict, exp: dict, what: str):
    span = exp["max"] - exp["min"]
    assert exp["min"] <= got["min"] and got["max"] <= exp["max"], what  # samples lie within the modality's values
    assert got["mean"] == pytest.approx(exp["mean"], abs=0.01 * span), what
    assert got["std"] == pytest.approx(exp["std"], rel=0.03), what
    for k in ("percentile_00_5", "median", "percentile_99_5"):
        assert got[k] == pytest.approx(exp[k], abs=0.02 * span), (what, k)


def load_pkls(folder: Path) -> dict:
    return {p.stem: pickle.loads(p.read_bytes()) for p in sorted(folder.glob("*.pkl"))}


@pytest.fixture
def few_samples(monkeypatch):
    # nnU-Net samples 1e8 foreground voxels whatever the data size; tiny data need far fewer
    monkeypatch.setenv(SAMPLES_ENV, "3e5")


def test_two_modalities(nnunet_env, few_samples):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

    from nnunet_cin.cin import cin_layers
    from nnunet_cin.preprocessing.preprocessor import CINPreprocessor

    raw = write_nnunet_dataset(nnunet_env.raw, 999, cases_per_modality={"CT": 3, "MR": 3}, shape=SHAPE)
    before = tree_hash(raw)
    run_cli("-d", "999")
    pre = nnunet_env.preprocessed / raw.name
    assert tree_hash(raw) == before  # raw data byte-for-byte unchanged

    ct, mr = [f"ct_{i:04d}" for i in range(3)], [f"mr_{i:04d}" for i in range(3)]
    plans = json.loads((pre / "nnUNetPlansCIN.json").read_text())
    fp = json.loads((pre / "dataset_fingerprint.json").read_text())

    # plans: conditional architecture, own data folder, per-modality normalization
    conf = plans["configurations"]["3d_fullres"]
    assert plans["plans_name"] == "nnUNetPlansCIN"
    assert conf["architecture"]["network_class_name"] == "nnunet_cin.networks.ConditionalPlainConvUNet"
    assert conf["architecture"]["arch_kwargs"]["num_modalities"] == 2
    assert conf["architecture"]["arch_kwargs"]["cin_scope"] == "encoder"
    assert conf["data_identifier"] == "nnUNetPlansCIN_3d_fullres" and conf["preprocessor_name"] == "CINPreprocessor"
    cin = plans["cin"]
    assert cin["modalities"] == ["CT", "MR"]
    assert cin["normalization_schemes"] == {"CT": "CTClipZScoreNormalization", "MR": "ZScoreNormalization"}
    assert cin["use_mask_for_norm"] == {"CT": False, "MR": False}
    assert cin["rules"] == {"modalities": ["CT", "MR"], "modality_patterns": {"CT": "^ct_", "MR": "^mr_"}}
    pm = PlansManager(plans)
    net = get_network_from_plans(conf["architecture"]["network_class_name"], conf["architecture"]["arch_kwargs"],
                                 conf["architecture"]["_kw_requires_import"], 1, 8, allow_init=False)
    assert cin_layers(net) and all(layer.num_modalities == 2 for layer in cin_layers(net))

    # statistics: each modality from its own cases only, against exact values computed from the raw files
    exp_ct, exp_mr = expected_stats(raw, ct), expected_stats(raw, mr)
    assert_stats_close(cin["intensity_properties"]["CT"]["0"], exp_ct, "CT")
    assert_stats_close(cin["intensity_properties"]["MR"]["0"], exp_mr, "MR")
    assert exp_ct["percentile_99_5"] < exp_mr["percentile_99_5"]  # mixing them would have shifted the CT bounds
    assert fp["cin"]["case_modality"] == {**{c: "CT" for c in ct}, **{c: "MR" for c in mr}}
    assert fp["cin"]["per_modality"]["CT"]["num_cases"] == 3
    ct_spacing = np.array(fp["cin"]["per_modality"]["CT"]["median_spacing"])
    assert np.all(ct_spacing < np.array(fp["cin"]["per_modality"]["MR"]["median_spacing"]))  # generator: CT finer
    # nnU-Net's own dataset-wide entries are still there (plain nnU-Net planners can use this fingerprint)
    assert set(fp["foreground_intensity_properties_per_channel"]["0"]) >= {"mean", "std", "percentile_00_5"}
    assert fp["foreground_intensity_properties_per_channel"]["0"]["max"] == pytest.approx(
        max(cin["intensity_properties"][m]["0"]["max"] for m in ("CT", "MR")))

    # modality signatures: each case's features on the whole image as read, the signatures built from them with the
    # absolute scale checked for CT (CTClipZScoreNormalization, HU-based) only; held-out cases of the generator are recognised
    raw_features = {c: signature.case_features(read(raw / "imagesTr" / f"{c}_0000.nii.gz")[None].astype(np.float32),
                                               sitk.ReadImage(str(raw / "imagesTr" / f"{c}_0000.nii.gz")).GetSpacing())
                    for c in ct + mr}
    assert fp["cin"]["signature_version"] == signature.VERSION
    assert fp["cin"]["case_features"] == raw_features  # same values, same float32 image: equal exactly
    sigs = CINPlans(plans).signatures
    assert sigs == signature.build_signatures({"CT": [raw_features[c] for c in ct], "MR": [raw_features[c] for c in mr]},
                                              absolute_modalities=["CT"])
    for m in ("CT", "MR"):
        image, _ = generate_case(m, 12345, SHAPE)
        held_out = signature.case_features(sitk.GetArrayFromImage(image)[None].astype(np.float32), image.GetSpacing())
        assert signature.match(sigs, held_out).best == m
    assert CINPlans({k: v for k, v in plans.items() if k != "cin"}).signatures is None  # plain nnU-Net plans
    assert CINPlans({**plans, "cin": {k: v for k, v in cin.items() if k != "signatures"}}).signatures is None

    # preprocessed properties carry each case's modality
    props = load_pkls(pre / "nnUNetPlansCIN_3d_fullres")
    assert {k: (v["modality"], v["modality_index"]) for k, v in props.items()} == \
           {**{c: ("CT", 0) for c in ct}, **{c: ("MR", 1) for c in mr}}
    assert sorted(p.name for p in (pre / "gt_segmentations").iterdir()) == sorted(f"{c}.nii.gz" for c in ct + mr)

    # normalization: the same preprocessor on raw files, at the case's own spacing (no resampling) so that the
    # output can be compared voxel by voxel with the normalization computed here
    dataset_json = json.loads((raw / "dataset.json").read_text())
    pp = CINPreprocessor(verbose=False)
    tf = plans["transpose_forward"]

    def preprocess(case, modality=None):
        img = raw / "imagesTr" / f"{case}_0000.nii.gz"
        spacing = list(sitk.ReadImage(str(img)).GetSpacing())[::-1]
        cm = ConfigurationManager({**pm.get_configuration("3d_fullres").configuration,
                                   "spacing": [spacing[i] for i in tf]})
        data, _, p = pp.run_case([str(img)], None, pm, cm, dataset_json, modality=modality)
        return data[0], p, read(img).transpose(tf)

    def ct_clip_zscore(x):  # the CT default: the HU range [-1024, 3071], then this image's z-score
        x = np.clip(x, -1024, 3071)
        return (x - x.mean()) / x.std()

    data, p, x = preprocess("ct_0001")
    assert p["modality"] == "CT" and data.shape == x.shape
    np.testing.assert_allclose(data, ct_clip_zscore(x), atol=1e-4)

    data, p, x = preprocess("mr_0002")
    assert p["modality"] == "MR" and p["modality_index"] == 1
    np.testing.assert_allclose(data, (x - x.mean()) / x.std(), atol=1e-4)  # z-score of this image

    # inference with an explicit modality: the MR image normalized as CT
    data, p, x = preprocess("mr_0002", modality="CT")
    assert p["modality"] == "CT" and p["modality_index"] == 0
    np.testing.assert_allclose(data, ct_clip_zscore(x), atol=1e-4)
    with pytest.raises(ModalityError, match="PET"):
        preprocess("mr_0002", modality="PET")


def test_three_modalities_resenc_and_override(nnunet_env, few_samples):
    raw = write_nnunet_dataset(nnunet_env.raw, 998, cases_per_modality={"CT": 2, "MR": 2, "T2": 2}, shape=SHAPE)
    dj = json.loads((raw / "dataset.json").read_text())
    dj["case_modalities"] = {"t2_0001": "MR"}  # an override: this case is normalized and conditioned as MR
    (raw / "dataset.json").write_text(json.dumps(dj))
    before = tree_hash(raw)
    run_cli("-d", "998", "-pl", "nnUNetPlannerResEncM")
    assert tree_hash(raw) == before
    pre = nnunet_env.preprocessed / raw.name

    plans = json.loads((pre / "nnUNetResEncUNetMPlansCIN.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    assert conf["architecture"]["network_class_name"] == "nnunet_cin.networks.ConditionalResidualEncoderUNet"
    assert conf["architecture"]["arch_kwargs"]["num_modalities"] == 3
    assert conf["data_identifier"] == "nnUNetResEncUNetMPlansCIN_3d_fullres"  # not nnU-Net's shared nnUNetPlans_*
    cin = plans["cin"]
    assert cin["modalities"] == ["CT", "MR", "T2"]
    assert cin["normalization_schemes"] == {"CT": "CTClipZScoreNormalization", "MR": "ZScoreNormalization",
                                            "T2": "ZScoreNormalization"}
    fingerprint = json.loads((pre / "dataset_fingerprint.json").read_text())
    assert {m: v["num_cases"] for m, v in fingerprint["cin"]["per_modality"].items()} == {"CT": 2, "MR": 3, "T2": 1}
    assert_stats_close(cin["intensity_properties"]["T2"]["0"], expected_stats(raw, ["t2_0000"]), "T2")
    assert_stats_close(cin["intensity_properties"]["MR"]["0"], expected_stats(raw, ["mr_0000", "mr_0001", "t2_0001"]),
                       "MR")
    props = load_pkls(pre / "nnUNetResEncUNetMPlansCIN_3d_fullres")
    assert {k: (v["modality"], v["modality_index"]) for k, v in props.items()} == {
        "ct_0000": ("CT", 0), "ct_0001": ("CT", 0), "mr_0000": ("MR", 1), "mr_0001": ("MR", 1),
        "t2_0000": ("T2", 2), "t2_0001": ("MR", 1)}


def test_scheme_from_modality_name_as_nnunet_maps_channel_names():
    per = {m: {"median_relative_size_after_cropping": r} for m, r in
           (("CT", 0.5), ("noNorm", 1.0), ("T1", 0.5), ("MR", 0.9), ("rescale_to_0_1", 1.0))}
    schemes, mask = modality_normalization(list(per), per)
    assert schemes == {"CT": "CTClipZScoreNormalization", "noNorm": "NoNormalization", "T1": "ZScoreNormalization",
                       "MR": "ZScoreNormalization", "rescale_to_0_1": "RescaleTo01Normalization"}
    # nnU-Net: the nonzero mask when cropping shrinks the images below 3/4, for schemes that support it
    assert mask == {"CT": False, "noNorm": False, "T1": True, "MR": False, "rescale_to_0_1": False}


def test_stored_fingerprint_is_reused_only_for_the_same_rules():
    rules = ModalityRules.from_dataset_json({"modalities": ["CT", "MR"],
                                             "modality_patterns": {"CT": "^ct_", "MR": "^mr_"}})
    cm = {"ct_1": "CT", "mr_1": "MR"}
    fp = {"cin": {"rules": rules.to_dict(), "case_modality": cm, "signature_version": signature.VERSION,
                  "case_features": {"ct_1": {}, "mr_1": {}}}}
    assert fingerprint_is_current(fp, rules, cm)
    assert not fingerprint_is_current({"cin": {k: v for k, v in fp["cin"].items() if k != "case_features"}}, rules,
                                      cm)  # made before the modality signatures
    assert not fingerprint_is_current({"cin": {**fp["cin"], "signature_version": 0}}, rules, cm)  # older features
    assert not fingerprint_is_current({"spacings": []}, rules, cm)  # plain nnU-Net fingerprint
    assert not fingerprint_is_current(fp, rules, {**cm, "ct_2": "CT"})  # a case was added
    other = ModalityRules.from_dataset_json({**rules.to_dict(), "case_modalities": {"ct_1": "MR"}})
    assert not fingerprint_is_current(fp, other, cm)


def test_training_cases_are_checked_in_one_place():
    """The planning command, the fingerprint extractor and the planners all call resolve_training_cases."""
    rules = ModalityRules.from_dataset_json({"modalities": ["CT", "MR", "PET"],
                                             "modality_patterns": {"CT": "^ct_", "MR": "^mr_", "PET": "^pet_"},
                                             "case_modalities": {"odd": "MR"}}, "D/dataset.json")
    assert rules.resolve_training_cases(["ct_1", "odd", "pet_2"]) == {"ct_1": "CT", "odd": "MR", "pet_2": "PET"}
    for cases, fragments in ((["ct_1", "odd"], ["D/dataset.json", "['PET']", "no training case"]),
                             (["ct_1", "odd", "us_1"], ['"us_1"', "matches none"]),
                             (["ct_1", "pet_1", "mr_1"], ["odd", "do not exist"])):
        with pytest.raises(ModalityError) as e:
            rules.resolve_training_cases(cases)
        assert all(f in str(e.value) for f in fragments), (fragments, str(e.value))


def test_planners_keep_the_defaults_of_their_nnunet_preset():
    """One __init__ for every planner of ours: each one's defaults are those of the nnU-Net planner it extends, with
    'CIN' appended to the plans name."""
    import inspect

    from nnunet_cin.planning.planners import PLANNERS

    for name, cls in PLANNERS.items():
        base = next(b for b in cls.__mro__[1:] if b.__module__.startswith("nnunetv2"))
        defaults = {k: p.default for k, p in inspect.signature(base.__init__).parameters.items()}
        assert cls.default_plans_name == defaults["plans_name"] + "CIN", name
        assert cls.default_gpu_memory_target_in_gb == defaults["gpu_memory_target_in_gb"], name
        assert "__init__" not in vars(cls), name  # the mixin's


def test_modality_normalization_key_names_each_scheme_and_is_checked():
    modalities = ["CT", "MR", "T2"]
    assert normalization_schemes(modalities, {}) == {"CT": "CTClipZScoreNormalization", "MR": "ZScoreNormalization",
                                                     "T2": "ZScoreNormalization"}  # default: the name picks it
    assert normalization_schemes(modalities, {"modality_normalization": {"CT": "zscore", "T2": "ct"}}) == \
        {"CT": "ZScoreNormalization", "MR": "ZScoreNormalization", "T2": "CTNormalization"}
    assert normalization_schemes(modalities, {"modality_normalization": {"MR": "noNorm", "T2": "rescale_to_0_1"}}) \
        == {"CT": "CTClipZScoreNormalization", "MR": "NoNormalization", "T2": "RescaleTo01Normalization"}
    for key, fragments in (({"PET": "zscore"}, ["D/dataset.json", '"modality_normalization"', "PET", "not in"]),
                           ({"MR": "zcore"}, ['"MR"', "'zcore'", "zscore", "rescale_to_0_1", "nonorm"]),
                           ({"MR": None}, ['"MR"', "None", "unknown normalization scheme"]),
                           (["zscore"], ['"modality_normalization"', "must be an object"])):
        with pytest.raises(ModalityError) as e:
            normalization_schemes(modalities, {"modality_normalization": key}, "D/dataset.json")
        assert all(f in str(e.value) for f in fragments), (fragments, str(e.value))


def test_explicit_normalization_and_no_rule_drift(nnunet_env, few_samples):
    """dataset.json "modality_normalization" decides the scheme (CT z-scored per image here); planning alone
    (--no_pp) after a change of the rules or of the normalization stops before writing anything and names the cases."""
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

    from nnunet_cin.preprocessing.preprocessor import CINPreprocessor

    raw = write_nnunet_dataset(nnunet_env.raw, 996, cases_per_modality={"CT": 2, "MR": 2}, shape=SHAPE)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({**dataset_json, "modality_normalization": {"CT": "z-score"}}))
    err = run_cli("-d", "996", returncode=2).stderr
    assert '"modality_normalization" has unknown normalization scheme(s) "CT": \'z-score\'' in err, err
    assert list(nnunet_env.preprocessed.iterdir()) == []  # checked before anything is written
    dataset_json["modality_normalization"] = {"CT": "zscore"}
    (raw / "dataset.json").write_text(json.dumps(dataset_json))
    run_cli("-d", "996")
    pre = nnunet_env.preprocessed / raw.name
    plans = json.loads((pre / "nnUNetPlansCIN.json").read_text())
    cin = plans["cin"]
    assert cin["normalization_schemes"] == {"CT": "ZScoreNormalization", "MR": "ZScoreNormalization"}
    assert cin["modality_normalization"] == {"CT": "zscore"}
    assert not cin["signatures"]["modalities"]["CT"]["absolute"]  # the scheme decides, not the name

    # the preprocessor z-scores a CT image by its own statistics (at the case's own spacing: no resampling)
    pm = PlansManager(plans)
    img = raw / "imagesTr" / "ct_0001_0000.nii.gz"
    spacing = list(sitk.ReadImage(str(img)).GetSpacing())[::-1]
    tf = plans["transpose_forward"]
    cm = ConfigurationManager({**pm.get_configuration("3d_fullres").configuration, "spacing": [spacing[i] for i in tf]})
    data, _, _ = CINPreprocessor(verbose=False).run_case([str(img)], None, pm, cm, dataset_json)
    x = read(img).transpose(tf)
    np.testing.assert_allclose(data[0], (x - x.mean()) / x.std(), atol=1e-4)

    # drift: the normalization key dropped (CT -> CT clipping) and one case reassigned, then planning alone
    before = tree_hash(pre)
    drifted = {**{k: v for k, v in dataset_json.items() if k != "modality_normalization"},
               "case_modalities": {"mr_0001": "CT"}}
    (raw / "dataset.json").write_text(json.dumps(drifted))
    err = run_cli("-d", "996", "--no_pp", returncode=2).stderr
    assert "case mr_0001: preprocessed as MR (index 1), the modality rules now say CT (index 0)" in err, err
    assert "mr_0000" not in err and "ct_0000" not in err  # only the case that changed
    assert ("modality CT: preprocessed with ZScoreNormalization, dataset.json now asks for CTClipZScoreNormalization"
            in err)
    assert "without --no_pp" in err and "-c 3d_fullres" in err and "Traceback" not in err
    assert tree_hash(pre) == before  # nothing written: plans, fingerprint, dataset.json, data

    # preprocessing again brings data and plans together; planning alone is then accepted
    run_cli("-d", "996")
    props = load_pkls(pre / "nnUNetPlansCIN_3d_fullres")
    assert {k: v["modality"] for k, v in props.items()} == {"ct_0000": "CT", "ct_0001": "CT", "mr_0000": "MR",
                                                            "mr_0001": "CT"}
    run_cli("-d", "996", "--no_pp")
    assert json.loads((pre / "nnUNetPlansCIN.json").read_text())["cin"]["normalization_schemes"]["CT"] == \
        "CTClipZScoreNormalization"
