"""No rule drift in training: the modality rules in dataset.json changed after nnUNetv2_plan_and_preprocess_cin
stored each case's modality in its properties; every trainer of ours refuses to start, naming the cases."""
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nnunet_helpers import TINY_MODEL_DATASET, TINY_MODEL_ID, copy_of_tiny_model

import nnunet_cin.trainers
from nnunet_cin.modalities import ModalityError, ModalityRules
from nnunet_cin.preprocessing.drift import MAX_LISTED as SHOWN
from nnunet_cin.preprocessing.drift import refuse_rule_drift
from nnunet_cin.preprocessing.preprocessor import stored_modalities

DATASET_ID, DATASET = TINY_MODEL_ID, TINY_MODEL_DATASET
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def preprocessed(tiny_model, tmp_path_factory):
    """3 CT + 3 MR tiny cases as nnUNetv2_plan_and_preprocess_cin preprocessed them (a copy of the session's tiny
    model, before training: no results, no split); then the patterns of the preprocessed dataset.json are swapped
    (CT <-> MR), as a user editing the file after preprocessing would."""
    copy = copy_of_tiny_model(tiny_model, tmp_path_factory.mktemp("drift"))
    env = {**copy["env"], "nnUNet_extTrainer": nnunet_cin.trainers.__path__[0]}
    shutil.rmtree(env["nnUNet_results"])
    Path(env["nnUNet_results"]).mkdir()
    folder = Path(env["nnUNet_preprocessed"]) / DATASET
    (folder / "splits_final.json").unlink()
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["modality_patterns"] == {"CT": "^ct_", "MR": "^mr_"}
    dataset_json["modality_patterns"] = {"CT": "^mr_", "MR": "^ct_"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return env, folder


def test_nnunetv2_train_refuses_swapped_patterns(preprocessed):
    env, folder = preprocessed
    res = subprocess.run([str(BIN / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", "nnUNetTrainerCIN",
                          "-p", "nnUNetPlansCIN", "-device", "cpu"], env=env, capture_output=True, text=True,
                         timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "6 of the 6 preprocessed cases" in out
    for i in range(3):
        assert f"ct_{i:04d}: preprocessed as CT, the rules now say MR" in out
        assert f"mr_{i:04d}: preprocessed as MR, the rules now say CT" in out
    assert f"nnUNetv2_plan_and_preprocess_cin -d {DATASET_ID} -c 3d_fullres" in out
    assert "Epoch 0" not in out
    assert not any(Path(env["nnUNet_results"]).iterdir())  # nothing written: no model folder, no log
    assert not (folder / "splits_final.json").exists()


@pytest.mark.parametrize("trainer", ["nnUNetTrainerJoint", "nnUNetTrainerSingleModality_MR_5epochs",
                                     "nnUNetTrainerCViT", "nnUNetTrainerCINAlternate"])
def test_every_trainer_of_ours_refuses(preprocessed, trainer, monkeypatch):
    from nnunetv2.run.run_training import get_trainer_from_args

    env, _ = preprocessed
    for name in ("nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(name, env[name])
    with pytest.raises(ModalityError, match="ct_0000: preprocessed as CT, the rules now say MR"):
        get_trainer_from_args(str(DATASET_ID), "3d_fullres", 0, trainer, "nnUNetPlansCIN", device=torch.device("cpu"))


def test_one_case_overridden(preprocessed, monkeypatch):
    """Only the cases whose modality changed are named; rules that agree again pass."""
    env, folder = preprocessed
    monkeypatch.setenv("nnUNet_preprocessed", env["nnUNet_preprocessed"])
    plans = json.loads((folder / "nnUNetPlansCIN.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    dataset_json["modality_patterns"] = {"CT": "^ct_", "MR": "^mr_"}
    stored = refuse_rule_drift(plans, "3d_fullres", ModalityRules.from_dataset_json(dataset_json))  # as preprocessed
    assert stored == {**{f"ct_{i:04d}": "CT" for i in range(3)}, **{f"mr_{i:04d}": "MR" for i in range(3)}}
    dataset_json["case_modalities"] = {"mr_0001": "CT"}
    with pytest.raises(ModalityError, match=r"1 of the 6 preprocessed cases") as e:
        refuse_rule_drift(plans, "3d_fullres", ModalityRules.from_dataset_json(dataset_json))
    assert "mr_0001: preprocessed as MR, the rules now say CT" in str(e.value)
    assert "mr_0000" not in str(e.value) and "ct_0000" not in str(e.value)


def test_what_is_read_and_how_much_is_shown(preprocessed, tmp_path, monkeypatch):
    """Cases without a stored modality (plain nnU-Net preprocessing) are not checked; long lists are cut."""
    plans = {**json.loads((preprocessed[1] / "nnUNetPlansCIN.json").read_text()), "dataset_name": "Dataset123_Many"}
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    folder = tmp_path / "Dataset123_Many" / plans["configurations"]["3d_fullres"]["data_identifier"]
    folder.mkdir(parents=True)
    for i in range(SHOWN + 5):
        (folder / f"ct_{i:04d}.pkl").write_bytes(pickle.dumps({"modality": "CT", "modality_index": 0}))
    (folder / "plain_0000.pkl").write_bytes(pickle.dumps({"spacing": [1, 1, 1]}))
    stored = stored_modalities(str(folder))
    assert {c for c, (m, _) in stored.items() if m is not None} == {f"ct_{i:04d}" for i in range(SHOWN + 5)}

    rules = ModalityRules(["CT", "MR"], {"CT": "^nothing", "MR": "^ct_"})
    with pytest.raises(ModalityError) as e:
        refuse_rule_drift(plans, "3d_fullres", rules)
    message = str(e.value)
    assert f"{SHOWN + 5} of the {SHOWN + 5} preprocessed cases" in message and "... and 5 more" in message
    assert message.count("preprocessed as CT, the rules now say MR") == SHOWN
    assert "plain_0000" not in message and "-d 123 -c 3d_fullres" in message
    refuse_rule_drift({**plans, "dataset_name": "Dataset124_Missing"}, "3d_fullres", rules)  # no folder: no check
