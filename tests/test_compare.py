"""nnunet-cin compare: what is trained, how results are aggregated and reported, and (end to end, real nnU-Net
commands on tiny data) that every arm runs, the table has every row and a rerun retrains nothing."""
import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_cin.experiments import compare
from nnunet_cin.experiments.compare import (MEAN, WHOLE_HEART, aggregate, evaluate_predictions, markdown_table, plan_arms,
                                trainer_name, training_state, write_csv)

STRUCTURES = ["MYO", "LA"]


# ---------------------------------------------------------------------------------------------------------------------
# what is trained


def test_plan_default_arms_two_modalities():
    plan = plan_arms(["CT", "MR"], schedule="_5epochs")
    trainers = {name: (a.trainer, a.modalities, a.pretrained_from, a.results_subfolder)
                for name, a in plan.arms.items()}
    assert trainers == {
        "single_CT": ("nnUNetTrainerSingleModality_CT_5epochs", ["CT"], None, None),
        "single_MR": ("nnUNetTrainerSingleModality_MR_5epochs", ["MR"], None, None),
        "finetune_CT_from_MR": ("nnUNetTrainerSingleModality_CT_5epochs", ["CT"], "single_MR", "finetuned_from_MR"),
        "finetune_MR_from_CT": ("nnUNetTrainerSingleModality_MR_5epochs", ["MR"], "single_CT", "finetuned_from_CT"),
        "joint": ("nnUNetTrainerJoint_5epochs", ["CT", "MR"], None, None),
        "joint_alternate": ("nnUNetTrainerJointAlternate_5epochs", ["CT", "MR"], None, None),
        "cin": ("nnUNetTrainerCIN_5epochs", ["CT", "MR"], None, None),
    }
    order = list(plan.arms)
    for name, arm in plan.arms.items():  # a fine-tuned model is trained after the model it starts from
        if arm.pretrained_from:
            assert order.index(arm.pretrained_from) < order.index(name)
    assert [(k, cells) for k, _, cells in plan.rows] == [
        ("single", {"CT": "single_CT", "MR": "single_MR"}),
        ("finetune", {"CT": "finetune_CT_from_MR", "MR": "finetune_MR_from_CT"}),
        ("joint", {"CT": "joint", "MR": "joint"}),
        ("joint_alternate", {"CT": "joint_alternate", "MR": "joint_alternate"}),
        ("cin", {"CT": "cin", "MR": "cin"}),
    ]


def test_plan_options():
    # fine-tuning alone still trains its sources; template; explicit source; custom arms; opt-in transformer arms
    plan = plan_arms(["CT", "MR", "T2"], ["finetune", "cvit"], template="{trainer}Tiny",
                     finetune_from={"CT": "T2"}, custom={"mine": "MyTrainer"})
    assert plan.arms["finetune_CT_from_T2"].pretrained_from == "single_T2"
    assert plan.arms["finetune_MR_from_CT"].pretrained_from == "single_CT"  # default: first other modality
    assert plan.arms["single_T2"].trainer == "nnUNetTrainerSingleModality_T2Tiny"
    assert plan.arms["cvit"].trainer == "nnUNetTrainerCViTTiny"
    assert plan.arms["mine"].trainer == "MyTrainer"  # custom trainers are taken as given
    assert [k for k, _, _ in plan.rows] == ["finetune", "cvit", "mine"]  # single-modality sources are not rows
    assert trainer_name("nnUNetTrainerCIN") == "nnUNetTrainerCIN"
    with pytest.raises(ValueError, match="unknown arm"):
        plan_arms(["CT", "MR"], ["cin", "bogus"])
    with pytest.raises(ValueError, match="'PET' is not a modality"):
        plan_arms(["CT", "MR"], ["finetune"], finetune_from={"MR": "PET"})
    with pytest.raises(ValueError, match="two modalities"):
        plan_arms(["CT"], ["finetune"])
    with pytest.raises(ValueError, match=r"\{trainer\}"):
        trainer_name("nnUNetTrainerCIN", template="Tiny")


def test_training_state(tmp_path):
    fold = tmp_path / "fold_0"
    assert training_state(fold) == "new"
    fold.mkdir()
    (fold / "checkpoint_latest.pth").write_bytes(b"")
    assert training_state(fold) == "continue"
    (fold / "checkpoint_final.pth").write_bytes(b"")
    assert training_state(fold) == "validate"
    (fold / "validation").mkdir()
    (fold / "validation" / "summary.json").write_text("{}")
    assert training_state(fold) == "done"


def test_commands_for_each_state(tmp_path):
    plan = plan_arms(["CT", "MR"], ["finetune"], schedule="_1epoch")
    setup = compare.Setup("Dataset999_X", "3d_fullres", "nnUNetPlansCIN", tmp_path / "results",
                          tmp_path / "pre", {}, "cpu", tmp_path / "out")
    arm = plan.arms["finetune_MR_from_CT"]
    base = ["nnUNetv2_train", "Dataset999_X", "3d_fullres", "1", "-tr", "nnUNetTrainerSingleModality_MR_1epoch",
            "-p", "nnUNetPlansCIN", "-device", "cpu"]
    source = (tmp_path / "results" / "Dataset999_X" / "nnUNetTrainerSingleModality_CT_1epoch__nnUNetPlansCIN__"
              "3d_fullres" / "fold_1" / "checkpoint_final.pth")
    assert compare.train_command(setup, plan, arm, 1, "new") == base + ["-pretrained_weights", str(source)]
    assert compare.train_command(setup, plan, arm, 1, "continue") == base + ["--c"]
    assert compare.train_command(setup, plan, arm, 1, "validate") == base + ["--val"]
    # the fine-tuned model does not overwrite MR's own single-modality model
    assert setup.model_folder(arm) != setup.model_folder(plan.arms["single_MR"])
    assert setup.arm_env(arm)["nnUNet_results"] == str(tmp_path / "results" / "finetuned_from_CT")


# ---------------------------------------------------------------------------------------------------------------------
# aggregation and reports (fabricated evaluations)


def _evaluation(per_modality):
    return {"structures": STRUCTURES, "per_modality": per_modality,
            "num_cases": {m: 1 for m in per_modality}}


def _fabricated():
    plan = plan_arms(["CT", "MR"], ["single", "cin"])
    v = lambda myo, la, wh: {"MYO": myo, "LA": la, MEAN: (myo + la) / 2, WHOLE_HEART: wh}
    evaluations = {
        ("single_CT", 0): _evaluation({"CT": v(0.8, 0.6, 0.9)}),
        ("single_CT", 1): _evaluation({"CT": v(0.6, 0.4, 0.7)}),
        ("single_MR", 0): _evaluation({"MR": v(0.5, 0.3, 0.6)}),
        ("single_MR", 1): _evaluation({"MR": v(0.5, float("nan"), 0.6)}),  # LA absent from ref and prediction
        ("cin", 0): _evaluation({"CT": v(0.9, 0.7, 0.95), "MR": v(0.7, 0.5, 0.8)}),
        ("cin", 1): _evaluation({"CT": v(0.7, 0.5, 0.85), "MR": v(0.6, 0.4, 0.7)}),
    }
    return plan, evaluations


def test_aggregate_mean_std_over_folds():
    plan, evaluations = _fabricated()
    records = aggregate(plan, evaluations, [0, 1], STRUCTURES)
    by = {(r["method"], r["modality"], r["column"]): r for r in records}
    assert len(records) == 2 * 2 * (len(STRUCTURES) + 2)  # rows x modalities x (structures, mean, WH)
    r = by[("single", "CT", "MYO")]
    assert r["arm"] == "single_CT" and r["n_folds"] == 2
    assert r["mean"] == pytest.approx(0.7) and r["std"] == pytest.approx(math.sqrt(0.02))  # sample std
    assert by[("single", "CT", MEAN)]["mean"] == pytest.approx(0.6)
    assert by[("cin", "CT", WHOLE_HEART)]["mean"] == pytest.approx(0.9)
    assert by[("cin", "MR", WHOLE_HEART)]["std"] == pytest.approx(math.sqrt(0.005))
    nan_cell = by[("single", "MR", "LA")]  # the NaN fold is left out
    assert nan_cell["n_folds"] == 1 and nan_cell["mean"] == pytest.approx(0.3) and nan_cell["std"] is None
    assert nan_cell["per_fold"]["0"] == pytest.approx(0.3) and math.isnan(nan_cell["per_fold"]["1"])
    one_fold = aggregate(plan, evaluations, [0], STRUCTURES)
    assert all(r["std"] is None for r in one_fold)


def test_markdown_csv(tmp_path):
    plan, evaluations = _fabricated()
    records = aggregate(plan, evaluations, [0, 1], STRUCTURES)
    md = markdown_table(records, plan, STRUCTURES, "title", ["a note"])
    lines = md.splitlines()
    assert lines[0] == "# title" and "a note" in md
    # summary table + one table per modality, each with a row per method
    assert sum(1 for line in lines if line.startswith("| single-modality |")) == 3
    assert sum(1 for line in lines if line.startswith("| conditional (CIN) |")) == 3
    ct = lines[lines.index("## CT") + 2:lines.index("## CT") + 6]
    assert ct[0] == "| method | MYO | LA | mean | WH |"
    assert ct[2] == "| single-modality | 0.700 ± 0.141 | 0.500 ± 0.141 | 0.600 ± 0.141 | 0.800 ± 0.141 |"
    assert ct[3] == ("| conditional (CIN) | **0.800 ± 0.141** | **0.600 ± 0.141** | **0.700 ± 0.141** | "
                     "**0.900 ± 0.071** |")
    summary_header = lines[lines.index("## Summary: mean Dice over structures, and whole heart (WH), per modality") + 2]
    assert summary_header == "| method | CT mean | CT WH | MR mean | MR WH |"

    write_csv(records, tmp_path / "c.csv", [0, 1])
    with open(tmp_path / "c.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records)
    row = next(r for r in rows if r["method"] == "cin" and r["modality"] == "MR" and r["structure"] == WHOLE_HEART)
    assert float(row["mean"]) == pytest.approx(0.75) and float(row["fold_0"]) == pytest.approx(0.8)
    assert row["n_folds"] == "2" and row["arm"] == "cin"

    compare.bar_plot(records, plan, STRUCTURES, tmp_path / "c.png", "t")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_evaluate_predictions_whole_heart(tmp_path):
    """Per-modality Dice per structure, their mean, and the whole heart (union of labels) against hand-computed
    values."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(), pred.mkdir()
    dataset_json = {"labels": {"background": 0, "MYO": 1, "LA": 2}, "file_ending": ".nii.gz",
                    "channel_names": {"0": "image"}, "modalities": ["CT", "MR"],
                    "modality_patterns": {"CT": "^ct_", "MR": "^mr_"}}

    def write(folder, case, seg):
        sitk.WriteImage(sitk.GetImageFromArray(seg.astype(np.uint8)), str(folder / f"{case}.nii.gz"))

    r = np.zeros((4, 4, 4), np.uint8)
    r[0] = 1
    r[1] = 2
    p = r.copy()
    p[1] = 1  # LA predicted as MYO: MYO 2*16/(16+32) = 2/3, LA 0, whole heart 1
    write(ref, "ct_0000", r), write(pred, "ct_0000", p)
    write(ref, "mr_0000", r), write(pred, "mr_0000", r)  # perfect
    write(ref, "ct_0001", r)  # a reference without prediction is not evaluated
    out = evaluate_predictions(ref, pred, dataset_json, ["CT", "MR"])
    assert out["num_cases"] == {"CT": 1, "MR": 1}
    assert out["per_modality"]["CT"] == pytest.approx({"MYO": 2 / 3, "LA": 0.0, MEAN: 1 / 3, WHOLE_HEART: 1.0})
    assert out["per_modality"]["MR"] == pytest.approx({"MYO": 1.0, "LA": 1.0, MEAN: 1.0, WHOLE_HEART: 1.0})
    json.dumps(out)  # JSON-ready


# ---------------------------------------------------------------------------------------------------------------------
# end to end: real nnUNetv2_plan_and_preprocess_cin / nnUNetv2_train subprocesses on tiny data

# The user's own short schedule, from their folder on nnUNet_extTrainer: one epoch of one iteration and no
# test-time mirroring, for every trainer the comparison uses ("{trainer}Tiny").
TINY_TRAINERS = '''
import torch
from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN
from nnunet_cin.trainers.nnUNetTrainerJoint import nnUNetTrainerJoint
from nnunet_cin.trainers.nnUNetTrainerJointAlternate import nnUNetTrainerJointAlternate
from nnunet_cin.training.baselines import single_modality_class


class Tiny:
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 1
        self.num_val_iterations_per_epoch = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None


class nnUNetTrainerCINTiny(Tiny, nnUNetTrainerCIN): pass
class nnUNetTrainerJointTiny(Tiny, nnUNetTrainerJoint): pass
class nnUNetTrainerJointAlternateTiny(Tiny, nnUNetTrainerJointAlternate): pass
class nnUNetTrainerSingleModality_CTTiny(Tiny, single_modality_class("CT")): pass
class nnUNetTrainerSingleModality_MRTiny(Tiny, single_modality_class("MR")): pass
'''


def _compare(*args):
    result = subprocess.run([sys.executable, str(compare.__file__), *args], capture_output=True, text=True,
                            env=dict(os.environ))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_compare_end_to_end_and_resume(nnunet_env, tmp_path, monkeypatch):
    trainers = tmp_path / "my_trainers"
    trainers.mkdir()
    (trainers / "tiny_comparison_trainers.py").write_text(TINY_TRAINERS)
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([str(trainers), os.environ["nnUNet_extTrainer"]]))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    out = tmp_path / "comparison"
    args = ["-d", "996", "--synthetic", "3", "--shape", "16", "16", "16", "-f", "0", "--trainer-template",
            "{trainer}Tiny", "-device", "cpu", "-o", str(out), "--jobs", "2"]
    first = _compare(*args)

    # every model was trained with nnU-Net, fine-tuned ones from their source's final checkpoint
    dataset = "Dataset996_SyntheticHeart"
    models = {
        "single_CT": nnunet_env.results / dataset / "nnUNetTrainerSingleModality_CTTiny__nnUNetPlansCIN__3d_fullres",
        "single_MR": nnunet_env.results / dataset / "nnUNetTrainerSingleModality_MRTiny__nnUNetPlansCIN__3d_fullres",
        "finetune_CT_from_MR": nnunet_env.results / "finetuned_from_MR" / dataset /
        "nnUNetTrainerSingleModality_CTTiny__nnUNetPlansCIN__3d_fullres",
        "finetune_MR_from_CT": nnunet_env.results / "finetuned_from_CT" / dataset /
        "nnUNetTrainerSingleModality_MRTiny__nnUNetPlansCIN__3d_fullres",
        "joint": nnunet_env.results / dataset / "nnUNetTrainerJointTiny__nnUNetPlansCIN__3d_fullres",
        "joint_alternate": nnunet_env.results / dataset / "nnUNetTrainerJointAlternateTiny__nnUNetPlansCIN__3d_fullres",
        "cin": nnunet_env.results / dataset / "nnUNetTrainerCINTiny__nnUNetPlansCIN__3d_fullres",
    }
    for arm, folder in models.items():
        assert (folder / "fold_0" / "checkpoint_final.pth").is_file(), arm
        assert f"[{arm} fold 0] training:" in first
    for target, source in (("CT", "MR"), ("MR", "CT")):
        log = (out / "logs" / f"finetune_{target}_from_{source}__fold_0.log").read_text()
        assert f"-pretrained_weights {models['single_' + source] / 'fold_0' / 'checkpoint_final.pth'}" in log
        assert "Loading pretrained weights" in log

    # the validation cases of fold 0 (nnU-Net's split file), per modality
    split = json.loads((nnunet_env.preprocessed / dataset / "splits_final.json").read_text())[0]["val"]
    cin_eval = json.loads((out / "evaluations" / "cin__fold_0.json").read_text())
    assert sorted(c["case"] for c in cin_eval["cases"]) == sorted(split)
    ct_eval = json.loads((out / "evaluations" / "single_CT__fold_0.json").read_text())
    assert sorted(c["case"] for c in ct_eval["cases"]) == sorted(c for c in split if c.startswith("ct_"))

    # the table: a summary and one table per modality, every method a row, every cell a number
    md = (out / "comparison.md").read_text()
    labels = [compare.METHODS[k].label for k in ("single", "finetune", "joint", "joint_alternate", "cin")]
    for label in labels:
        assert sum(1 for line in md.splitlines() if line.startswith(f"| {label} |")) == 3, label
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert all("–" not in line and "n/a" not in line for line in table_rows), md
    ct_header = md.splitlines()[md.splitlines().index("## CT") + 2]
    assert ct_header == "| method | MYO | LA | LV | RA | RV | AA | PA | mean | WH |"
    # the CSV agrees with the per-fold evaluation (one fold: the mean is the fold's value)
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 2 * 9
    row = next(r for r in rows if r["method"] == "cin" and r["modality"] == "MR" and r["structure"] == "WH")
    assert float(row["mean"]) == pytest.approx(cin_eval["per_modality"]["MR"]["WH"], abs=1e-6)
    assert (out / "comparison.png").stat().st_size > 1000

    # rerun after an interruption of the conditional model: everything else is skipped (not retrained, not
    # re-evaluated), the conditional model continues from its checkpoint with --c
    (models["cin"] / "fold_0" / "checkpoint_final.pth").unlink()
    (models["cin"] / "fold_0" / "validation" / "summary.json").unlink()
    mtimes = {arm: (folder / "fold_0" / "checkpoint_final.pth").stat().st_mtime_ns for arm, folder in models.items()
              if arm != "cin"}
    second = _compare(*args)
    for arm in mtimes:
        assert f"[{arm} fold 0] skipped: already trained" in second
        assert f"[{arm} fold 0] evaluation skipped" in second
        assert f"[{arm} fold 0] training" not in second
        assert (models[arm] / "fold_0" / "checkpoint_final.pth").stat().st_mtime_ns == mtimes[arm]
    assert "[cin fold 0] continuing the interrupted training (--c)" in second
    assert (models["cin"] / "fold_0" / "checkpoint_final.pth").is_file()
    assert "evaluated 2 validation case(s)" in second.split("[cin fold 0] continuing")[1]


def test_cli_dry_run_and_errors(nnunet_env, tmp_path):
    from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset

    missing = subprocess.run([sys.executable, str(compare.__file__), "-d", "555", "--schedule", "_1epoch"],
                             capture_output=True, text=True, env=dict(os.environ))
    assert missing.returncode == 2 and "dataset 555 is in neither nnUNet_raw" in missing.stderr
    assert not any(nnunet_env.results.iterdir())  # nothing written for a dataset that does not exist

    write_nnunet_dataset(nnunet_env.raw, 555, "Dry", {"CT": 3, "MR": 3}, shape=(8, 8, 8))
    bad_arm = subprocess.run([sys.executable, str(compare.__file__), "-d", "555", "--arms", "cin", "vit"],
                             capture_output=True, text=True, env=dict(os.environ))
    assert bad_arm.returncode == 2 and "unknown arm(s) ['vit']" in bad_arm.stderr

    out = _compare("-d", "555", "-f", "0", "1", "--schedule", "_5epochs", "--dry-run", "-device", "cpu",
                   "--arms", "finetune", "cin", "--arm", "mine=nnUNetTrainerCIN_1epoch")
    assert "nnUNetv2_plan_and_preprocess_cin -d 555 -c 3d_fullres" in out
    for fold in (0, 1):
        assert (f"nnUNetv2_train Dataset555_Dry 3d_fullres {fold} -tr nnUNetTrainerSingleModality_MR_5epochs -p "
                f"nnUNetPlansCIN -device cpu -pretrained_weights {nnunet_env.results}/Dataset555_Dry/"
                f"nnUNetTrainerSingleModality_CT_5epochs__nnUNetPlansCIN__3d_fullres/fold_{fold}/checkpoint_final.pth"
                ) in out
        assert f"nnUNetv2_train Dataset555_Dry 3d_fullres {fold} -tr nnUNetTrainerCIN_5epochs " in out
        assert f"nnUNetv2_train Dataset555_Dry 3d_fullres {fold} -tr nnUNetTrainerCIN_1epoch " in out
    assert not (nnunet_env.preprocessed / "Dataset555_Dry").exists()  # nothing planned, nothing trained
    assert not (nnunet_env.results / "Dataset555_Dry" / "nnUNetTrainerCIN_5epochs__nnUNetPlansCIN__3d_fullres").exists()


def test_every_arm_names_a_trainer_nnunet_finds(nnunet_env):
    """The trainer of every arm (transformer arms included, with a schedule) is what nnU-Net's lookup finds; an
    unknown one stops the comparison before anything runs, naming it."""
    plan = plan_arms(["CT", "MR"], list(compare.METHODS), schedule="_1epoch")
    compare.check_trainers(sorted({a.trainer for a in plan.arms.values()}), dict(os.environ))
    with pytest.raises(RuntimeError, match="nnUNetTrainerNoSuchThing"):
        compare.check_trainers(["nnUNetTrainerCIN", "nnUNetTrainerNoSuchThing"], dict(os.environ))
