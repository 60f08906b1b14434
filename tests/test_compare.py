"""nnunet-cin compare: what is trained (arms, plans, seeds, folders, commands), how it is evaluated (through
nnunet_cin.evaluation) and resumed, how per-case values become statistics and tables (fabricated evaluations). End to
end with nnU-Net's real commands: test_compare_arms_end_to_end.py, test_compare_seeds_end_to_end.py."""
import csv
import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_cin.experiments.compare.arms import (METHODS, PLAIN_PLANS, Run, plan_arms, plan_runs,
                                                 reference_row, trainer_name)
from nnunet_cin.experiments.compare.cases import MEAN, WHOLE_HEART, CaseTable
from nnunet_cin.experiments.compare.prepare import check_trainers
from nnunet_cin.experiments.compare.reporting import Statistics, bar_plot, markdown, paired_plot, write_csv
from nnunet_cin.experiments.compare.running import Setup, evaluate, train_command
from nnunet_cin.experiments.nnunet_runs import prepare_continue, training_state
from nnunet_cin.evaluation.statistics import compare_paired, mean_ci
from nnunet_helpers import main_in_process

STRUCTURES = ["MYO", "LA"]


# ---------------------------------------------------------------------------------------------------------------------
# what is trained


def test_plan_default_arms_two_modalities():
    plan = plan_arms(["CT", "MR"], schedule="_5epochs")
    trainers = {name: (a.trainer, a.modalities, a.plans, a.pretrained_from, a.results_subfolder)
                for name, a in plan.arms.items()}
    assert trainers == {
        "single_CT": ("nnUNetTrainerSingleModality_CT_5epochs", ["CT"], "comparison", None, None),
        "single_MR": ("nnUNetTrainerSingleModality_MR_5epochs", ["MR"], "comparison", None, None),
        "finetune_CT_from_MR": ("nnUNetTrainerSingleModality_CT_5epochs", ["CT"], "comparison", "single_MR",
                                "finetuned_from_MR"),
        "finetune_MR_from_CT": ("nnUNetTrainerSingleModality_MR_5epochs", ["MR"], "comparison", "single_CT",
                                "finetuned_from_CT"),
        # plain nnU-Net as its maintainers advise for mixed CT+MR: nnU-Net's own trainer on its own plans
        "nnunet": ("nnUNetTrainer_5epochs", ["CT", "MR"], PLAIN_PLANS, None, None),
        "joint": ("nnUNetTrainerJoint_5epochs", ["CT", "MR"], "comparison", None, None),
        "joint_alternate": ("nnUNetTrainerJointAlternate_5epochs", ["CT", "MR"], "comparison", None, None),
        "joint_zscore": ("nnUNetTrainerJoint_5epochs", ["CT", "MR"], PLAIN_PLANS, None, None),
        "cin": ("nnUNetTrainerCIN_5epochs", ["CT", "MR"], "comparison", None, None),
        "cin_zscore": ("nnUNetTrainerCIN_5epochs", ["CT", "MR"], PLAIN_PLANS, None, None),
    }
    order = list(plan.arms)
    for name, arm in plan.arms.items():  # a fine-tuned model is trained after the model it starts from
        if arm.pretrained_from:
            assert order.index(arm.pretrained_from) < order.index(name)
    assert [(r.key, r.cells) for r in plan.rows] == [
        ("single", {"CT": "single_CT", "MR": "single_MR"}),
        ("finetune", {"CT": "finetune_CT_from_MR", "MR": "finetune_MR_from_CT"}),
        ("nnunet", {"CT": "nnunet", "MR": "nnunet"}),
        ("joint", {"CT": "joint", "MR": "joint"}),
        ("joint_alternate", {"CT": "joint_alternate", "MR": "joint_alternate"}),
        ("joint_zscore", {"CT": "joint_zscore", "MR": "joint_zscore"}),
        ("cin", {"CT": "cin", "MR": "cin"}),
        ("cin_zscore", {"CT": "cin_zscore", "MR": "cin_zscore"}),
    ]
    assert reference_row(plan, None) == "joint"


def test_plan_options():
    # fine-tuning alone still trains its sources; template; explicit source; custom arms; opt-in arms
    plan = plan_arms(["CT", "MR", "T2"], ["finetune", "cvit", "cin_alternate", "cin_all_norms"],
                     template="{trainer}Tiny", finetune_from={"CT": "T2"}, custom={"mine": "MyTrainer"})
    assert plan.arms["finetune_CT_from_T2"].pretrained_from == "single_T2"
    assert plan.arms["finetune_MR_from_CT"].pretrained_from == "single_CT"  # default: first other modality
    assert plan.arms["single_T2"].trainer == "nnUNetTrainerSingleModality_T2Tiny"
    assert plan.arms["cvit"].trainer == "nnUNetTrainerCViTTiny"
    assert plan.arms["cin_alternate"].trainer == "nnUNetTrainerCINAlternateTiny"
    assert plan.arms["cin_all_norms"].trainer == "nnUNetTrainerCINAllNormsTiny"
    assert plan.arms["mine"].trainer == "MyTrainer" and plan.arms["mine"].plans == "comparison"  # taken as given
    assert [r.key for r in plan.rows] == ["finetune", "cin_alternate", "cin_all_norms", "cvit", "mine"]
    assert reference_row(plan, None) == "finetune"  # no joint arm: the first row
    assert reference_row(plan, "mine") == "mine"
    with pytest.raises(ValueError, match="--reference joint: not an arm"):
        reference_row(plan, "joint")
    assert trainer_name("nnUNetTrainerCIN") == "nnUNetTrainerCIN"
    with pytest.raises(ValueError, match="unknown arm"):
        plan_arms(["CT", "MR"], ["cin", "bogus"])
    with pytest.raises(ValueError, match="'PET' is not a modality"):
        plan_arms(["CT", "MR"], ["finetune"], finetune_from={"MR": "PET"})
    with pytest.raises(ValueError, match="two modalities"):
        plan_arms(["CT"], ["finetune"])
    with pytest.raises(ValueError, match=r"\{trainer\}"):
        trainer_name("nnUNetTrainerCIN", template="Tiny")
    with pytest.raises(ValueError, match="must be unique"):
        plan_arms(["CT", "MR"], ["cin"], custom={"joint": "MyTrainer"})


def _setup(tmp_path, **kw):
    return Setup("Dataset999_X", "3d_fullres", "nnUNetPlansCIN", tmp_path / "results", tmp_path / "pre",
                 {"PATH": "x"}, "cpu", tmp_path / "out", **kw)


def test_replicates_have_their_own_folders_and_seed(tmp_path):
    plan = plan_arms(["CT", "MR"], ["finetune", "nnunet", "cin"], schedule="_1epoch")
    runs = plan_runs(plan, [0, 1], [0, 1])
    assert len(runs) == 2 * 2 * len(plan.arms)
    assert [(r.seed, r.fold) for r in runs[:len(plan.arms)]] == [(0, 0)] * len(plan.arms)
    assert runs[-1].seed == 1 and runs[-1].fold == 1
    setup = _setup(tmp_path)
    folders = {setup.run_folder(r) for r in runs}
    assert len(folders) == len(runs)  # no replicate overwrites another
    cin = plan.arms["cin"]
    assert setup.run_folder(Run(cin, 1, 0)) == (tmp_path / "results" / "seed_1" / "Dataset999_X" /
                                                "nnUNetTrainerCIN_1epoch__nnUNetPlansCIN__3d_fullres" / "fold_0")
    assert setup.run_folder(Run(plan.arms["nnunet"], 0, 1)) == (
        tmp_path / "results" / "seed_0" / "Dataset999_X" / "nnUNetTrainer_1epoch__nnUNetPlans__3d_fullres" / "fold_1")
    ft = plan.arms["finetune_MR_from_CT"]
    env = setup.run_env(Run(ft, 1, 0))
    assert env["nnUNet_results"] == str(tmp_path / "results" / "seed_1" / "finetuned_from_CT")
    assert env["nnUNet_cin_seed"] == "1" and env["PATH"] == "x"
    # unseeded: nnUNet_results itself (the layout of a comparison without --seeds), no seed variable
    unseeded = setup.run_env(Run(cin, None, 0))
    assert unseeded["nnUNet_results"] == str(tmp_path / "results") and "nnUNet_cin_seed" not in unseeded
    assert Run(cin, None, 0).name == "cin__fold_0" and Run(cin, 2, 3).name == "cin__seed_2__fold_3"


def test_commands_for_each_state(tmp_path):
    plan = plan_arms(["CT", "MR"], ["finetune", "cin_zscore"], schedule="_1epoch")
    setup = _setup(tmp_path)
    run = Run(plan.arms["finetune_MR_from_CT"], 1, 2)
    base = ["nnUNetv2_train", "Dataset999_X", "3d_fullres", "2", "-tr", "nnUNetTrainerSingleModality_MR_1epoch",
            "-p", "nnUNetPlansCIN", "-device", "cpu"]
    # the source is the same seed's single-modality model of the same fold
    source = (tmp_path / "results" / "seed_1" / "Dataset999_X" / "nnUNetTrainerSingleModality_CT_1epoch__"
              "nnUNetPlansCIN__3d_fullres" / "fold_2" / "checkpoint_final.pth")
    assert train_command(setup, plan, run, "new") == base + ["-pretrained_weights", str(source)]
    assert train_command(setup, plan, run, "continue") == base + ["--c"]
    assert train_command(setup, plan, run, "validate") == base + ["--val"]
    assert setup.model_folder(run.arm, 1) != setup.model_folder(plan.arms["single_MR"], 1)
    zscore = train_command(setup, plan, Run(plan.arms["cin_zscore"], None, 0), "new")
    assert zscore[zscore.index("-p") + 1] == "nnUNetPlans"
    assert train_command(_setup(tmp_path, plain_plans="MyPlain"), plan, Run(plan.arms["cin_zscore"], None, 0),
                         "new")[zscore.index("-p") + 1] == "MyPlain"


# ---------------------------------------------------------------------------------------------------------------------
# resume


def _checkpoint(file, epoch, marker):
    torch.save({"current_epoch": epoch, "network_weights": {"w": torch.full((2,), float(marker))}}, file)


def test_continue_from_the_newest_checkpoint(tmp_path):
    fold = tmp_path / "fold_0"
    assert training_state(fold) == "new"
    fold.mkdir()
    # only best (nnU-Net writes latest every save_every epochs): --c loads best
    _checkpoint(fold / "checkpoint_best.pth", 3, 3)
    assert training_state(fold) == "continue"
    assert prepare_continue(fold) == 3 and not (fold / "checkpoint_latest.pth").exists()
    # best newer than latest: latest becomes a copy of best, so that --c (which prefers latest) continues at 7
    _checkpoint(fold / "checkpoint_latest.pth", 5, 5)
    _checkpoint(fold / "checkpoint_best.pth", 7, 7)
    assert prepare_continue(fold) == 7
    latest = torch.load(fold / "checkpoint_latest.pth", weights_only=False)
    assert latest["current_epoch"] == 7 and latest["network_weights"]["w"][0] == 7
    assert sorted(p.name for p in fold.iterdir()) == ["checkpoint_best.pth", "checkpoint_latest.pth"]
    # latest newer than best: left alone
    _checkpoint(fold / "checkpoint_latest.pth", 9, 9)
    assert prepare_continue(fold) == 9
    assert torch.load(fold / "checkpoint_latest.pth", weights_only=False)["network_weights"]["w"][0] == 9
    (fold / "checkpoint_final.pth").write_bytes(b"")
    assert training_state(fold) == "validate"
    (fold / "validation").mkdir()
    (fold / "validation" / "summary.json").write_text("{}")
    assert training_state(fold) == "done"


# ---------------------------------------------------------------------------------------------------------------------
# evaluation through nnunet_cin.evaluation


DATASET_JSON = {"labels": {"background": 0, "MYO": 1, "LA": 2}, "file_ending": ".nii.gz",
                "channel_names": {"0": "image"}, "modalities": ["CT", "MR"],
                "modality_patterns": {"CT": "^ct_", "MR": "^mr_"}}


def _write_seg(folder, case, seg):
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(seg.astype(np.uint8)), str(folder / f"{case}.nii.gz"))


def test_evaluation_per_case_with_whole_heart(tmp_path, capsys):
    """Per-case Dice per structure and of the union of all labels (WH), against hand-computed values; the cases must
    be the fold's validation cases of the split; a second call reads the stored evaluation."""
    from nnunet_cin.experiments.compare.prepare import Split

    setup = _setup(tmp_path, num_processes=1)
    plan = plan_arms(["CT", "MR"], ["cin"])
    run = Run(plan.arms["cin"], 0, 0)
    validation = setup.run_folder(run) / "validation"
    gt = setup.preprocessed / "gt_segmentations"
    r = np.zeros((4, 4, 4), np.uint8)
    r[0], r[1] = 1, 2
    p = r.copy()
    p[1] = 1  # LA predicted as MYO: MYO 2*16/(16+32) = 2/3, LA 0, whole heart 1
    _write_seg(gt, "ct_0000", r), _write_seg(validation, "ct_0000", p)
    e = np.zeros_like(r)
    e[0, :2] = 1  # MYO half found, LA missed: MYO 2*8/(8+16) = 2/3, LA 0, WH 2*8/(8+32) = 0.4
    _write_seg(gt, "mr_0000", r), _write_seg(validation, "mr_0000", e)
    _write_seg(gt, "ct_0001", r)  # a training case of this fold: in the references, not predicted
    (validation / "summary.json").write_text("{}")
    split = Split(tmp_path / "splits_final.json", False, {0: {"CT": ["ct_0000"], "MR": ["mr_0000"]}})
    record = evaluate(setup, run, DATASET_JSON, split)
    cases = {c["case"]: (c["modality"], c["Dice"]) for c in record["cases"]}
    assert cases["ct_0000"] == ("CT", pytest.approx({"MYO": 2 / 3, "LA": 0.0, WHOLE_HEART: 1.0}))
    assert cases["mr_0000"] == ("MR", pytest.approx({"MYO": 2 / 3, "LA": 0.0, WHOLE_HEART: 0.4}))
    assert record["seed"] == 0 and record["fold"] == 0 and record["plans"] == "nnUNetPlansCIN"
    stored = setup.output / "evaluations" / "cin__seed_0__fold_0.json"
    assert json.loads(stored.read_text()) == json.loads(json.dumps(record))
    capsys.readouterr()
    assert evaluate(setup, run, DATASET_JSON, split) == json.loads(stored.read_text())
    assert "evaluation skipped: already in" in capsys.readouterr().out
    # a model validated on other cases than the split's fold (trained with another split) is an error
    stored.unlink()
    other = Split(tmp_path / "splits_final.json", False, {0: {"CT": ["ct_0001"], "MR": ["mr_0000"]}})
    with pytest.raises(RuntimeError, match="trained with another split"):
        evaluate(setup, run, DATASET_JSON, other)


# ---------------------------------------------------------------------------------------------------------------------
# per-case values, statistics and reports (fabricated evaluations)


def _record(arm, seed, fold, cases):
    """cases: {case: (modality, MYO, LA, WH)}"""
    return {"arm": arm, "seed": seed, "fold": fold,
            "cases": [{"case": c, "modality": m, "Dice": {"MYO": myo, "LA": la, WHOLE_HEART: wh}}
                      for c, (m, myo, la, wh) in cases.items()]}


def test_case_table_averages_seeds_per_case():
    plan = plan_arms(["CT", "MR"], ["single", "cin"])
    evaluations = [
        _record("single_CT", 0, 0, {"ct_a": ("CT", 0.8, 0.6, 0.9)}),
        _record("single_CT", 1, 0, {"ct_a": ("CT", 0.6, None, 0.7)}),  # LA absent from reference and prediction
        _record("single_MR", 0, 0, {"mr_a": ("MR", 0.5, 0.3, 0.6)}),
        _record("cin", 0, 0, {"ct_a": ("CT", 0.9, 0.7, 0.95), "mr_a": ("MR", 0.7, 0.5, 0.8)}),
        _record("cin", 0, 1, {"ct_b": ("CT", 0.7, 0.5, 0.85)}),
    ]
    table = CaseTable.from_evaluations([(r.key, r.cells) for r in plan.rows], evaluations, STRUCTURES)
    assert table.columns == ["MYO", "LA", MEAN, WHOLE_HEART]
    assert table.per_case("single", "CT", "MYO") == pytest.approx({"ct_a": 0.7})  # (0.8 + 0.6) / 2
    assert table.per_case("single", "CT", "LA") == pytest.approx({"ct_a": 0.6})  # the NaN seed left out
    # mean over structures per case, then over seeds: seed 0 (0.8 + 0.6) / 2 = 0.7, seed 1: 0.6 (LA undefined)
    assert table.per_case("single", "CT", MEAN) == pytest.approx({"ct_a": 0.65})
    assert table.seed_means("single", "CT", MEAN) == pytest.approx({0: 0.7, 1: 0.6})
    assert table.per_case("single", "MR", WHOLE_HEART) == pytest.approx({"mr_a": 0.6})  # single_MR fills MR only
    assert table.per_case("cin", "CT", WHOLE_HEART) == pytest.approx({"ct_a": 0.95, "ct_b": 0.85})
    assert table.fold_means("cin", "CT", "MYO") == pytest.approx({"0": 0.9, "1": 0.7})
    assert len(table.rows) == 6 * len(table.columns)  # 6 (case, run) pairs


def _fabricated_comparison(seeds=(0, 1), n=6):
    """joint/cin/joint_zscore/cin_zscore/nnunet, n CT and n MR cases in 2 folds, per seed. cin is 0.1 better than
    joint on every CT case (the same in both seeds), equal on MR; the other arms vary around joint."""
    plan = plan_arms(["CT", "MR"], ["nnunet", "joint", "joint_zscore", "cin", "cin_zscore"])
    rng = np.random.default_rng(0)
    base = {f"{m.lower()}_{i}": (m, 0.4 + 0.05 * i) for m in ("CT", "MR") for i in range(n)}
    shift = {"joint": {"CT": 0.0, "MR": 0.0}, "cin": {"CT": 0.1, "MR": 0.0}}
    evaluations = []
    for seed in seeds:
        for arm in plan.arms:
            for fold in (0, 1):
                cases = {}
                for case, (m, value) in base.items():
                    if int(case.split("_")[1]) % 2 != fold:
                        continue
                    s = shift.get(arm, {}).get(m)
                    v = value + s if s is not None else value + rng.normal(0, 0.05)
                    cases[case] = (m, v, v - 0.2, v + 0.2)
                evaluations.append(_record(arm, seed, fold, cases))
    table = CaseTable.from_evaluations([(r.key, r.cells) for r in plan.rows], evaluations, STRUCTURES)
    return plan, table


def test_statistics_and_markdown_tables(tmp_path):
    plan, table = _fabricated_comparison()
    stats = Statistics(table, plan, reference_row(plan, None))
    assert stats.reference == "joint" and stats.levers_available()
    # cells: mean over the n = 6 cases of the mean over structures, Student-t interval
    values = [0.4 + 0.05 * i + 0.1 - 0.1 for i in range(6)]  # (v + (v - 0.2)) / 2 = v - 0.1, v = base + 0.1
    cell = stats.cells[("cin", "CT", MEAN)]
    assert cell == mean_ci(values) and cell.n == 6
    assert cell.mean == pytest.approx(np.mean(values))
    assert cell.high - cell.mean == pytest.approx(2.570581835636314 * np.std(values, ddof=1) / math.sqrt(6))
    # paired: +0.1 on every CT case: the interval is [0.1, 0.1], Wilcoxon p = 2/64, better; MR identical
    ct = stats.paired("cin", "joint", "CT", MEAN)
    assert ct.n == 6 and ct.difference == pytest.approx(0.1) and ct.low == pytest.approx(0.1)
    assert ct.p == pytest.approx(2 / 64) and ct.verdict == "better"
    mr = stats.paired("cin", "joint", "MR", MEAN)
    assert mr.difference == pytest.approx(0.0) and mr.p == 1.0 and mr.verdict == "no detectable difference"
    assert stats.paired("joint", "cin", "CT", WHOLE_HEART).verdict == "worse"

    plans_names = {"comparison": "nnUNetPlansCIN", "plain": "nnUNetPlans"}
    md = markdown(stats, [0, 1], plans_names, "title", ["a note"])
    lines = md.splitlines()
    assert lines[0] == "# title" and "a note" in md
    sections = [line for line in lines if line.startswith("## ")]
    assert sections == ["## Summary: mean Dice over structures and whole heart (WH), per modality [95% CI]",
                        "## Normalization × conditioning: what each lever buys (mean Dice over structures)",
                        "## Paired against joint (mixed batches): per-case difference (method - joint (mixed "
                        "batches))",
                        "## Replicates: mean Dice over structures, per seed (run-to-run spread)",
                        "## CT: every structure [95% CI]", "## MR: every structure [95% CI]"]

    def row(section, start):
        block = lines[lines.index(section):]
        return next(line for line in block if line.startswith(start))

    c = stats.cells[("cin", "CT", MEAN)]
    cin_ct = f"{c.mean:.3f} [{c.low:.3f}, {c.high:.3f}]"
    assert row(sections[0], "| conditional (CIN) |").startswith(f"| conditional (CIN) | `nnUNetPlansCIN` | **{cin_ct}**")
    assert row(sections[0], "| plain nnU-Net").startswith("| plain nnU-Net (z-score for all) | `nnUNetPlans` |")
    assert row(sections[1], "| CT | `nnUNetPlansCIN` |").endswith("| +0.100 [+0.100, +0.100], p 0.031, better |")
    from nnunet_cin.experiments.compare.reporting import difference_cell
    norm = [stats.paired(a, b, "CT", MEAN) for a, b in (("joint", "joint_zscore"), ("cin", "cin_zscore"))]
    assert row(sections[1], "| CT | normalization buys") == (
        "| CT | normalization buys (nnUNetPlansCIN - nnUNetPlans) | " +
        " | ".join(f"{difference_cell(c)}, p {c.p:.3f}, {c.verdict}" for c in norm) + " |  |")
    assert row(sections[2], "| conditional (CIN) | CT |") == (
        "| conditional (CIN) | CT | 6 | +0.100 [+0.100, +0.100] | 0.031 | better | +0.100 [+0.100, +0.100] | "
        "0.031 | better |")
    assert row(sections[2], "| conditional (CIN) | MR |").startswith(
        "| conditional (CIN) | MR | 6 | +0.000 [+0.000, +0.000] | 1.000 | no detectable difference |")
    assert not any(line.startswith("| joint (mixed batches) | CT |") for line in lines)  # the reference itself
    assert lines[lines.index(sections[3]) + 2] == "| method | CT seed 0 | CT seed 1 | CT sd | MR seed 0 | MR seed 1 | MR sd |"
    mean_ct = np.mean(values)
    assert row(sections[3], "| conditional (CIN) |").startswith(f"| conditional (CIN) | {mean_ct:.3f} | {mean_ct:.3f} | 0.000 |")
    assert lines[lines.index(sections[4]) + 2] == "| method | MYO | LA | mean | WH |"
    # one seed: no replicates table; no reference: no paired table
    assert "## Replicates" not in markdown(stats, [None], plans_names)
    assert "## Paired" not in markdown(Statistics(table, plan, None), [0, 1], plans_names)


def test_csv_and_plots(tmp_path):
    plan, table = _fabricated_comparison()
    stats = Statistics(table, plan, "joint")
    write_csv(stats, tmp_path / "c.csv", [0, 1], [0, 1])
    with open(tmp_path / "c.csv") as f:
        rows = list(csv.DictReader(f))
    dice = [r for r in rows if r["table"] == "dice"]
    paired = [r for r in rows if r["table"] == "paired"]
    assert len(dice) == 5 * 2 * 4 and len(paired) == 4 * 2 * 4  # methods x modalities x columns (reference left out)
    r = next(r for r in dice if (r["method"], r["modality"], r["structure"]) == ("cin", "MR", WHOLE_HEART))
    cell = stats.cells[("cin", "MR", WHOLE_HEART)]
    assert float(r["mean"]) == pytest.approx(cell.mean, abs=1e-6) and float(r["ci_low"]) == pytest.approx(cell.low,
                                                                                                         abs=1e-6)
    assert r["n_cases"] == "6" and r["ci_method"] == "t" and float(r["seed_sd"]) == pytest.approx(0, abs=1e-6)
    assert float(r["seed_0"]) == pytest.approx(cell.mean, abs=1e-6)
    odd = [0.4 + 0.05 * i + 0.2 for i in range(1, 6, 2)]  # fold 1: the odd cases; cin MR = joint: WH = base + 0.2
    assert float(r["fold_1"]) == pytest.approx(np.mean(odd), abs=1e-6)
    p = next(r for r in paired if (r["method"], r["modality"], r["structure"]) == ("cin", "CT", "MYO"))
    assert p["reference"] == "joint" and p["verdict"] == "better" and p["ci_method"] == "bootstrap"
    assert float(p["difference"]) == pytest.approx(0.1) and float(p["p_value"]) == pytest.approx(2 / 64)
    nn = next(r for r in paired if (r["method"], r["modality"], r["structure"]) == ("nnunet", "MR", MEAN))
    expected = compare_paired(list(table.per_case("nnunet", "MR", MEAN).values()),
                              list(table.per_case("joint", "MR", MEAN).values()))
    assert float(nn["difference"]) == pytest.approx(expected.difference, abs=1e-6) and nn["verdict"] == expected.verdict
    bar_plot(stats, tmp_path / "c.png", "t")
    paired_plot(stats, tmp_path / "p.png", "t")
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "p.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------------------------------------
# the command: checks and dry run


def _run_compare(*args, ok=True):
    """nnunet-cin compare's main in this process (the command itself runs in test_compare_*_end_to_end.py)."""
    from nnunet_cin.experiments.compare import main
    result = main_in_process(main, args)
    if ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_cli_dry_run_and_errors(nnunet_env):
    from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset

    missing = _run_compare("-d", "555", "--schedule", "_1epoch", ok=False)
    assert missing.returncode == 2 and "dataset 555 is in neither nnUNet_raw" in missing.stderr
    assert not any(nnunet_env.results.iterdir())  # nothing written for a dataset that does not exist

    write_nnunet_dataset(nnunet_env.raw, 555, "Dry", {"CT": 3, "MR": 3}, shape=(8, 8, 8))
    bad_arm = _run_compare("-d", "555", "--arms", "cin", "vit", ok=False)
    assert bad_arm.returncode == 2 and "unknown arm(s) ['vit']" in bad_arm.stderr
    bad_ref = _run_compare("-d", "555", "--arms", "cin", "joint", "--reference", "single", "--dry-run", ok=False)
    assert bad_ref.returncode == 2 and "--reference single: not an arm of this comparison" in bad_ref.stderr
    same_plans = _run_compare("-d", "555", "--arms", "cin_zscore", "-p", "nnUNetPlans", "--dry-run", ok=False)
    assert same_plans.returncode == 2 and "are the same plans" in same_plans.stderr

    out = _run_compare("-d", "555", "-f", "0", "1", "--schedule", "_5epochs", "--dry-run", "-device", "cpu",
                       "--arms", "finetune", "nnunet", "cin", "--arm", "mine=nnUNetTrainerCIN_1epoch",
                       "--seeds", "3", "4").stdout
    assert "nnUNetv2_plan_and_preprocess_cin -d 555 -c 3d_fullres" in out
    assert "nnUNetv2_plan_and_preprocess -d 555 -c 3d_fullres" in out  # the plain plans, for the nnunet arm
    assert "split: would write" in out
    for seed in (3, 4):
        for fold in (0, 1):
            assert (f"nnUNetv2_train Dataset555_Dry 3d_fullres {fold} -tr nnUNetTrainerSingleModality_MR_5epochs -p "
                    f"nnUNetPlansCIN -device cpu -pretrained_weights {nnunet_env.results}/seed_{seed}/Dataset555_Dry/"
                    f"nnUNetTrainerSingleModality_CT_5epochs__nnUNetPlansCIN__3d_fullres/fold_{fold}/"
                    f"checkpoint_final.pth") in out
            assert f"[cin seed {seed} fold {fold}] training: nnUNetv2_train Dataset555_Dry 3d_fullres {fold} -tr " \
                   f"nnUNetTrainerCIN_5epochs -p nnUNetPlansCIN " in out
            assert f"[nnunet seed {seed} fold {fold}] training: nnUNetv2_train Dataset555_Dry 3d_fullres {fold} -tr " \
                   f"nnUNetTrainer_5epochs -p nnUNetPlans " in out
            assert f"-tr nnUNetTrainerCIN_1epoch -p nnUNetPlansCIN" in out
    assert not (nnunet_env.preprocessed / "Dataset555_Dry").exists()  # nothing planned, nothing trained
    assert not (nnunet_env.results / "seed_3").exists()


def test_every_arm_names_a_trainer_nnunet_finds(nnunet_env):
    """The trainer of every arm (plain nnU-Net's and the transformer arms included, with a schedule) is what nnU-Net's
    lookup finds; an unknown one stops the comparison before anything runs, naming it."""
    plan = plan_arms(["CT", "MR"], list(METHODS), schedule="_1epoch")
    names = sorted({a.trainer for a in plan.arms.values()})
    assert {"nnUNetTrainerCINAlternate_1epoch", "nnUNetTrainerCINAllNorms_1epoch", "nnUNetTrainer_1epoch"} <= set(names)
    # one lookup (a subprocess, ~10 s of imports): only the unknown name is refused, so every arm's trainer was found
    with pytest.raises(RuntimeError) as refused:
        check_trainers([*names, "nnUNetTrainerNoSuchThing"], dict(os.environ))
    listed = str(refused.value).split("\n", 1)[1]
    assert listed.startswith("nnUNetTrainerNoSuchThing: ") and len(listed.strip().splitlines()) == 1, listed
