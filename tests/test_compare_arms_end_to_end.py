"""nnunet-cin compare end to end, with nnU-Net's real commands on tiny data: every kind of arm runs on one split, and a
rerun redoes nothing. (Seeds and resuming: test_compare_seeds_end_to_end.py; what is trained, evaluated and reported,
on fabricated data: test_compare.py.)"""
import csv
import json

import pytest

from compare_e2e import run_compare, test_trainers  # noqa: F401 (the fixture)
from nnunet_cin.experiments.compare.arms import METHODS


@pytest.mark.slow
def test_compare_arms_end_to_end(test_trainers, tmp_path):
    """Fine-tuning, plain nnU-Net (its own planning and trainer), CIN on plain plans and CIN on ours, in one command:
    every model trained on the same split, every table row filled; a rerun trains and evaluates nothing."""
    results, preprocessed = test_trainers.results, test_trainers.preprocessed
    out = tmp_path / "comparison"
    args = ["-d", "996", "--synthetic", "3", "--shape", "16", "16", "16", "-f", "0", "--trainer-template",
            "{trainer}Tiny", "-device", "cpu", "-o", str(out), "--jobs", "2",
            "--arms", "finetune", "nnunet", "cin", "cin_zscore", "--reference", "cin"]
    first = run_compare(*args).stdout
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
    second = run_compare(*args).stdout
    for arm in models:
        assert f"[{arm} fold 0] skipped: already trained" in second
        assert f"[{arm} fold 0] evaluation skipped" in second
        assert (models[arm] / "fold_0" / "checkpoint_final.pth").stat().st_mtime_ns == mtimes[arm]
    assert "planning and preprocessing" not in second
