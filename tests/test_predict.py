"""nnUNetv2_predict_cin end to end: a tiny conditional model trained by the real `nnUNetv2_train`, then predicted
with -m and with the model's rules; nnU-Net's ensembling/postprocessing on the outputs; error handling."""
import json
import os
import shutil
import pickle
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from damaged_files import truncate_half
from nnunet_helpers import (TINY_MODEL_DATASET, TINY_MODEL_ID, TINY_MODEL_TRAINER, copy_of_tiny_model,
                            RUN_MARKER, descendants, marked_env, marked_running, randomise_cin_rows)

from nnunet_cin.dataset_conversion.synthetic import generate_case

DATASET_ID, DATASET, TRAINER = TINY_MODEL_ID, TINY_MODEL_DATASET, TINY_MODEL_TRAINER
LABELS = list(range(8))  # background + 7 structures


def _run(cmd, env):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def model(tiny_model, tmp_path_factory):
    """This module's copy of the session's tiny model (nnUNetv2_plan_and_preprocess_cin + nnUNetv2_train of a user
    trainer in its own nnUNet_extTrainer folder, on 3 CT + 3 MR synthetic cases of 24^3). Test inputs: one held-out
    case per modality; the MR one re-spaced so that it fits one patch (fast), which still needs resampling."""
    copy = copy_of_tiny_model(tiny_model, tmp_path_factory.mktemp("predict"))
    root, env = copy["root"], copy["env"]
    inputs = {m: root / f"inputs_{m}" for m in ("CT", "MR", "all")}
    for f in inputs.values():
        f.mkdir()
    for modality, case, spacing in (("CT", "ct_0100", None), ("MR", "mr_0100", (0.9, 0.95, 1.05))):
        image, label = generate_case(modality, 1234 + len(modality), (24, 24, 24))
        if spacing is not None:
            image.SetSpacing(spacing)
            label.SetSpacing(spacing)
        image.SetOrigin((12.5, -40.0, 7.25))
        for dest in (inputs[modality], inputs["all"]):
            sitk.WriteImage(image, str(dest / f"{case}_0000.nii.gz"))
        (root / "labels").mkdir(exist_ok=True)
        label.SetOrigin((12.5, -40.0, 7.25))
        sitk.WriteImage(label, str(root / "labels" / f"{case}.nii.gz"))
    return {"root": root, "env": env, "folder": copy["folder"], "inputs": inputs, "raw": copy["raw"]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def model_env(model, monkeypatch):
    """In-process calls (nnU-Net 2.8 reads its paths from the environment when used)."""
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(k, model["env"][k])
    return model


def predict_cli(model, inputs, output, *extra):
    """nnUNetv2_predict_cin in-process (fast), sequential mode unless extra says otherwise."""
    from nnunet_cin.inference.predict import predict_entry_point
    predict_entry_point(["-i", str(inputs), "-o", str(output), "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0",
                         "-tr", TRAINER, "-device", "cpu", "--disable_tta", "--disable_progress_bar",
                         *(extra or ("-npp", "0", "-nps", "0"))])


def read(path):
    img = sitk.ReadImage(str(path))
    return img, sitk.GetArrayFromImage(img)


def probabilities(path):
    return np.load(path)["probabilities"]


def test_predictor_keeps_nnunets_signatures():
    """nnU-Net records predict_from_files' arguments by inspecting its signature, and users call the predictor as
    nnU-Net's: every method we override has nnU-Net's signature (the modality is predictor state)."""
    import inspect
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunet_cin.inference.predict import nnUNetPredictorCIN
    overridden = [n for n, f in vars(nnUNetPredictorCIN).items()
                  if callable(f) and n != "__init__" and hasattr(nnUNetPredictor, n)]
    assert {"predict_from_files", "predict_from_files_sequential", "predict_single_npy_array",
            "get_data_iterator_from_raw_npy_data", "predict_from_data_iterator"} <= set(overridden)
    for name in overridden:
        assert inspect.signature(getattr(nnUNetPredictorCIN, name)) == inspect.signature(
            getattr(nnUNetPredictor, name)), name


@pytest.fixture(scope="module")
def rules_prediction(model):
    """The real command in a subprocess, nnU-Net's multiprocessing path, modalities from the model's rules."""
    out = model["root"] / "pred_rules"
    _run(["nnUNetv2_predict_cin", "-i", str(model["inputs"]["all"]), "-o", str(out), "-d", str(DATASET_ID), "-c",
          "3d_fullres", "-f", "0", "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1",
          "--save_probabilities", "--disable_progress_bar"], model["env"])
    return out


def test_rules_prediction_keeps_geometry_and_nnunet_labels(model, rules_prediction):
    for case in ("ct_0100", "mr_0100"):
        modality = "CT" if case.startswith("ct") else "MR"
        image, _ = read(model["inputs"][modality] / f"{case}_0000.nii.gz")
        pred, arr = read(rules_prediction / f"{case}.nii.gz")
        assert arr.shape == sitk.GetArrayFromImage(image).shape
        np.testing.assert_allclose(pred.GetSpacing(), image.GetSpacing(), rtol=1e-5)
        np.testing.assert_allclose(pred.GetOrigin(), image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(pred.GetDirection(), image.GetDirection(), atol=1e-6)
        assert set(np.unique(arr)) <= set(LABELS) and np.issubdtype(arr.dtype, np.integer)
        props = pickle.load(open(rules_prediction / f"{case}.pkl", "rb"))
        assert props["modality"] == modality
        p = probabilities(rules_prediction / f"{case}.npz")
        assert p.shape[0] == len(LABELS) and np.allclose(p.sum(0), 1, atol=1e-3)
    args = json.loads((rules_prediction / "predict_from_raw_data_args.json").read_text())
    assert args["modality"] is None
    assert not [f for f in os.listdir(rules_prediction) if f.startswith(".partial-")]  # the run's staging folder
    assert (rules_prediction / "plans.json").is_file() and (rules_prediction / "dataset.json").is_file()


def test_evaluate_the_predictions(model, rules_prediction, tmp_path):
    """nnUNetv2_evaluate_cin on the predictions (dataset.json from the prediction folder) = Dice by hand."""
    from nnunet_cin.evaluation.evaluate import run_cli
    result = run_cli(["-ref", str(model["root"] / "labels"), "-pred", str(rules_prediction), "-o",
                      str(tmp_path / "eval"), "-np", "1"])
    summary = result["summary"]
    assert summary["modalities"] == ["CT", "MR"] and summary["num_cases"] == {"CT": 1, "MR": 1}
    for case, modality in (("ct_0100", "CT"), ("mr_0100", "MR")):
        ref = read(model["root"] / "labels" / f"{case}.nii.gz")[1]
        pred = read(rules_prediction / f"{case}.nii.gz")[1]
        for name, label in (("MYO", 1), ("LV", 3)):
            r, p = ref == label, pred == label
            expected = 2 * (r & p).sum() / (r.sum() + p.sum()) if r.sum() + p.sum() else float("nan")
            np.testing.assert_allclose(summary["per_modality"][modality][name]["Dice"], expected)
    assert (tmp_path / "eval.csv").is_file()


def test_modality_flag_reaches_preprocessing_and_network(model_env, rules_prediction, tmp_path, capsys):
    m = model_env
    predict_cli(m, m["inputs"]["MR"], tmp_path / "mr_as_mr", "-m", "MR", "--save_probabilities", "-npp", "0",
                "-nps", "0")
    capsys.readouterr()
    # an MR case predicted as CT on purpose: only with the modality check off (test_a_case_given_the_wrong_modality..)
    predict_cli(m, m["inputs"]["MR"], tmp_path / "mr_as_ct", "--modality", "CT", "--skip-modality-check",
                "--save_probabilities", "-npp", "0", "-nps", "0")
    err = capsys.readouterr().err
    assert err.count("The modality check is off") == 1
    assert "-m CT contradicts the model's dataset.json rules for 1 case(s)" in err and "mr_0100 (rules: MR)" in err
    assert json.loads((tmp_path / "mr_as_ct" / "modalities.json").read_text()) == {
        "mr_0100": {"modality": "CT", "decided_by": "-m", "checked": False}}
    # -m MR on an MR case = what the rules give (sequential path vs nnU-Net's multiprocessing path)
    np.testing.assert_array_equal(read(tmp_path / "mr_as_mr" / "mr_0100.nii.gz")[1],
                                  read(rules_prediction / "mr_0100.nii.gz")[1])
    np.testing.assert_allclose(probabilities(tmp_path / "mr_as_mr" / "mr_0100.npz"),
                               probabilities(rules_prediction / "mr_0100.npz"), atol=1e-3)
    # -m CT on the same MR case: another normalization and another condition -> another result
    p_ct = probabilities(tmp_path / "mr_as_ct" / "mr_0100.npz")
    p_mr = probabilities(tmp_path / "mr_as_mr" / "mr_0100.npz")
    assert np.abs(p_ct - p_mr).max() > 0.05
    assert json.loads((tmp_path / "mr_as_ct" / "predict_from_raw_data_args.json").read_text())["modality"] == "CT"
    props = pickle.load(open(tmp_path / "mr_as_ct" / "mr_0100.pkl", "rb"))
    assert props["modality"] == "CT"
    # as before the check existed: CINPreprocessor's CT normalization, the network conditioned on CT
    predictor = _predictor(m)
    np.testing.assert_array_equal(read(tmp_path / "mr_as_ct" / "mr_0100.nii.gz")[1],
                                  _segmentation_by_hand(predictor, m["inputs"]["MR"] / "mr_0100_0000.nii.gz", "CT"))


def _predictor(model, folder=None):
    from nnunet_cin.inference.predict import nnUNetPredictorCIN
    predictor = nnUNetPredictorCIN(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder or model["folder"]), (0,))
    return predictor


def _segmentation_by_hand(predictor, image_file, modality):
    """Reference: CINPreprocessor with `modality`, the network inside condition(network, index), nnU-Net's export."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunet_cin import condition
    from nnunet_cin.preprocessing.preprocessor import CINPreprocessor
    data, _, p = CINPreprocessor(verbose=False).run_case([str(image_file)], None, predictor.plans_manager,
                                                         predictor.configuration_manager, predictor.dataset_json,
                                                         modality=modality)
    with condition(predictor.network, predictor.modalities.index(modality)):
        logits = super(type(predictor), predictor).predict_sliding_window_return_logits(torch.from_numpy(data))
    return convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, p)


# --- the modality check: never trust the modality blindly -----------------------------------------------------------

def test_a_case_given_the_wrong_modality_is_refused_and_nothing_is_written(model_env, tmp_path, capsys):
    """The issue's reproduction: CT cases predicted with -m MR ran with exit code 0 and a mean Dice of 0.19."""
    from nnunet_cin.inference.modality_check import ModalityCheckError
    from nnunet_cin.inference.predict import predict_from_modelfolder_entry_point
    m = model_env
    out = tmp_path / "out"
    err = _fails(capsys, ["-i", str(m["inputs"]["CT"]), "-o", str(out), "-m", "MR", *BASE],
                 "1 of 1 input case(s) do not look like the modality they were given",
                 "ct_0100: given MR (by -m), looks like CT (margin", "nothing was predicted or written",
                 "--skip-modality-check")
    assert "Traceback" not in err and not out.exists()
    # given by the model's rules: a CT image named like an MR case, next to a right one; only the wrong one listed
    mixed = tmp_path / "mixed"
    shutil.copytree(m["inputs"]["all"], mixed)
    shutil.copy(mixed / "ct_0100_0000.nii.gz", mixed / "mr_0101_0000.nii.gz")
    err = _fails(capsys, ["-i", str(mixed), "-o", str(out), *BASE], "1 of 3 input case(s)",
                 "mr_0101: given MR (by the model's dataset.json rules), looks like CT")
    assert "ct_0100: given" not in err and "mr_0100: given" not in err and not out.exists()
    _fails(capsys, ["-i", str(m["inputs"]["CT"]), "-o", str(out), "-m", str(m["folder"]), "-f", "0", "-device", "cpu",
                    "--modality", "MR"], "ct_0100: given MR (by --modality), looks like CT",
           entry=predict_from_modelfolder_entry_point)
    assert not out.exists()
    # the Python predictor checks too
    predictor = _predictor(m)
    predictor.modality_override = "MR"
    with pytest.raises(ModalityCheckError, match=r"ct_0100: given MR.*looks like CT"):
        predictor.predict_from_files(str(m["inputs"]["CT"]), str(out), num_processes_preprocessing=1,
                                     num_processes_segmentation_export=1)
    with pytest.raises(ModalityCheckError, match=r"ct_0100: given MR.*looks like CT"):
        predictor.predict_from_files_sequential(str(m["inputs"]["CT"]), str(out))
    assert not out.exists()


def test_auto_recognises_mixed_cases_with_neutral_names(model_env, rules_prediction, tmp_path, capsys):
    """-m auto on a CT and an MR case named case_000 / case_001 (no rule matches): the outputs of the correct -m runs
    (the model's rules gave them in rules_prediction), and each decision printed and recorded in modalities.json."""
    m = model_env
    neutral = tmp_path / "neutral"
    neutral.mkdir()
    shutil.copy(m["inputs"]["CT"] / "ct_0100_0000.nii.gz", neutral / "case_000_0000.nii.gz")
    shutil.copy(m["inputs"]["MR"] / "mr_0100_0000.nii.gz", neutral / "case_001_0000.nii.gz")
    # a CT no longer in HU (rescaled to [0, 1]) looks like neither: named, nothing predicted
    bad = tmp_path / "with_rescaled"
    shutil.copytree(neutral, bad)
    ct = sitk.ReadImage(str(neutral / "case_000_0000.nii.gz"), sitk.sitkFloat32)
    sitk.WriteImage(sitk.RescaleIntensity(ct, 0.0, 1.0), str(bad / "case_002_0000.nii.gz"))
    err = _fails(capsys, ["-i", str(bad), "-o", str(tmp_path / "bad_out"), "-m", "auto", *BASE],
                 "-m auto: 1 of 3 case(s) match no modality clearly", "case_002: looks like none",
                 "Predict these cases with -m NAME")
    assert "case_000:" not in err and not (tmp_path / "bad_out").exists()

    out = tmp_path / "auto"
    predict_cli(m, neutral, out, "-m", "auto", "--save_probabilities", "-npp", "0", "-nps", "0")
    printed = capsys.readouterr().out
    for case, modality, reference in (("case_000", "CT", "ct_0100"), ("case_001", "MR", "mr_0100")):
        np.testing.assert_array_equal(read(out / f"{case}.nii.gz")[1],
                                      read(rules_prediction / f"{reference}.nii.gz")[1])
        np.testing.assert_allclose(probabilities(out / f"{case}.npz"), probabilities(rules_prediction /
                                                                                    f"{reference}.npz"), atol=1e-3)
        assert pickle.load(open(out / f"{case}.pkl", "rb"))["modality"] == modality
        assert re.search(rf"{case}\s+{modality}\s+auto\s+looks like {modality}", printed), printed
    record = json.loads((out / "modalities.json").read_text())
    assert list(record) == ["case_000", "case_001"]
    for case, modality, other in (("case_000", "CT", "MR"), ("case_001", "MR", "CT")):
        r = record[case]
        assert (r["modality"], r["decided_by"], r["checked"], r["verdict"], r["looks_like"], r["runner_up"]) == (
            modality, "auto", True, "match", modality, other)
        assert r["margin"] >= 9
    assert json.loads((out / "predict_from_raw_data_args.json").read_text())["modality"] == "auto"


def _model_copy(model, tmp_path, edit_plans=None, edit_dataset_json=None):
    """The trained model folder (one fold) as another user would have it: plans.json / dataset.json edited."""
    folder = tmp_path / "model"
    (folder / "fold_0").mkdir(parents=True)
    shutil.copy(model["folder"] / "fold_0" / "checkpoint_final.pth", folder / "fold_0")
    for name, edit in (("plans.json", edit_plans), ("dataset.json", edit_dataset_json)):
        content = json.loads((model["folder"] / name).read_text())
        if edit is not None:
            edit(content)
        (folder / name).write_text(json.dumps(content))
    return folder


def test_plans_without_signatures_say_so_once_and_check_hounsfield_units_only(model_env, tmp_path, capsys):
    """A model planned before the signatures existed: one notice, no signature check (the MR case predicted as MR,
    and recorded with what physics saw), the physical HU check still refuses a CT given MR, and -m auto is refused
    with the reason."""
    from nnunet_cin.inference.predict import predict_from_modelfolder_entry_point
    m = model_env
    old = _model_copy(m, tmp_path, edit_plans=lambda plans: plans["cin"].pop("signatures"))
    base = ["-m", str(old), "-f", "0", "-device", "cpu", "--disable_tta", "--disable_progress_bar", "-npp", "0",
            "-nps", "0"]
    predict_from_modelfolder_entry_point(["-i", str(m["inputs"]["MR"]), *base, "-o", str(tmp_path / "out"),
                                          "--modality", "MR"])
    err = capsys.readouterr().err
    assert err.count("The signature part of the modality check is skipped: the model's plans hold no modality "
                     "signatures") == 1, err
    assert json.loads((tmp_path / "out" / "modalities.json").read_text()) == {
        "mr_0100": {"modality": "MR", "decided_by": "-m", "checked": True, "hounsfield": "not_hu"}}
    _fails(capsys, ["-i", str(m["inputs"]["CT"]), *base, "-o", str(tmp_path / "out_ct"), "--modality", "MR"],
           "ct_0100: given MR (by --modality): the image is in Hounsfield units", "a CT, not MR",
           entry=predict_from_modelfolder_entry_point)
    assert not (tmp_path / "out_ct").exists()
    _fails(capsys, ["-i", str(m["inputs"]["CT"]), *base, "-o", str(tmp_path / "out_auto"), "--modality", "auto"],
           "--modality auto cannot recognise the cases: the model's plans hold no modality signatures",
           "Pass --modality NAME", entry=predict_from_modelfolder_entry_point)
    assert not (tmp_path / "out_auto").exists()


def test_rules_that_differ_from_the_plans_are_named(model_env, tmp_path, capsys):
    """The model folder's dataset.json rules decide new cases' modalities; when they are not the rules the plans (and
    the training data) were made with, prediction says so, and which rules it uses."""
    def widen(dataset_json):
        dataset_json["modality_patterns"]["CT"] = "^(ct|scan)_"
    m = model_env
    predictor = _predictor(m, _model_copy(m, tmp_path, edit_dataset_json=widen))
    lists = [[str(m["inputs"]["all"] / f"{c}_0000.nii.gz")] for c in ("ct_0100", "mr_0100")]
    assert predictor.modalities_of_cases(lists) == {"ct_0100": "CT", "mr_0100": "MR"}
    err = capsys.readouterr().err
    assert "differ from the ones its plans were made with" in err
    assert "\"modality_patterns\" {'CT': '^(ct|scan)_', 'MR': '^mr_'} (plans: {'CT': '^ct_', 'MR': '^mr_'})" in err
    assert "New cases get their modality from the dataset.json rules" in err
    # the model's own folder: rules as planned, no notice
    _predictor(m).modalities_of_cases(lists)
    assert "differ from the ones its plans" not in capsys.readouterr().err


def test_arrays_are_checked_and_recognised_too(model_env, rules_prediction):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunet_cin.inference.modality_check import ModalityCheckError
    predictor = _predictor(model_env)
    img, props = SimpleITKIO().read_images([str(model_env["inputs"]["MR"] / "mr_0100_0000.nii.gz")])
    with pytest.raises(ModalityCheckError,
                       match=r"image 0: given CT \(by predictor.modality_override\), looks like MR"):
        predictor.predict_single_npy_array(img, dict(props, modality="CT"))
    predictor.modality_override = "auto"
    np.testing.assert_array_equal(predictor.predict_single_npy_array(img, props),
                                  read(rules_prediction / "mr_0100.nii.gz")[1])
    predictor.modality_override, predictor.check_modalities = None, False
    predictor.predict_single_npy_array(img, dict(props, modality="CT"))  # the check off: predicted as given


def test_every_patch_and_mirror_is_conditioned_like_nnunets_predictor_inside_condition(model_env):
    """Reference: nnU-Net's own predictor, with the network wrapped by hand in condition(network, index)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunet_cin import condition
    from nnunet_cin.inference.predict import nnUNetPredictorCIN
    kw = dict(tile_step_size=0.5, use_mirroring=True, device=torch.device("cpu"), allow_tqdm=False)
    ours = nnUNetPredictorCIN(**kw)
    ours.initialize_from_trained_model_folder(str(model_env["folder"]), (0,))
    assert ours.modalities == ["CT", "MR"] and ours.conditioned
    ref = nnUNetPredictor(**kw)
    ref.initialize_from_trained_model_folder(str(model_env["folder"]), (0,))
    # rows of their own for each modality (3 iterations of training barely move them); the predictors load their
    # parameters before every prediction
    for predictor in (ours, ref):
        randomise_cin_rows(predictor.network, seed=0)
        predictor.list_of_parameters = [predictor.network.state_dict()]
    # 30 voxels along one axis: two patches, overlapping; mirroring on (along one axis: 2 copies per patch)
    ours.allowed_mirroring_axes = ref.allowed_mirroring_axes = (0,)
    data = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 30, 24, 24)).astype(np.float32))
    out = {}
    for name, index in (("CT", 0), ("MR", 1)):
        with ours.conditioned_on(name):
            out[name] = ours.predict_logits_from_preprocessed_data(data)
        with condition(ref.network, index):
            expected = ref.predict_logits_from_preprocessed_data(data)
        torch.testing.assert_close(out[name], expected)
    assert (out["CT"] - out["MR"]).abs().max() > 1e-3
    with pytest.raises(RuntimeError, match="modality of this case is unknown"):
        ours.predict_logits_from_preprocessed_data(data)


def test_folds_ensemble_and_nnunet_ensembling_postprocessing(model_env, rules_prediction, tmp_path):
    from nnunetv2.ensembling.ensemble import ensemble_folders
    from nnunetv2.postprocessing.remove_connected_components import (
        apply_postprocessing_to_folder, remove_all_but_largest_component_from_segmentation)
    m = model_env
    # a second fold with the same weights: the fold average must equal the single fold
    shutil.copytree(m["folder"] / "fold_0", m["folder"] / "fold_1", dirs_exist_ok=True)
    predict_cli(m, m["inputs"]["CT"], tmp_path / "ct_2folds", "-m", "CT", "-f", "0", "1", "--save_probabilities",
                "-npp", "0", "-nps", "0")
    np.testing.assert_allclose(probabilities(tmp_path / "ct_2folds" / "ct_0100.npz"),
                               probabilities(rules_prediction / "ct_0100.npz"), atol=1e-3)
    # nnU-Net's ensembling of two prediction folders (probabilities), then its postprocessing
    (tmp_path / "rules_ct").mkdir()
    for f in ("ct_0100.npz", "ct_0100.pkl", "dataset.json", "plans.json"):
        shutil.copy(rules_prediction / f, tmp_path / "rules_ct" / f)
    ensemble_folders([str(tmp_path / "rules_ct"), str(tmp_path / "ct_2folds")], str(tmp_path / "ens"),
                     num_processes=1)
    np.testing.assert_array_equal(read(tmp_path / "ens" / "ct_0100.nii.gz")[1],
                                  read(rules_prediction / "ct_0100.nii.gz")[1])
    apply_postprocessing_to_folder(str(tmp_path / "ct_2folds"), str(tmp_path / "pp"),
                                   [remove_all_but_largest_component_from_segmentation],
                                   [{"labels_or_regions": [1, 2, 3, 4, 5, 6, 7]}], num_processes=1)
    pp, arr = read(tmp_path / "pp" / "ct_0100.nii.gz")
    assert set(np.unique(arr)) <= set(np.unique(read(tmp_path / "ct_2folds" / "ct_0100.nii.gz")[1]))
    assert pp.GetSpacing() == read(tmp_path / "ct_2folds" / "ct_0100.nii.gz")[0].GetSpacing()


def test_python_api_single_array_and_plain_joint_network(model_env, rules_prediction, tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunet_cin.inference.predict import nnUNetPredictorCIN
    m = model_env
    predictor = nnUNetPredictorCIN(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(m["folder"]), (0,))
    img, props = SimpleITKIO().read_images([str(m["inputs"]["MR"] / "mr_0100_0000.nii.gz")])
    # nnU-Net's signature: the modality comes from the image's properties or from the predictor's state
    seg = predictor.predict_single_npy_array(img, dict(props, modality="MR"))
    np.testing.assert_array_equal(seg, read(rules_prediction / "mr_0100.nii.gz")[1])
    predictor.modality_override = "MR"
    np.testing.assert_array_equal(predictor.predict_single_npy_array(img, props), seg)
    with pytest.raises(ValueError, match=r'"CT" but predictor.modality_override is "MR"'):
        predictor.predict_single_npy_array(img, dict(props, modality="CT"))
    predictor.modality_override = "PET"
    with pytest.raises(ValueError, match=r"unknown modality \"PET\".*\['CT', 'MR'\]"):
        predictor.predict_single_npy_array(img, props)
    predictor.modality_override = None
    with pytest.raises(ValueError, match=r"has no modality.*predictor.modality_override"):
        predictor.predict_single_npy_array(img, props)
    # nnU-Net's multiprocessing path for arrays (predict_from_list_of_npy_arrays): same segmentation
    predictor.modality_override = "MR"
    [seg_mp] = predictor.predict_from_list_of_npy_arrays([img], None, [props], None, 1, False, 1)
    np.testing.assert_array_equal(seg_mp, seg)
    # the Python API checks its inputs and outputs as the command does, before writing anything
    from nnunet_cin.inference.checks import PredictionInputError
    shutil.copytree(m["inputs"]["MR"], tmp_path / "mr_inputs")
    with pytest.raises(PredictionInputError, match="is the input folder"):
        predictor.predict_from_files(str(tmp_path / "mr_inputs"), str(tmp_path / "mr_inputs"))
    assert sorted(os.listdir(tmp_path / "mr_inputs")) == ["mr_0100_0000.nii.gz"]

    # the joint-training baseline: a plain network (no CIN), checkpoint with modalities -> per-modality
    # preprocessing, no conditioning. Its model folder: plans for a plain network, this model's weights where shared.
    from nnunet_cin.plans import CINPlans
    from nnunet_cin.training.baselines import nnUNetTrainerJoint
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    joint = tmp_path / "nnUNetTrainerJoint__nnUNetPlansCIN__3d_fullres"
    (joint / "fold_0").mkdir(parents=True)
    shutil.copy(m["folder"] / "dataset.json", joint / "dataset.json")
    plans = nnUNetTrainerJoint.plans_for_training(
        CINPlans(json.loads((m["folder"] / "plans.json").read_text())).with_modalities(["CT", "MR"]), "3d_fullres", None)
    (joint / "plans.json").write_text(json.dumps(plans))
    pm = PlansManager(plans)
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, len(LABELS), False)
    ckpt = torch.load(m["folder"] / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    torch.save({**ckpt, "trainer_name": "nnUNetTrainerJoint", "network_weights": net.state_dict()},
               joint / "fold_0" / "checkpoint_final.pth")
    plain = nnUNetPredictorCIN(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    plain.initialize_from_trained_model_folder(str(joint), (0,))
    assert not plain.conditioned and plain.modalities == ["CT", "MR"]
    single = nnUNetPredictorCIN(device=torch.device("cpu"), allow_tqdm=False)
    single.initialize_from_trained_model_folder(str(joint), (0,))
    single.set_modalities(["CT"])  # as a single-modality baseline records it
    with pytest.raises(ValueError, match=r"(?s)\"mr_0100\" \(MR\).*\['CT'\]"):
        single.modalities_of_cases([["in/ct_0100_0000.nii.gz"], ["in/mr_0100_0000.nii.gz"]])
    from nnunet_cin.inference.predict import predict_from_modelfolder_entry_point
    predict_from_modelfolder_entry_point(["-i", str(m["inputs"]["all"]), "-o", str(tmp_path / "joint_out"), "-m",
                                          str(joint), "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "0",
                                          "-nps", "0", "--save_probabilities", "--disable_progress_bar"])
    # reference: the plain network on CINPreprocessor's per-modality normalization of each case
    from nnunet_cin.preprocessing.preprocessor import CINPreprocessor
    for case, modality in (("ct_0100", "CT"), ("mr_0100", "MR")):
        data, _, p = CINPreprocessor(verbose=False).run_case(
            [str(m["inputs"]["all"] / f"{case}_0000.nii.gz")], None, plain.plans_manager,
            plain.configuration_manager, plain.dataset_json, modality=modality)
        expected = plain.predict_logits_from_preprocessed_data(torch.from_numpy(data))
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
        seg_ref = convert_predicted_logits_to_segmentation_with_correct_shape(
            expected, plain.plans_manager, plain.configuration_manager, plain.label_manager, p)
        np.testing.assert_array_equal(read(tmp_path / "joint_out" / f"{case}.nii.gz")[1], seg_ref)


# --- interrupted runs: continued, never a half-written output --------------------------------------------------------

def _reads_back_like(path, reference):
    """`path` reads back completely (nibabel: the whole gzip stream and every voxel) and equals `reference`."""
    import nibabel
    np.testing.assert_array_equal(np.asanyarray(nibabel.load(str(path)).dataobj),
                                  np.asanyarray(nibabel.load(str(reference)).dataobj))


def test_continue_prediction_repredicts_half_written_outputs(model_env, rules_prediction, tmp_path):
    """The issue's reproduction: a prediction file left half-written (truncate -s 50%), then --continue_prediction.
    nnU-Net counts an existing file as done; here a case is done when its outputs read back completely."""
    out = tmp_path / "pred"
    shutil.copytree(rules_prediction, out)
    stamp = lambda f: (os.stat(f).st_ino, os.stat(f).st_mtime_ns)  # noqa: E731
    for broken, intact in (("ct_0100.nii.gz", "mr_0100"), ("mr_0100.npz", "ct_0100")):
        truncate_half(out / broken)
        before = {f: stamp(out / f) for f in os.listdir(out) if f.startswith(intact)}
        predict_cli(model_env, model_env["inputs"]["all"], out, "--continue_prediction", "--save_probabilities",
                    "-npp", "0", "-nps", "0")
        case = broken.split(".")[0]
        _reads_back_like(out / f"{case}.nii.gz", rules_prediction / f"{case}.nii.gz")
        np.testing.assert_allclose(probabilities(out / f"{case}.npz"), probabilities(rules_prediction / f"{case}.npz"),
                                   atol=1e-3)
        assert {f: stamp(out / f) for f in before} == before  # the complete case was not predicted again


_IDLE_EXPORT_POOL = """
import multiprocessing, time
from nnunet_cin.inference.predict import _sigterm_ends_run
if __name__ == "__main__":
    with _sigterm_ends_run():
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            pool.apply(abs, (-1,))  # the worker is up, now idle: it waits for work holding the pool's queue lock
            print("ready", flush=True)
            time.sleep(120)
"""


def _sigterm_once_ready(proc):
    """SIGTERM a script once it prints "ready", wait for it (killed if it does not end within 60 s)."""
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()


def test_sigterm_while_the_export_worker_is_idle_ends_the_run(tmp_path):
    """SIGTERM when nnU-Net's export pool has nothing to do (CI once hung here for 600 s): the run ends at once with
    128 + SIGTERM and no traceback."""
    script = tmp_path / "idle_pool.py"
    script.write_text(_IDLE_EXPORT_POOL)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _sigterm_once_ready(proc)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in proc.stderr.read()


def _running(pid):
    """Alive and not a zombie (a container's init may never reap an orphan)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


_STALLED_HANDSHAKE = """
import multiprocessing, os, socket, sys, time
from multiprocessing import resource_sharer
from nnunet_cin.inference.predict import _sigterm_ends_run


def connect_and_stall(address, flag):
    with socket.socket(socket.AF_UNIX) as s:  # the parent's resource sharer accepts and sends its challenge,
        s.connect(address)                    # which this worker never reads
        open(flag, "w").close()
        time.sleep(120)


if __name__ == "__main__":
    with _sigterm_ends_run():
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            fd = resource_sharer.DupFd(os.open(os.devnull, os.O_RDONLY))  # as pickling a shared tensor does
            pool.apply_async(connect_and_stall, (fd._id[0], sys.argv[1]))
            while not os.path.exists(sys.argv[1]):
                time.sleep(0.01)
            print("ready", flush=True)
            time.sleep(120)
"""


def test_sigterm_while_an_export_worker_is_mid_handshake_prints_no_traceback(tmp_path):
    """The flake of issue 23, made certain: SIGTERM while an export worker is in the middle of fetching a shared
    tensor's file descriptor from the parent (multiprocessing's resource sharer). Pool.terminate ends the worker, and
    the parent's sharer thread printed a ConnectionResetError traceback."""
    script, flag = tmp_path / "stalled_handshake.py", tmp_path / "connected"
    script.write_text(_STALLED_HANDSHAKE)
    proc = subprocess.Popen([sys.executable, str(script), str(flag)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _sigterm_once_ready(proc)
    err = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "Error" not in err, err


_SIGTERM_DURING_A_FORK = """
import multiprocessing, os, signal, time

armed = False


def sigterm_during_fork():
    if armed:
        os.kill(os.getpid(), signal.SIGTERM)


os.register_at_fork(before=sigterm_during_fork)  # before-hooks run in reverse order: this one after the run's own
from nnunet_cin.inference.predict import _sigterm_ends_run

if __name__ == "__main__":
    with _sigterm_ends_run():
        armed = True
        multiprocessing.get_context("fork").Process(target=time.sleep, args=(3600,), daemon=True).start()
        armed = False
        time.sleep(3600)  # the SIGTERM must end this wait, not its end
"""


def test_sigterm_during_a_fork_ends_the_run(tmp_path):
    """SIGTERM while the run forks (nnU-Net's Manager, its file-listing pool): it arrives inside os.fork's hooks,
    where Python printed the SystemExit as "Exception ignored" and dropped it, and the run went on."""
    script = tmp_path / "sigterm_during_fork.py"
    script.write_text(_SIGTERM_DURING_A_FORK)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)  # not hours:
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr  # the child (pipes held) ended with the run too
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


_PREDICT_CASES = [f"{m}_0{i}" for i in range(101, 104) for m in ("ct", "mr")]


def _interruptible_run(model, tmp_path):
    """nnUNetv2_predict_cin with its preprocessing and export workers on 6 cases (the run is still busy when the
    first is written): (command, inputs, output folder, log file)."""
    inputs, out = tmp_path / "inputs", tmp_path / "pred"
    inputs.mkdir()
    for case in _PREDICT_CASES:
        shutil.copy(model["inputs"]["all"] / f"{case[:2]}_0100_0000.nii.gz", inputs / f"{case}_0000.nii.gz")
    cmd = ["nnUNetv2_predict_cin", "-i", str(inputs), "-o", str(out), "-d", str(DATASET_ID), "-c", "3d_fullres", "-f",
           "0", "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1", "--save_probabilities",
           "--disable_progress_bar"]
    return cmd, inputs, out, tmp_path / "log.txt"


def _sigterms(proc, rng):
    """1 to 4 SIGTERMs, 0-30 ms apart: a user or a scheduler that repeats itself."""
    for _ in range(rng.integers(1, 5)):
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        time.sleep(rng.uniform(0, 0.03))


def _ended_cleanly(proc, env, log_file, workers, out, rules_prediction):
    """The run ended with 128 + SIGTERM (or finished), printed no traceback, the workers seen before the signal are
    gone, and so is every process that carries the run's marker (`marked_env`: also those forked after the snapshot,
    whoever their parent now is), and every output there is a complete case that reads back right. Returns the
    finished cases."""
    proc.wait(timeout=600)
    log = log_file.read_text()
    if proc.returncode == -signal.SIGTERM:  # before Python installed the handler: nothing started, nothing written
        assert not out.exists() and not workers, log[-3000:]
    else:
        assert proc.returncode in (0, 128 + signal.SIGTERM), log[-3000:]
    assert "Traceback" not in log and "Exception ignored" not in log, log[-3000:]
    deadline = time.time() + 60
    while any(_running(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not [w for w in workers if _running(w)], "worker processes outlived the terminated run"
    if RUN_MARKER in env:
        left = marked_running(env, 10)
        assert not left, f"processes of the run still running 10 s after it ended: {left}"
    if not out.exists():
        return []
    finished = sorted(f.name[:-len(".nii.gz")] for f in out.glob("*.nii.gz"))
    run_files = ["dataset.json", "plans.json", "predict_from_raw_data_args.json", "modalities.json"]
    assert set(os.listdir(out)) - set(run_files) == {c + e for c in finished for e in (".nii.gz", ".npz", ".pkl")}
    for case in finished:
        _reads_back_like(out / f"{case}.nii.gz", rules_prediction / f"{case[:2]}_0100.nii.gz")
    return finished


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads child processes from /proc")
def test_sigterm_ends_the_workers_and_leaves_only_complete_outputs(model, rules_prediction, tmp_path):
    """The issue's reproduction: nnUNetv2_predict_cin with its preprocessing and export workers, SIGTERM (a burst, at a
    random moment) once the first case is written. The run ends its workers, every output there reads back complete
    and right, and --continue_prediction finishes the rest."""
    rng = np.random.default_rng()
    cmd, inputs, out, log_file = _interruptible_run(model, tmp_path)
    env = marked_env(model["env"])
    with open(log_file, "w") as log:  # a file: a full pipe would stop the run
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    while proc.poll() is None and not list(out.glob("*.nii.gz")):
        time.sleep(0.05)
    time.sleep(rng.uniform(0, 0.3))
    workers = descendants(proc.pid)
    assert proc.poll() is None, "the run ended before it could be interrupted: give it more cases"
    assert len(workers) >= 2, workers  # nnU-Net's preprocessing worker and export pool worker (and its helpers)
    _sigterms(proc, rng)
    finished = _ended_cleanly(proc, env, log_file, workers, out, rules_prediction)
    assert proc.returncode == 128 + signal.SIGTERM
    assert finished and len(finished) < 6
    # the decisions are made for every case before the first is predicted, so they are all on record
    assert {c: r["modality"] for c, r in json.loads((out / "modalities.json").read_text()).items()} == {
        c: c[:2].upper() for c in _PREDICT_CASES}
    _run(cmd + ["--continue_prediction"], model["env"])
    for case in _PREDICT_CASES:
        _reads_back_like(out / f"{case}.nii.gz", rules_prediction / f"{case[:2]}_0100.nii.gz")
        np.testing.assert_allclose(probabilities(out / f"{case}.npz"),
                                   probabilities(rules_prediction / f"{case[:2]}_0100.npz"), atol=1e-3)


# NNUNET_CIN_TEST_SIGTERM_RUNS=20 runs the next test 20 times (how issue 23 looped it)
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads child processes from /proc")
@pytest.mark.parametrize("run", range(int(os.environ.get("NNUNET_CIN_TEST_SIGTERM_RUNS", "1"))))
def test_sigterm_at_a_random_moment_ends_the_run_cleanly(model, rules_prediction, tmp_path, run):
    """SIGTERMs at a random moment of a random phase: while Python starts, while nnU-Net's workers start, while
    cases are predicted and exported. Whatever the moment, the run ends as above (the seed is in the failure)."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    rng = np.random.default_rng(seed)
    cmd, _, out, log_file = _interruptible_run(model, tmp_path)
    phase = ["start", "workers", "export"][rng.integers(3)]
    env = marked_env(model["env"])
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if phase == "workers":
        while proc.poll() is None and len(descendants(proc.pid)) < 2:
            time.sleep(0.01)
    if phase == "export":
        while proc.poll() is None and not list(out.glob("*.nii.gz")):
            time.sleep(0.05)
    time.sleep(rng.uniform(0, 3 if phase == "start" else 1))
    workers = descendants(proc.pid)
    _sigterms(proc, rng)
    try:
        _ended_cleanly(proc, env, log_file, workers, out, rules_prediction)
    except AssertionError as e:
        raise AssertionError(f"SIGTERM in phase {phase!r}, seed {seed}: {e}") from e


# --- errors: clear message, nothing written --------------------------------------------------------------------------

def _fails(capsys, argv, *expected, entry=None):
    from nnunet_cin.inference.predict import predict_entry_point
    with pytest.raises(SystemExit) as e:
        (entry or predict_entry_point)(argv)
    assert e.value.code not in (0, None)
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    return err


def test_errors_name_the_problem_and_leave_no_output(model_env, tmp_path, capsys):
    m = model_env
    base = ["-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-device", "cpu"]
    out = tmp_path / "out"
    # a modality the model was not trained on
    _fails(capsys, ["-i", str(m["inputs"]["all"]), "-o", str(out), "-m", "PET", *base], "PET", "CT", "MR")
    assert not out.exists()
    # cases no rule matches: all listed, with the valid names, before any prediction
    odd = tmp_path / "odd"
    shutil.copytree(m["inputs"]["all"], odd)
    shutil.copy(odd / "ct_0100_0000.nii.gz", odd / "us_0007_0000.nii.gz")
    shutil.copy(odd / "ct_0100_0000.nii.gz", odd / "pet_0001_0000.nii.gz")
    _fails(capsys, ["-i", str(odd), "-o", str(out), *base], "us_0007", "pet_0001", "['CT', 'MR']", "-m")
    assert not out.exists()
    # the same output folder existing already: nothing added to it
    out.mkdir()
    _fails(capsys, ["-i", str(odd), "-o", str(out), *base], "us_0007")
    assert list(out.iterdir()) == []
    # missing model folder (wrong trainer), missing fold, missing dataset
    _fails(capsys, ["-i", str(odd), "-o", str(out), *base[:-4], "-tr", "nnUNetTrainerNope", "-device", "cpu"],
           "no trained model", "nnUNetTrainerNope", f"{TRAINER}__nnUNetPlansCIN__3d_fullres")
    _fails(capsys, ["-i", str(m["inputs"]["all"]), "-o", str(out), "-d", str(DATASET_ID), "-c", "3d_fullres", "-tr",
                    TRAINER, "-device", "cpu", "-f", "3"], "fold(s) [3]", "checkpoint_final.pth")
    _fails(capsys, ["-i", str(odd), "-o", str(out), "-d", "555", "-c", "3d_fullres"], "555")
    from nnunet_cin.inference.predict import predict_from_modelfolder_entry_point
    _fails(capsys, ["-i", str(odd), "-o", str(out), "-m", str(tmp_path / "nope"), "-f", "0", "-device", "cpu"],
           "does not exist", entry=predict_from_modelfolder_entry_point)
    assert list(out.iterdir()) == []


# --- inputs and outputs checked before the model is loaded (the reproductions) ---------------------------------

@pytest.fixture
def model_never_loaded(model_env, monkeypatch):
    from nnunet_cin.inference.predict import nnUNetPredictorCIN

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs and outputs were checked")
    monkeypatch.setattr(nnUNetPredictorCIN, "initialize_from_trained_model_folder", refuse)
    return model_env


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture
def inputs_copy(model, tmp_path):
    shutil.copytree(model["inputs"]["all"], tmp_path / "imagesTs")
    return tmp_path / "imagesTs"


BASE = ["-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-device", "cpu"]


def test_output_folder_that_is_the_input_folder_or_inside_it(model_never_loaded, inputs_copy, tmp_path, capsys):
    before = _tree(tmp_path)
    _fails(capsys, ["-i", str(inputs_copy), "-o", str(inputs_copy), *BASE], f"-o {inputs_copy} is the input folder",
           "new cases", "outside")
    _fails(capsys, ["-i", str(inputs_copy), "-o", str(inputs_copy / "pred"), *BASE], "is inside the input folder")
    assert _tree(tmp_path) == before


def test_output_that_is_an_existing_file(model_never_loaded, inputs_copy, tmp_path, capsys):
    (tmp_path / "pred.nii.gz").write_text("mine")
    before = _tree(tmp_path)
    _fails(capsys, ["-i", str(inputs_copy), "-o", str(tmp_path / "pred.nii.gz"), *BASE],
           f"-o {tmp_path / 'pred.nii.gz'} is an existing file", "folder")
    assert _tree(tmp_path) == before


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="/proc: a place nobody can create folders in, root included")
def test_output_in_an_unwritable_place(model_never_loaded, inputs_copy, tmp_path, capsys):
    before = _tree(tmp_path)
    _fails(capsys, ["-i", str(inputs_copy), "-o", "/proc/nnunet_cin_predictions", *BASE], "cannot write in /proc",
           "choose an output folder you can write to")
    assert _tree(tmp_path) == before and not os.path.exists("/proc/nnunet_cin_predictions")


def test_a_4d_input_image(model_never_loaded, inputs_copy, tmp_path, capsys):
    """Three time points of a CT volume in one file: nnU-Net's reader would take them as three channels."""
    volume = sitk.ReadImage(str(inputs_copy / "ct_0100_0000.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([volume] * 3), str(inputs_copy / "ct_0100_0000.nii.gz"))
    before = _tree(tmp_path)
    _fails(capsys, ["-i", str(inputs_copy), "-o", str(tmp_path / "pred"), *BASE],
           f"{inputs_copy / 'ct_0100_0000.nii.gz'} is a 4D image (size 24 x 24 x 24 x 3)", "takes 1 channel(s)",
           "one 3D (or 2D) image per channel")
    assert _tree(tmp_path) == before


def test_a_wrong_number_of_channels(model_never_loaded, inputs_copy, tmp_path, capsys):
    shutil.copy(inputs_copy / "mr_0100_0000.nii.gz", inputs_copy / "mr_0100_0001.nii.gz")
    before = _tree(tmp_path)
    _fails(capsys, ["-i", str(inputs_copy), "-o", str(tmp_path / "pred"), *BASE],
           "case mr_0100 has the file(s) mr_0100_0000.nii.gz, mr_0100_0001.nii.gz", "takes 1 channel(s)",
           "channel_names", "give each case exactly CASE_0000.nii.gz")
    assert _tree(tmp_path) == before


def test_truncated_input_images(model_never_loaded, inputs_copy, tmp_path, capsys):
    """A cut-off .nii.gz reads without a word in SimpleITK (zeros where its data is missing): refused, every bad file
    named, before the model is loaded, nothing written."""
    from damaged_files import overstate_slices, understate_slices
    truncate_half(inputs_copy / "ct_0100_0000.nii.gz")
    overstate_slices(inputs_copy / "mr_0100_0000.nii.gz")
    shutil.copy(inputs_copy / "ct_0100_0000.nii.gz", inputs_copy / "ct_0200_0000.nii.gz")
    shutil.copy(model_never_loaded["inputs"]["all"] / "mr_0100_0000.nii.gz", inputs_copy / "mr_0200_0000.nii.gz")
    understate_slices(inputs_copy / "mr_0200_0000.nii.gz")  # more data than the header promises (issue 22)
    before = _tree(tmp_path)
    _fails(capsys, ["-i", str(inputs_copy), "-o", str(tmp_path / "pred"), *BASE], "4 input problems",
           f"{inputs_copy / 'ct_0100_0000.nii.gz'} is truncated", f"{inputs_copy / 'mr_0100_0000.nii.gz'} holds",
           f"{inputs_copy / 'mr_0200_0000.nii.gz'} holds", "header promises only", "replace it with a complete copy")
    assert _tree(tmp_path) == before


def test_export_to_zip_and_install_keep_what_inference_needs(model, rules_prediction, tmp_path):
    """nnUNetv2_export_model_to_zip -> nnUNetv2_install_pretrained_model_from_zip into an empty nnUNet_results ->
    nnUNetv2_predict_cin gives the same segmentation (the modalities, rules and conditional architecture travel in
    the zip's plans.json, dataset.json and checkpoint)."""
    zip_file = tmp_path / "model.zip"
    _run(["nnUNetv2_export_model_to_zip", "-d", str(DATASET_ID), "-o", str(zip_file), "-c", "3d_fullres", "-tr",
          TRAINER, "-p", "nnUNetPlansCIN", "-f", "0", "--not_strict"], model["env"])
    installed = dict(model["env"], nnUNet_results=str(tmp_path / "installed_results"))
    (tmp_path / "installed_results").mkdir()
    _run(["nnUNetv2_install_pretrained_model_from_zip", str(zip_file)], installed)
    out = tmp_path / "pred_installed"
    _run(["nnUNetv2_predict_cin", "-i", str(model["inputs"]["all"]), "-o", str(out), "-d", str(DATASET_ID), "-c",
          "3d_fullres", "-f", "0", "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1",
          "--disable_progress_bar"], installed)
    for case in ("ct_0100", "mr_0100"):
        np.testing.assert_array_equal(read(out / f"{case}.nii.gz")[1], read(rules_prediction / f"{case}.nii.gz")[1])


# --- the modality check on real scans and on CTs not in HU (issue 22) ------------------------------------------------

def _write(case, folder, name, like):
    """A real scan, every second voxel, with the spacing of the model's test input `like` (intensities as they are):
    predicting a whole head at the model's spacing would take many minutes on a CPU."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(case.image[0][::2, ::2, ::2]))
    image.SetSpacing(sitk.ReadImage(str(like)).GetSpacing())
    folder.mkdir(exist_ok=True)
    sitk.WriteImage(image, str(folder / f"{name}_0000.nii.gz"))


def test_real_scans_and_a_ct_off_hounsfield_units_on_the_trained_model(model_env, tmp_path, capsys):
    """The issue's "Done when": on the model trained on generated hearts, a real CT given -m MR, a real MR given -m CT
    and a CT stored with a +1024 offset given -m CT or -m auto stop the run naming the case (and the fix), nothing
    written; the right -m predicts them."""
    from scan_variants import real_cases
    real = {c.name: c for c in real_cases()}
    ct = tmp_path / "real_ct"
    like = model_env["inputs"]["CT"] / "ct_0100_0000.nii.gz"
    _write(real["head_ct_invesalius"], ct, "head", like)
    mr = tmp_path / "real_mr"
    _write(real["head_mr_t1_colin27"], mr, "colin", like)
    offset = tmp_path / "offset"
    offset.mkdir()
    image = sitk.ReadImage(str(model_env["inputs"]["CT"] / "ct_0100_0000.nii.gz"))
    sitk.WriteImage(sitk.Cast(image + 1024, sitk.sitkUInt16), str(offset / "scan_0000.nii.gz"))
    out = tmp_path / "out"
    _fails(capsys, ["-i", str(ct), "-o", str(out), "-m", "MR", *BASE], "head: given MR (by -m)", "looks like CT",
           "--skip-modality-check")
    _fails(capsys, ["-i", str(mr), "-o", str(out), "-m", "CT", *BASE], "colin: given CT (by -m)",
           "not in HU", "rescale slope and intercept")
    for flag in ("CT", "auto"):
        _fails(capsys, ["-i", str(offset), "-o", str(out), "-m", flag, *BASE], "scan", "stored with a +1024 offset",
               "rescale slope and intercept")
    assert not out.exists()
    # the right modality: predicted (a scan unlike the training images: predicted as given, with a warning)
    predict_cli(model_env, ct, tmp_path / "ct_out", "-m", "CT", "-npp", "0", "-nps", "0")
    predict_cli(model_env, mr, tmp_path / "mr_out", "-m", "MR", "-npp", "0", "-nps", "0")
    assert (tmp_path / "ct_out" / "head.nii.gz").is_file() and (tmp_path / "mr_out" / "colin.nii.gz").is_file()
    assert "match no modality clearly and are predicted as given" in capsys.readouterr().err
    assert json.loads((tmp_path / "ct_out" / "modalities.json").read_text())["head"]["hounsfield"] == "hu"
    # -m auto with --skip-modality-check says what it does with the flag
    _fails(capsys, ["-i", str(offset), "-o", str(out), "-m", "auto", "--skip-modality-check", *BASE],
           "--skip-modality-check cannot turn it off")


def test_continue_prediction_never_rewrites_what_a_kept_output_was_predicted_with(model_env, tmp_path, capsys):
    """The issue's reproduction: a CT folder predicted -m MR --skip-modality-check, then --continue_prediction without
    -m: the MR-conditioned output is kept, and modalities.json keeps saying MR; the rerun's CT is reported."""
    m = model_env
    out = tmp_path / "out"
    predict_cli(m, m["inputs"]["CT"], out, "-m", "MR", "--skip-modality-check", "-npp", "0", "-nps", "0")
    capsys.readouterr()
    before = (out / "ct_0100.nii.gz").stat().st_mtime_ns
    predict_cli(m, m["inputs"]["CT"], out, "--continue_prediction", "-npp", "0", "-nps", "0")
    err = capsys.readouterr().err
    assert (out / "ct_0100.nii.gz").stat().st_mtime_ns == before
    assert json.loads((out / "modalities.json").read_text())["ct_0100"] == {
        "modality": "MR", "decided_by": "-m", "checked": False}
    assert "ct_0100: predicted as MR, this run: CT" in err
    assert oct((out / "modalities.json").stat().st_mode & 0o777) == oct((out / "ct_0100.nii.gz").stat().st_mode
                                                                        & 0o777)


def test_input_names_and_dimensions_that_nnunet_cannot_use(model_never_loaded, inputs_copy, tmp_path, capsys):
    """`patient7.nii.gz` (no _0000) and `X_0000 (copy).nii.gz` crashed the input check with an IndexError."""
    shutil.copy(inputs_copy / "ct_0100_0000.nii.gz", inputs_copy / "patient7.nii.gz")
    shutil.copy(inputs_copy / "ct_0100_0000.nii.gz", inputs_copy / "X_0000 (copy).nii.gz")
    before = _tree(tmp_path)
    err = _fails(capsys, ["-i", str(inputs_copy), "-o", str(tmp_path / "pred"), *BASE],
                 "2 input file(s)", "do not follow nnU-Net's naming CASE_XXXX.nii.gz",
                 f"{inputs_copy / 'patient7.nii.gz'}: rename it to patient7_0000.nii.gz",
                 f"{inputs_copy / 'X_0000 (copy).nii.gz'}: rename it to X_0000_copy_0000.nii.gz")
    assert "IndexError" not in err and _tree(tmp_path) == before


def test_a_2d_image_into_a_3d_configuration(model_env, inputs_copy, tmp_path, capsys):
    volume = sitk.ReadImage(str(inputs_copy / "ct_0100_0000.nii.gz"))
    sitk.WriteImage(volume[:, :, 12], str(inputs_copy / "ct_0100_0000.nii.gz"))
    before = _tree(tmp_path)
    _fails(capsys, ["-i", str(inputs_copy), "-o", str(tmp_path / "pred"), *BASE], "1 input image(s) are 2D",
           f"{inputs_copy / 'ct_0100_0000.nii.gz'}", "is 3D", "-c 2d")
    assert _tree(tmp_path) == before


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads child processes from /proc")
def test_sigkill_of_a_prediction_leaves_no_process_behind(model, tmp_path):
    """The issue's reproduction: nnUNetv2_predict_cin killed with SIGKILL (timeout -s KILL, a scheduler, the OOM
    killer) left its preprocessing and export workers blocked for hours with parent 1. They end with their parent."""
    from nnunet_helpers import left_running
    inputs, out = tmp_path / "inputs", tmp_path / "pred"
    inputs.mkdir()
    for i in range(101, 105):
        for case in ("ct_0100", "mr_0100"):
            shutil.copy(model["inputs"]["all"] / f"{case}_0000.nii.gz", inputs / f"{case[:3]}0{i}_0000.nii.gz")
    cmd = ["nnUNetv2_predict_cin", "-i", str(inputs), "-o", str(out), "-d", str(DATASET_ID), "-c", "3d_fullres", "-f",
           "0", "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1", "--disable_progress_bar"]
    env = marked_env(model["env"])
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while proc.poll() is None and not list(out.glob("*.nii.gz")):  # workers up and busy
            time.sleep(0.05)
        workers = descendants(proc.pid)
        assert proc.poll() is None, "the run ended before it could be killed: give it more cases"
        assert len(workers) >= 2, workers
        proc.kill()
        proc.wait(timeout=60)
        left = left_running(workers, 10) + marked_running(env, 10)
    finally:
        proc.kill()
    assert not left, f"processes of the killed run still running after 10 s: {left}"
