"""The `nnunet-cin compare` command: arguments, and the whole comparison from preparation to report."""
import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from nnunet_cin.experiments.compare.arms import (COMPARISON_PLANS, DEFAULT_ARMS, METHODS, PLAIN_PLANS,
                                                 ComparisonPlan, check_methods, parse_normalization_arm, parse_pairs,
                                                 plan_arms, plan_runs, reference_row, trainer_name)
from nnunet_cin.experiments.compare.cases import MEAN, WHOLE_HEART, CaseTable
from nnunet_cin.experiments.compare.prepare import (CIN_PLANS, NNUNET_PLANS, Split, check_trainers,
                                                    comparison_environment, default_device, ensure_plans,
                                                    ensure_raw_dataset, ensure_split, load_dataset_json, log)
from nnunet_cin.experiments.compare.reporting import (Statistics, bar_plot, markdown, paired_plot, write_cases_csv,
                                                      write_csv)
from nnunet_cin.experiments.compare.running import SEED_VARIABLE, Setup, train_and_evaluate


def output_folder_for(args, env: Mapping[str, str], name: str) -> Path:
    if args.o:
        return Path(args.o).resolve()
    tag = args.schedule or ("" if args.trainer_template is None else
                            "_" + re.sub(r"[^A-Za-z0-9_]+", "", args.trainer_template.replace("{trainer}", "")))
    return Path(env["nnUNet_results"]) / name / f"comparison{tag}__{args.p}__{args.c}"


def model_lines(plan: ComparisonPlan, setup: Setup) -> List[str]:
    """Markdown bullet list: which trainer on which plans (and model folder) fills each row."""
    lines = []
    for row in plan.rows:
        parts = []
        for arm_name in dict.fromkeys(row.cells.values()):
            arm = plan.arms[arm_name]
            served = [m for m, a in row.cells.items() if a == arm_name]
            text = f"`-tr {arm.trainer} -p {setup.plans_of(arm)}`" + (
                f" from `{plan.arms[arm.pretrained_from].trainer}`'s checkpoint" if arm.pretrained_from else "")
            if arm.results_subfolder:
                text += f" (in `<results root>/{arm.results_subfolder}`)"
            parts.append((f"{', '.join(served)}: " if len(set(row.cells.values())) > 1 else "") + text)
        lines.append(f"- {row.label}: " + "; ".join(parts))
    return lines


def plans_description(plans: str, plain: bool) -> str:
    known = {CIN_PLANS: "nnUNetv2_plan_and_preprocess_cin, per-modality normalization",
             NNUNET_PLANS: "nnU-Net's nnUNetv2_plan_and_preprocess, one z-score for every image"}
    return f"`{plans}`" + (f" ({known[plans]})" if plans in known else
                           " (nnU-Net's plain plans)" if plain else "")


def report_notes(args, plan: ComparisonPlan, setup: Setup, split: Optional[Split], folds: Sequence,
                 seeds: Sequence[Optional[int]], table: CaseTable) -> List[str]:
    schedule = args.trainer_template or (args.schedule or "nnU-Net's default schedule")
    used_plans = {a.plans for a in plan.arms.values()}
    plans = [plans_description(setup.plans, False)] + (
        [plans_description(setup.plain_plans, True)] if PLAIN_PLANS in used_plans else [])
    n_cases = {m: len(table.per_case(plan.rows[0].key, m, MEAN)) for m in plan.modalities}
    if seeds == [None]:
        seeded = ("one unseeded run per model and fold" + (
            f" ({SEED_VARIABLE}={os.environ[SEED_VARIABLE]} from the environment)" if os.environ.get(SEED_VARIABLE)
            else ""))
    else:
        seeded = (f"seeds {', '.join(map(str, seeds))}: every model trained once per seed and fold ({SEED_VARIABLE}"
                  f"=seed; each seed's models under `$nnUNet_results/seed_<seed>`)")
        if "nnunet" in plan.arms:
            seeded += ("; nnU-Net's own nnUNetTrainer ignores the seed, so its replicates are independent runs "
                       "but not reproducible")
    notes = [f"Plans {' and '.join(plans)}, trainer schedule `{schedule}`, folds {', '.join(map(str, folds))}, "
             f"{seeded}, device {setup.device}. Dice on each fold's validation cases (nnU-Net's final-validation "
             f"predictions, " + ", ".join(f"{n_cases[m]} {m}" for m in plan.modalities) + " validation cases in all). "
             f"`{MEAN}`: mean Dice of the structures per case; `{WHOLE_HEART}`: Dice of the union of all foreground "
             f"labels (whole heart). Best mean per column in bold."]
    if split is not None:
        per_fold = "; ".join(f"fold {f}: " + ", ".join(f"{len(v)} {m}" for m, v in split.validation[f].items())
                             for f in folds if f in split.validation)
        notes += ["", f"Split: every arm trained with `{split.file}` (" +
                  ("written by this comparison before any training: 5 folds stratified by modality, the split "
                   "nnUNetTrainerCIN makes" if split.written else "found there and used as it is") +
                  f"); validation cases {per_fold}."]
    notes += ["", "Models (`nnUNetv2_train DATASET CONFIGURATION FOLD ...`):", "", *model_lines(plan, setup)]
    return notes


def run_comparison(args) -> Path:
    """Everything: prepare, train what is missing, evaluate, write the tables, CSV and plots. Returns the Markdown
    file."""
    started = time.time()
    env = comparison_environment()
    # everything that can be checked is checked before anything is generated, planned or trained
    check_methods(list(args.arms or []))
    finetune_from, custom = parse_pairs(args.finetune_from, "--finetune-from"), parse_pairs(args.arm, "--arm")
    trainer_name("nnUNetTrainer", args.schedule, args.trainer_template)
    seeds: List[Optional[int]] = list(dict.fromkeys(args.seeds)) if args.seeds else [None]
    if any(s < 0 for s in seeds if s is not None):
        raise ValueError(f"--seeds: seeds must be non-negative integers, got {args.seeds}")
    name = ensure_raw_dataset(args.d, env, args.synthetic, args.shape, args.seed, args.synthetic_variant)
    dataset_json, dataset_json_file = load_dataset_json(name, env)
    from nnunet_cin.modalities import ModalityRules

    modalities = ModalityRules.from_dataset_json(dataset_json, source=str(dataset_json_file)).modalities
    normalizations = [parse_normalization_arm(spec) for spec in args.normalization or []]
    plan = plan_arms(modalities, list(args.arms or []), args.schedule, args.trainer_template, finetune_from, custom,
                     normalizations)
    reference = reference_row(plan, args.reference)
    uses_plain = any(a.plans == PLAIN_PLANS for a in plan.arms.values())
    if uses_plain and args.plain_plans == args.p:
        raise ValueError(f"-p {args.p} and --plain-plans {args.plain_plans} are the same plans: the z-score-for-all "
                         f"arms ({', '.join(k for k, m in METHODS.items() if m.plans == PLAIN_PLANS)}) would repeat "
                         f"the others; use -p {CIN_PLANS} or drop those arms")
    if not args.dry_run:
        check_trainers(sorted({a.trainer for a in plan.arms.values()}), env)
    output = output_folder_for(args, env, name)
    if not args.dry_run:
        output.mkdir(parents=True, exist_ok=True)
    for plans in [args.p] + ([args.plain_plans] if uses_plain else []):
        ensure_plans(env, name, plans, args.c, args.np, output / "logs", args.verbose, args.dry_run)
    for normalization in dict.fromkeys(a.normalization for a in plan.arms.values() if a.normalization):
        ensure_plans(env, name, args.p, args.c, args.np, output / "logs", args.verbose, args.dry_run, normalization)
    folds = [int(f) if str(f).isdigit() else f for f in args.f]
    split = ensure_split(env, name, args.p, args.c, folds, dataset_json, args.dry_run)
    device = args.device or default_device()
    if device == "cpu" and not env.get("OMP_NUM_THREADS"):
        # -j trainings side by side share the cores (our trainers follow OMP_NUM_THREADS on the CPU)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, args.jobs)))
    setup = Setup(name, args.c, args.p, Path(env["nnUNet_results"]), Path(env["nnUNet_preprocessed"]) / name, env,
                  device, output, args.verbose, args.np, plain_plans=args.plain_plans)
    runs = plan_runs(plan, folds, seeds)
    log(f"comparison on {name} ({', '.join(modalities)}), {args.c}, plans {args.p}"
        + (f" and {args.plain_plans}" if uses_plain else "") + f", folds {folds}, "
        + ("unseeded" if seeds == [None] else f"seeds {seeds}") + f", device {device}\n  models: "
        + ", ".join(f"{a.name} ({a.trainer} -p {setup.plans_of(a)})" for a in plan.arms.values())
        + f"\n  {len(runs)} training run(s); output: {output}")

    evaluations = train_and_evaluate(setup, plan, runs, dataset_json, split, args.jobs, args.dry_run)
    if args.dry_run:
        return output / "comparison.md"

    from nnunet_cin.evaluation.evaluate import label_names_of

    structures = list(label_names_of(dataset_json).values())
    table = CaseTable.from_evaluations([(r.key, r.cells) for r in plan.rows], evaluations.values(), structures)
    stats = Statistics(table, plan, reference)
    title = f"Cross-modality comparison: {name}, {args.c}"
    plans_names = {COMPARISON_PLANS: setup.plans, PLAIN_PLANS: setup.plain_plans}
    md = output / "comparison.md"
    md.write_text(markdown(stats, seeds, plans_names, title,
                           report_notes(args, plan, setup, split, folds, seeds, table)))
    write_csv(stats, output / "comparison.csv", seeds, folds)
    write_cases_csv(table, output / "cases.csv")
    written = [md, output / "comparison.csv", output / "cases.csv", output / "comparison.png"]
    bar_plot(stats, output / "comparison.png", title)
    if reference is not None:
        paired_plot(stats, output / "comparison_paired.png", title)
        written.append(output / "comparison_paired.png")
    log("\n" + md.read_text())
    log(f"written: {', '.join(map(str, written))} ({(time.time() - started) / 60:.1f} min)")
    return md


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("-d", required=True, help="dataset id or name (DatasetXXX_Name)")
    parser.add_argument("-c", default="3d_fullres", help="nnU-Net configuration (default: %(default)s)")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"],
                        help="folds (default: 0 1 2 3 4); every fold's validation cases enter the statistics")
    parser.add_argument("-p", default=CIN_PLANS, help="plans identifier of the comparison (default: %(default)s; "
                                                      "planned and preprocessed with nnUNetv2_plan_and_preprocess_cin "
                                                      "when missing)")
    parser.add_argument("--plain-plans", default=NNUNET_PLANS,
                        help="nnU-Net's plain plans, for the z-score-for-all arms (nnunet, joint_zscore, cin_zscore; "
                             "default: %(default)s, planned with nnU-Net's nnUNetv2_plan_and_preprocess when "
                             "missing)")
    schedule = parser.add_mutually_exclusive_group()
    schedule.add_argument("--schedule", default=None,
                          help="nnU-Net schedule suffix appended to every trainer, e.g. _5epochs, _50epochs "
                               "(default: none, nnU-Net's 1000 epochs)")
    schedule.add_argument("--trainer-template", default=None,
                          help="trainer name template, {trainer} being each arm's trainer (e.g. nnUNetTrainerCIN, "
                               "nnUNetTrainerSingleModality_CT), e.g. '{trainer}Short' for your own subclasses in a "
                               "folder on nnUNet_extTrainer")
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), metavar="ARM",
                        help=f"what to compare, from {list(METHODS)} (default: {' '.join(DEFAULT_ARMS)})")
    parser.add_argument("--arm", action="append", default=None, metavar="NAME=TRAINER",
                        help="an extra row: a trainer (full name) trained on all modalities; repeatable")
    parser.add_argument("--normalization", action="append", default=None, metavar="MODALITY=SCHEME[,...]",
                        help="an extra row per use: nnUNetTrainerCIN on the comparison's plans made with this "
                             "normalization (e.g. CT=CT for nnU-Net's CT normalization, CT=zscore, CT=CTClipZScore; "
                             "planned under -p's name + _CT-zscore etc.); repeatable, to settle the normalization on "
                             "your own data")
    parser.add_argument("--finetune-from", nargs="+", default=None, metavar="TARGET=SOURCE",
                        help="fine-tuning source per target modality, e.g. MR=CT (default: the other modality)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help=f"replicates: every model trained once per seed and fold ({SEED_VARIABLE}=SEED; models "
                             f"under $nnUNet_results/seed_SEED). Default: one unseeded run")
    parser.add_argument("--reference", default=None, metavar="ARM",
                        help="the arm every other one is compared with, case by case (default: joint when compared, "
                             "else the first)")
    parser.add_argument("-device", "--device", default=None, choices=("cpu", "cuda", "mps"),
                        help="default: cuda when available, else cpu")
    parser.add_argument("-o", default=None, help="output folder for the tables, CSV, plots, evaluations and logs "
                                                 "(default: $nnUNet_results/<dataset>/comparison<schedule>__<plans>__"
                                                 "<configuration>)")
    parser.add_argument("-np", type=int, default=1, help="processes for planning/preprocessing and evaluation "
                                                         "(default: %(default)s)")
    parser.add_argument("--synthetic", type=int, default=None, metavar="N",
                        help="if the dataset does not exist: generate the built-in synthetic CT+MR hearts with N "
                             "training cases per modality under this (numeric) id")
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 32, 32], help="--synthetic volume shape")
    parser.add_argument("--seed", type=int, default=0, help="--synthetic seed (of the data, not of the training)")
    parser.add_argument("--synthetic-variant", default="basic", choices=("basic", "realistic", "thorax"),
                        help="--synthetic generator variant (default: %(default)s; realistic: one physical heart size "
                             "for CT and MR, per-case contrast, noise and anatomy; thorax: that heart inside a chest with "
                             "fat, lungs, chest wall and spine; see the synthetic data documentation)")
    parser.add_argument("-j", "--jobs", type=int, default=1,
                        help="models trained at the same time (default: %(default)s); e.g. several small models on "
                             "one big GPU")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the nnU-Net commands, train nothing (a --synthetic dataset is still generated)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show nnU-Net's output (always in logs/)")


def run(args) -> int:
    try:
        run_comparison(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"nnunet-cin compare: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[Sequence[str]] = None, description: Optional[str] = None) -> int:
    parser = argparse.ArgumentParser(prog="nnunet-cin compare", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
