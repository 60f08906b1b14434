"""nnunet-cin compare end to end, with nnU-Net's real commands on tiny data: every kind of arm runs on one split, a
rerun redoes nothing, replicates land in their own folders with their seed, and an interrupted training continues
from the epoch it reached. (What is trained, evaluated and reported, on fabricated data: test_compare.py.)"""
import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from nnunet_cin.experiments.compare.arms import METHODS

COMPARE = [sys.executable, "-m", "nnunet_cin.experiments.compare"]


def _run_compare(*args, ok=True, env=None):
    result = subprocess.run([*COMPARE, *args], capture_output=True, text=True, env=env or dict(os.environ))
    if ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# ---------------------------------------------------------------------------------------------------------------------
# end to end: real nnUNetv2_plan_and_preprocess(_cin) / nnUNetv2_train subprocesses on tiny data

# The user's own short schedules, from their folder on nnUNet_extTrainer, for every trainer the tests use:
# "{trainer}Tiny" one epoch of one iteration, "{trainer}Three" three. No test-time mirroring. checkpoint_latest.pth:
# our trainers' own schedule (nnunet_cin.training.resume: a tenth of the schedule, here every epoch), nnU-Net's
# save_every untouched. TEST_STOP_AFTER_EPOCH=N kills the training (SIGKILL, as a crash or a scheduler would) right
# after epoch N's checkpoint is written.
TEST_TRAINERS = '''
import os
import signal

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunet_cin.training.baselines import nnUNetTrainerSingleModality_CT, nnUNetTrainerSingleModality_MR
from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN
from nnunet_cin.trainers.nnUNetTrainerJoint import nnUNetTrainerJoint


class Short:
    epochs = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = 1
        self.num_val_iterations_per_epoch = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None

    def on_epoch_end(self):
        super().on_epoch_end()  # our trainers' schedule writes checkpoint_latest.pth (every epoch of 3), then counts it
        stop = os.environ.get("TEST_STOP_AFTER_EPOCH")
        if stop is not None and self.current_epoch == int(stop) + 1:
            os.kill(os.getpid(), signal.SIGKILL)


class Three(Short):
    epochs = 3


class nnUNetTrainerTiny(Short, nnUNetTrainer): pass
class nnUNetTrainerCINTiny(Short, nnUNetTrainerCIN): pass
class nnUNetTrainerJointTiny(Short, nnUNetTrainerJoint): pass
class nnUNetTrainerSingleModality_CTTiny(Short, nnUNetTrainerSingleModality_CT): pass
class nnUNetTrainerSingleModality_MRTiny(Short, nnUNetTrainerSingleModality_MR): pass
class nnUNetTrainerCINThree(Three, nnUNetTrainerCIN): pass
class nnUNetTrainerJointThree(Three, nnUNetTrainerJoint): pass
'''


@pytest.fixture
def test_trainers(nnunet_env, tmp_path, monkeypatch):
    folder = tmp_path / "my_trainers"
    folder.mkdir()
    (folder / "compare_test_trainers.py").write_text(TEST_TRAINERS)
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([str(folder), os.environ["nnUNet_extTrainer"]]))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    monkeypatch.delenv("nnUNet_cin_seed", raising=False)
    monkeypatch.delenv("TEST_STOP_AFTER_EPOCH", raising=False)
    return nnunet_env


def _epochs_in(log_text):
    return [int(line.split("Epoch ")[1]) for line in log_text.splitlines() if ": Epoch " in line and
            line.split("Epoch ")[1].strip().isdigit()]


@pytest.mark.slow
def test_compare_arms_end_to_end(test_trainers, tmp_path):
    """Fine-tuning, plain nnU-Net (its own planning and trainer), CIN on plain plans and CIN on ours, in one command:
    every model trained on the same split, every table row filled; a rerun trains and evaluates nothing."""
    results, preprocessed = test_trainers.results, test_trainers.preprocessed
    out = tmp_path / "comparison"
    args = ["-d", "996", "--synthetic", "3", "--shape", "16", "16", "16", "-f", "0", "--trainer-template",
            "{trainer}Tiny", "-device", "cpu", "-o", str(out), "--jobs", "2",
            "--arms", "finetune", "nnunet", "cin", "cin_zscore", "--reference", "cin"]
    first = _run_compare(*args).stdout
    dataset = "Dataset996_SyntheticHeart"
    ds = results / dataset
    models = {
        "single_CT": ds / "nnUNetTrainerSingleModality_CTTiny__nnUNetPlansCIN__3d_fullres",
        "single_MR": ds / "nnUNetTrainerSingleModality_MRTiny__nnUNetPlansCIN__3d_fullres",
        "finetune_CT_from_MR": results / "finetuned_from_MR" / dataset /
        "nnUNetTrainerSingleModality_CTTiny__nnUNetPlansCIN__3d_fullres",
        "finetune_MR_from_CT": results / "finetuned_from_CT" / dataset /
        "nnUNetTrainerSingleModality_MRTiny__nnUNetPlansCIN__3d_fullres",
        "nnunet": ds / "nnUNetTrainerTiny__nnUNetPlans__3d_fullres",
        "cin": ds / "nnUNetTrainerCINTiny__nnUNetPlansCIN__3d_fullres",
        "cin_zscore": ds / "nnUNetTrainerCINTiny__nnUNetPlans__3d_fullres",
    }
    for arm, folder in models.items():
        assert (folder / "fold_0" / "checkpoint_final.pth").is_file(), arm
        assert f"[{arm} fold 0] training:" in first
    for target, source in (("CT", "MR"), ("MR", "CT")):
        log = (out / "logs" / f"finetune_{target}_from_{source}__fold_0.log").read_text()
        assert f"-pretrained_weights {models['single_' + source] / 'fold_0' / 'checkpoint_final.pth'}" in log
        assert "Loading pretrained weights" in log

    # planned both ways: ours (per-modality normalization) and nnU-Net's plain plans (z-score for every image)
    plain = json.loads((preprocessed / dataset / "nnUNetPlans.json").read_text())
    assert plain["configurations"]["3d_fullres"]["normalization_schemes"] == ["ZScoreNormalization"]
    assert "cin" not in plain and (preprocessed / dataset / "nnUNetPlansCIN.json").is_file()
    assert (out / "logs" / "plan_and_preprocess_nnUNetPlans.log").read_text().count(
        "$ nnUNetv2_plan_and_preprocess -d 996") == 1
    # one split for every arm, written before any training: stratified by modality, and every model (plain
    # nnUNetTrainer included, which would otherwise make a random split of its own) used it
    splits = json.loads((preprocessed / dataset / "splits_final.json").read_text())
    from nnunet_cin.training.splits import stratified_crossval_split
    cases = sorted(c for s in splits[:1] for c in s["train"] + s["val"])
    assert splits == stratified_crossval_split(cases, {c: c[:2].upper() for c in cases})
    for arm in models:
        log = (out / "logs" / f"{arm}__fold_0.log").read_text()
        assert "Using splits from existing split file" in log and "Creating new" not in log, arm
    val = sorted(splits[0]["val"])
    for arm in ("nnunet", "cin", "cin_zscore"):
        record = json.loads((out / "evaluations" / f"{arm}__fold_0.json").read_text())
        assert sorted(c["case"] for c in record["cases"]) == val
    record = json.loads((out / "evaluations" / "single_CT__fold_0.json").read_text())
    assert sorted(c["case"] for c in record["cases"]) == [c for c in val if c.startswith("ct_")]

    md = (out / "comparison.md").read_text()
    for key in ("finetune", "nnunet", "cin", "cin_zscore"):
        # summary and one table per modality; the paired table once per modality, but for the reference (cin)
        expected = 3 if key == "cin" else 5
        assert sum(1 for line in md.splitlines() if line.startswith(f"| {METHODS[key].label} |")) == expected, key
    assert "## Paired against conditional (CIN)" in md and "## Normalization" not in md  # joint/joint_zscore absent
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| method") and
                  not line.startswith("| modality")]
    assert all("–" not in line and "n/a" not in line for line in table_rows), md
    assert f"every arm trained with `{preprocessed / dataset / 'splits_final.json'}` (written by this comparison" in md
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    cin_eval = json.loads((out / "evaluations" / "cin__fold_0.json").read_text())
    mr_wh = next(c["Dice"]["WH"] for c in cin_eval["cases"] if c["modality"] == "MR")
    row = next(r for r in rows if (r["table"], r["method"], r["modality"], r["structure"]) == ("dice", "cin", "MR",
                                                                                                 "WH"))
    assert float(row["mean"]) == pytest.approx(mr_wh, abs=1e-6)
    assert (out / "comparison.png").stat().st_size > 1000 and (out / "comparison_paired.png").stat().st_size > 1000

    # a rerun: nothing trained, nothing evaluated again
    mtimes = {arm: (folder / "fold_0" / "checkpoint_final.pth").stat().st_mtime_ns for arm, folder in models.items()}
    second = _run_compare(*args).stdout
    for arm in models:
        assert f"[{arm} fold 0] skipped: already trained" in second
        assert f"[{arm} fold 0] evaluation skipped" in second
        assert (models[arm] / "fold_0" / "checkpoint_final.pth").stat().st_mtime_ns == mtimes[arm]
    assert "planning and preprocessing" not in second


@pytest.mark.slow
def test_compare_seeds_and_resume(test_trainers, tmp_path):
    """--seeds 0 1: each seed's models in their own results root, trained with their seed; a training killed after
    epoch 1 of 3 continues from epoch 2 when the command is run again (epochs 0 and 1 are not trained again) and
    ends at epoch 3."""
    results = test_trainers.results
    out = tmp_path / "comparison"
    args = ["-d", "997", "--synthetic", "3", "--shape", "16", "16", "16", "-f", "0", "--trainer-template",
            "{trainer}Three", "-device", "cpu", "-o", str(out), "--jobs", "2", "--arms", "joint", "cin",
            "--seeds", "0", "1"]
    killed = _run_compare(*args, ok=False, env={**os.environ, "TEST_STOP_AFTER_EPOCH": "1"})
    assert killed.returncode == 2 and "command failed (exit -9)" in killed.stderr, killed.stdout + killed.stderr
    dataset = "Dataset997_SyntheticHeart"
    folder = lambda seed, trainer: (results / f"seed_{seed}" / dataset / f"{trainer}__nnUNetPlansCIN__3d_fullres" /
                                    "fold_0")
    interrupted = [(s, t) for s in (0, 1) for t in ("nnUNetTrainerJointThree", "nnUNetTrainerCINThree")
                   if folder(s, t).is_dir()]
    assert interrupted  # -j 2: the first two runs started, and died after epoch 1
    for s, t in interrupted:
        assert not (folder(s, t) / "checkpoint_final.pth").exists()
        assert torch.load(folder(s, t) / "checkpoint_latest.pth", weights_only=False)["current_epoch"] == 2
        assert _epochs_in(next(folder(s, t).glob("training_log_*.txt")).read_text()) == [0, 1]

    second = _run_compare(*args).stdout
    for s, t in interrupted:
        arm = "joint" if "Joint" in t else "cin"
        assert f"[{arm} seed {s} fold 0] continuing the interrupted training (--c) from epoch 2" in second
        logs = sorted(folder(s, t).glob("training_log_*.txt"), key=lambda f: f.stat().st_mtime)
        assert len(logs) == 2 and _epochs_in(logs[1].read_text()) == [2]  # epochs 0 and 1 not trained again
    for s in (0, 1):
        for t in ("nnUNetTrainerJointThree", "nnUNetTrainerCINThree"):
            final = torch.load(folder(s, t) / "checkpoint_final.pth", weights_only=False)
            assert final["current_epoch"] == 3
            assert len(final["logging"]["train_losses"]) == 3  # epochs 0-1 from the interrupted run, then 2
            assert final["init_args"]["seed"] == s  # the seed the trainer ran with, as its checkpoint records it
    assert not (results / dataset).exists()  # nothing outside the seeds' roots

    md = (out / "comparison.md").read_text()
    assert "seeds 0, 1: every model trained once per seed and fold" in md
    assert "| method | CT seed 0 | CT seed 1 | CT sd | MR seed 0 | MR seed 1 | MR sd |" in md
    assert "## Paired against joint (mixed batches)" in md
    # the per-case value is the mean over the two seeds' evaluations
    records = {s: json.loads((out / "evaluations" / f"cin__seed_{s}__fold_0.json").read_text()) for s in (0, 1)}
    ct = {s: next(c for c in r["cases"] if c["modality"] == "CT") for s, r in records.items()}
    with open(out / "comparison.csv") as f:
        row = next(r for r in csv.DictReader(f) if (r["table"], r["method"], r["modality"], r["structure"]) ==
                   ("dice", "cin", "CT", "WH"))
    assert float(row["mean"]) == pytest.approx((ct[0]["Dice"]["WH"] + ct[1]["Dice"]["WH"]) / 2, abs=1e-6)
    assert float(row["seed_0"]) == pytest.approx(ct[0]["Dice"]["WH"], abs=1e-6)
    with open(out / "cases.csv") as f:
        cases = list(csv.DictReader(f))
    assert len(cases) == 2 * 2 * 2 * 9  # methods x seeds x validation cases (1 CT, 1 MR) x columns
    assert {r["seed"] for r in cases} == {"0", "1"}
    assert all(math.isfinite(float(r["dice"])) for r in cases if r["structure"] in ("mean", "WH"))
