"""nnunet-cin compare end to end, with nnU-Net's real commands on tiny data: replicates land in their own folders with
their seed, and an interrupted training continues from the epoch it reached. (Every kind of arm:
test_compare_arms_end_to_end.py.)"""
import csv
import json
import math
import os

import pytest
import torch

from compare_e2e import epochs_in, run_compare, test_trainers  # noqa: F401 (the fixture)


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
    killed = run_compare(*args, ok=False, env={**os.environ, "TEST_STOP_AFTER_EPOCH": "1"})
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
        assert epochs_in(next(folder(s, t).glob("training_log_*.txt")).read_text()) == [0, 1]

    second = run_compare(*args).stdout
    for s, t in interrupted:
        arm = "joint" if "Joint" in t else "cin"
        assert f"[{arm} seed {s} fold 0] continuing the interrupted training (--c) from epoch 2" in second
        logs = sorted(folder(s, t).glob("training_log_*.txt"), key=lambda f: f.stat().st_mtime)
        assert len(logs) == 2 and epochs_in(logs[1].read_text()) == [2]  # epochs 0 and 1 not trained again
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
