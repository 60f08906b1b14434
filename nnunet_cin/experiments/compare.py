"""`nnunet-cin compare`: the paper's comparison on any conditioned dataset, with nnU-Net's own commands.

For one dataset, configuration, plans, schedule and set of folds it trains (`nnUNetv2_train`, one subprocess per
model and fold):

    single           nnUNetTrainerSingleModality_<M>, one model per modality M (its cases only)
    finetune         nnUNetTrainerSingleModality_<B> started from the single-modality model of another modality A
                     (`-pretrained_weights <A's fold_X/checkpoint_final.pth>`); written under
                     $nnUNet_results/finetuned_from_<A>/ so it does not overwrite B's own single-modality model
    joint            nnUNetTrainerJoint: all modalities, mixed batches, no conditioning
    joint_alternate  nnUNetTrainerJointAlternate: all modalities, one modality per batch in turn, no conditioning
    cin              nnUNetTrainerCIN: all modalities, mixed batches, CIN in the encoder (the method)
    vit_joint, cvit  nnUNetTrainerViTJoint / nnUNetTrainerCViT (UNETR, LayerNorm vs CIN), opt-in
    swin_joint, cswin  nnUNetTrainerSwinUNETRJoint / nnUNetTrainerCSwinUNETR, opt-in
    NAME=TRAINER     (--arm) any other trainer that serves every modality

then evaluates each fold's validation cases. The predictions are nnU-Net's final-validation outputs
(`fold_X/validation/*`, written by `nnUNetv2_train` at the end of training with the same sliding-window predictor
`nnUNetv2_predict_cin` uses, each case conditioned on its own modality): exactly the fold's validation cases, and
nothing is predicted twice. Metrics are nnU-Net's (`compute_metrics`) against `nnUNet_preprocessed/<dataset>/
gt_segmentations`, grouped per modality with `nnunet_cin.evaluation.evaluate.summarize_by_modality`.

Every number in the table is a mean +- standard deviation over folds of the fold's value; a fold's value is the mean
Dice over that fold's validation cases of the modality. Columns: each structure, "mean" (mean of the structures'
Dice, nnU-Net's foreground mean) and "WH" (whole heart: Dice of the union of all foreground labels, the MM-WHS
challenge's whole-heart score). Outputs in the output folder: comparison.md, comparison.csv, comparison.png,
evaluations/<arm>__fold_<f>.json (per-case metrics) and logs/<arm>__fold_<f>.log (nnU-Net's output).

Resumable: a model whose fold has checkpoint_final.pth and validation/summary.json is not trained again, an
interrupted one continues (`--c`; `--val` when only the final validation is missing), an evaluation already on disk
is reused. Run the same command again after an interruption.
"""
import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

WHOLE_HEART = "WH"
MEAN = "mean"  # nnunet_cin.evaluation.evaluate.MEAN_ROW
DEFAULT_ARMS = ("single", "finetune", "joint", "joint_alternate", "cin")


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    trainer: Optional[str] = None  # base trainer name (before the schedule/template); None: per-modality arms


# Table rows, in table order. single/finetune have one model per modality (see plan_arms).
METHODS = {m.key: m for m in (
    Method("single", "single-modality"),
    Method("finetune", "fine-tuned from other modality"),
    Method("joint", "joint (mixed batches)", "nnUNetTrainerJoint"),
    Method("joint_alternate", "joint (alternating batches)", "nnUNetTrainerJointAlternate"),
    Method("cin", "conditional (CIN)", "nnUNetTrainerCIN"),
    Method("vit_joint", "ViT-UNETR (LayerNorm)", "nnUNetTrainerViTJoint"),
    Method("cvit", "C-ViT-UNETR (CIN)", "nnUNetTrainerCViT"),
    Method("swin_joint", "Swin-UNETR (LayerNorm)", "nnUNetTrainerSwinUNETRJoint"),
    Method("cswin", "C-Swin-UNETR (CIN)", "nnUNetTrainerCSwinUNETR"),
)}


@dataclass
class Arm:
    """One model (one trainer, one results folder), trained once per fold."""
    name: str
    trainer: str
    modalities: List[str]  # the modalities whose validation cases fill the table from this model
    pretrained_from: Optional[str] = None  # name of the arm whose checkpoint_final.pth starts this one
    results_subfolder: Optional[str] = None  # below nnUNet_results (fine-tuned models), else nnUNet_results itself


@dataclass
class ComparisonPlan:
    arms: Dict[str, Arm]  # in training order (sources before the arms fine-tuned from them)
    rows: List[Tuple[str, str, Dict[str, str]]]  # (method key, label, {modality: arm name})
    modalities: List[str]


# ---------------------------------------------------------------------------------------------------------------------
# what to train


def trainer_name(base: str, schedule: Optional[str] = None, template: Optional[str] = None) -> str:
    """The trainer to run for a base name: `template.format(trainer=base)` (e.g. "{trainer}_5epochs",
    "{trainer}Tiny") or base + schedule (e.g. "_5epochs")."""
    if template is not None:
        if "{trainer}" not in template:
            raise ValueError(f"trainer template {template!r} must contain {{trainer}} (the arm's trainer name, e.g. "
                             f"nnUNetTrainerCIN), e.g. '{{trainer}}_5epochs'")
        return template.format(trainer=base)
    return base + (schedule or "")


def parse_pairs(items: Optional[Sequence[str]], what: str) -> Dict[str, str]:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def plan_arms(modalities: Sequence[str], methods: Sequence[str] = DEFAULT_ARMS, schedule: Optional[str] = None,
              template: Optional[str] = None, finetune_from: Optional[Mapping[str, str]] = None,
              custom: Optional[Mapping[str, str]] = None) -> ComparisonPlan:
    """The models to train and which model fills which table cell.

    methods: keys of METHODS, in any order (the table keeps METHODS' order, custom arms last).
    finetune_from: {target modality: source modality}; default for each target: the first other modality of the
        dataset (with two modalities: the other one).
    custom: {row name: full trainer name} for trainers serving every modality (schedule/template not applied).
    """
    modalities = list(modalities)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; valid: {list(METHODS)} (or --arm NAME=TRAINER)")
    finetune_from = dict(finetune_from or {})
    for target, source in finetune_from.items():
        for name in (target, source):
            if name not in modalities:
                raise ValueError(f"--finetune-from {target}={source}: {name!r} is not a modality of the dataset "
                                 f"{modalities}")
        if target == source:
            raise ValueError(f"--finetune-from {target}={source}: source and target must differ")
    if "finetune" in methods and len(modalities) < 2:
        raise ValueError(f"fine-tuning from another modality needs two modalities; the dataset has {modalities}")
    name = lambda base: trainer_name(base, schedule, template)
    arms: Dict[str, Arm] = {}
    rows = []

    def single(m):
        key = f"single_{m}"
        if key not in arms:
            arms[key] = Arm(key, name(f"nnUNetTrainerSingleModality_{m}"), [m])
        return key

    for key, method in METHODS.items():
        if key not in methods:
            continue
        if key == "single":
            rows.append((key, method.label, {m: single(m) for m in modalities}))
        elif key == "finetune":
            cells = {}
            for target in modalities:
                source = finetune_from.get(target) or next(m for m in modalities if m != target)
                src = single(source)
                arm = f"finetune_{target}_from_{source}"
                arms[arm] = Arm(arm, name(f"nnUNetTrainerSingleModality_{target}"), [target], pretrained_from=src,
                                results_subfolder=f"finetuned_from_{source}")
                cells[target] = arm
            rows.append((key, method.label, cells))
        else:
            arms[key] = Arm(key, name(method.trainer), modalities)
            rows.append((key, method.label, {m: key for m in modalities}))
    for label, trainer in (custom or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", label) or label in arms:
            raise ValueError(f"--arm {label}={trainer}: the name must be unique and use letters, digits, _ . - only")
        arms[label] = Arm(label, trainer, modalities)
        rows.append((label, label, {m: label for m in modalities}))
    if not rows:
        raise ValueError("nothing to compare: give --arms and/or --arm NAME=TRAINER")
    # sources first: single-modality models, then everything else in table order
    order = [a for a in arms if arms[a].pretrained_from is None] + [a for a in arms if arms[a].pretrained_from]
    return ComparisonPlan({a: arms[a] for a in order}, rows, modalities)


# ---------------------------------------------------------------------------------------------------------------------
# nnU-Net folders and commands


@dataclass
class Setup:
    dataset: str  # DatasetXXX_Name
    configuration: str
    plans: str
    results: Path  # nnUNet_results
    preprocessed: Path  # nnUNet_preprocessed/DatasetXXX_Name
    env: dict
    device: str
    output: Path
    verbose: bool = False
    num_processes: int = 1
    extra_train_args: List[str] = field(default_factory=list)

    def model_folder(self, arm: Arm) -> Path:
        root = self.results / arm.results_subfolder if arm.results_subfolder else self.results
        return root / self.dataset / f"{arm.trainer}__{self.plans}__{self.configuration}"

    def fold_folder(self, arm: Arm, fold) -> Path:
        return self.model_folder(arm) / f"fold_{fold}"

    def arm_env(self, arm: Arm) -> dict:
        env = dict(self.env)
        if arm.results_subfolder:
            env["nnUNet_results"] = str(self.results / arm.results_subfolder)
        return env


def training_state(fold_folder: Path) -> str:
    """'done' (final checkpoint and final validation), 'validate' (final checkpoint, validation missing),
    'continue' (an interrupted training) or 'new'."""
    final = (fold_folder / "checkpoint_final.pth").is_file()
    if final and (fold_folder / "validation" / "summary.json").is_file():
        return "done"
    if final:
        return "validate"
    if any((fold_folder / f).is_file() for f in ("checkpoint_latest.pth", "checkpoint_best.pth")):
        return "continue"
    return "new"


def train_command(setup: Setup, plan: ComparisonPlan, arm: Arm, fold, state: str) -> List[str]:
    command = ["nnUNetv2_train", setup.dataset, setup.configuration, str(fold), "-tr", arm.trainer, "-p",
               setup.plans, "-device", setup.device, *setup.extra_train_args]
    if state == "validate":
        command.append("--val")
    elif state == "continue":
        command.append("--c")  # nnU-Net refuses -pretrained_weights with --c: the checkpoint has them already
    elif arm.pretrained_from is not None:
        source = setup.fold_folder(plan.arms[arm.pretrained_from], fold) / "checkpoint_final.pth"
        command += ["-pretrained_weights", str(source)]
    return command


def _log(text: str):
    print(text, flush=True)


def _run_logged(command: List[str], env: dict, log_file: Path, verbose: bool) -> float:
    """Run `command`, its output appended to log_file (and shown with verbose). Raises with the log's tail."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log_file, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   bufsize=1)
        for line in process.stdout:
            log.write(line)
            if verbose:
                sys.stdout.write(line)
        code = process.wait()
    if code != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-25:])
        raise RuntimeError(f"command failed (exit {code}): {' '.join(command)}\n--- last lines of {log_file} ---\n"
                           f"{tail}")
    return time.time() - start


def train_arm_fold(setup: Setup, plan: ComparisonPlan, arm: Arm, fold, dry_run: bool = False) -> str:
    """Train (or continue, or validate) one model on one fold unless done. Returns the state found."""
    folder = setup.fold_folder(arm, fold)
    state = training_state(folder)
    if state == "done":
        _log(f"  [{arm.name} fold {fold}] skipped: already trained ({folder / 'checkpoint_final.pth'})")
        return state
    if arm.pretrained_from is not None and state == "new" and not dry_run:
        source = setup.fold_folder(plan.arms[arm.pretrained_from], fold) / "checkpoint_final.pth"
        if not source.is_file():
            raise FileNotFoundError(f"{arm.name} fold {fold}: the model to fine-tune from is missing: {source} "
                                    f"(train arm {arm.pretrained_from} first)")
    command = train_command(setup, plan, arm, fold, state)
    what = {"new": "training", "continue": "continuing the interrupted training (--c)",
            "validate": "running the missing final validation (--val)"}[state]
    _log(f"  [{arm.name} fold {fold}] {what}: {' '.join(command)}")
    if dry_run:
        return state
    log_file = setup.output / "logs" / f"{arm.name}__fold_{fold}.log"
    seconds = _run_logged(command, setup.arm_env(arm), log_file, setup.verbose)
    _log(f"  [{arm.name} fold {fold}] finished in {seconds:.0f} s (log: {log_file})")
    return state


# ---------------------------------------------------------------------------------------------------------------------
# evaluation


def whole_heart_region(dataset_json: dict) -> Tuple[int, ...]:
    """All foreground label values (the union is the whole heart)."""
    values = set()
    for name, v in dataset_json["labels"].items():
        if name == "ignore":
            continue
        values.update(int(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    values.discard(0)
    if not values:
        raise ValueError("dataset.json has no foreground labels")
    return tuple(sorted(values))


def evaluate_predictions(reference_folder: Path, prediction_folder: Path, dataset_json: dict,
                         modalities: Sequence[str], num_processes: int = 1) -> dict:
    """nnU-Net's metrics of every prediction in `prediction_folder`, per modality and structure, plus the whole
    heart. Returns {"structures": [...], "per_modality": {m: {structure|mean|WH: Dice}}, "num_cases": {m: n},
    "cases": [...per-case Dice...]} (modalities without a case in the folder are left out)."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics, label_or_region_to_key
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from nnunet_cin.evaluation.evaluate import case_id_of, case_modalities, label_names_of, summarize_by_modality

    file_ending = dataset_json["file_ending"]
    predictions = sorted(p.name for p in Path(prediction_folder).iterdir() if p.name.endswith(file_ending))
    if not predictions:
        raise FileNotFoundError(f"no predictions ending in {file_ending} in {prediction_folder}")
    missing = [p for p in predictions if not (Path(reference_folder) / p).is_file()]
    if missing:
        raise FileNotFoundError(f"{prediction_folder}: no reference segmentation in {reference_folder} for "
                                f"{', '.join(missing)}")
    modality_of = case_modalities([case_id_of(p, file_ending) for p in predictions], dataset_json)
    lm = LabelManager(dataset_json["labels"], regions_class_order=dataset_json.get("regions_class_order"))
    labels = [tuple(int(v) for v in r) if isinstance(r, (list, tuple)) else int(r)
              for r in (lm.foreground_regions if lm.has_regions else lm.foreground_labels)]
    wh = whole_heart_region(dataset_json)
    rw = determine_reader_writer_from_dataset_json(dataset_json, str(Path(prediction_folder) / predictions[0]))()
    jobs = [(str(Path(reference_folder) / p), str(Path(prediction_folder) / p), rw, labels + [wh], lm.ignore_label)
            for p in predictions]
    if num_processes > 1 and len(jobs) > 1:
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            per_case = pool.starmap(compute_metrics, jobs)
    else:
        per_case = [compute_metrics(*job) for job in jobs]
    results = {"metric_per_case": per_case}
    present = [m for m in modalities if m in set(modality_of.values())]
    names = label_names_of(dataset_json)
    summary = summarize_by_modality(results, modality_of, file_ending, names, metrics=["Dice"], modalities=present)
    whole = summarize_by_modality(results, modality_of, file_ending, {label_or_region_to_key(wh): WHOLE_HEART},
                                  metrics=["Dice"], modalities=present)
    structures = list(names.values())
    out = {"structures": structures, "num_cases": summary["num_cases"], "per_modality": {}, "cases": []}
    for m in present:
        values = {s: summary["per_modality"][m][s]["Dice"] for s in structures}
        values[MEAN] = summary["per_modality"][m][MEAN]["Dice"]
        values[WHOLE_HEART] = whole["per_modality"][m][WHOLE_HEART]["Dice"]
        out["per_modality"][m] = values
    for case in per_case:
        cid = case_id_of(case["prediction_file"], file_ending)
        dice = {WHOLE_HEART if k is wh else names.get(label_or_region_to_key(k), label_or_region_to_key(k)):
                v["Dice"] for k, v in case["metrics"].items()}
        out["cases"].append({"case": cid, "modality": modality_of[cid], "Dice": dice})
    return _json_ready(out)


def _json_ready(obj):
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if hasattr(obj, "item"):  # numpy scalars
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def evaluate_arm_fold(setup: Setup, arm: Arm, fold, dataset_json: dict, modalities: Sequence[str]) -> dict:
    """The evaluation of one model's fold, computed once and kept in output/evaluations/."""
    validation = setup.fold_folder(arm, fold) / "validation"
    cache = setup.output / "evaluations" / f"{arm.name}__fold_{fold}.json"
    summary_file = validation / "summary.json"
    if cache.is_file() and summary_file.is_file() and cache.stat().st_mtime >= summary_file.stat().st_mtime:
        _log(f"  [{arm.name} fold {fold}] evaluation skipped: already in {cache}")
        return json.loads(cache.read_text())
    if not summary_file.is_file():
        raise FileNotFoundError(f"{arm.name} fold {fold}: no final validation in {validation} (nnUNetv2_train did "
                                f"not finish); run the comparison again to complete it")
    result = evaluate_predictions(setup.preprocessed / "gt_segmentations", validation, dataset_json,
                                  arm.modalities, setup.num_processes)
    result.update({"arm": arm.name, "trainer": arm.trainer, "fold": fold, "validation_folder": str(validation)})
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=1))
    cells = ", ".join(f"{m} WH {_fmt(v[WHOLE_HEART])}" for m, v in result["per_modality"].items())
    _log(f"  [{arm.name} fold {fold}] evaluated {sum(result['num_cases'].values())} validation case(s): {cells}")
    return result


def train_and_evaluate(setup: Setup, plan: ComparisonPlan, folds: Sequence, dataset_json: dict, jobs: int = 1,
                       dry_run: bool = False) -> Dict[Tuple[str, object], dict]:
    """Train what is missing and evaluate every (arm, fold); up to `jobs` trainings at once (a fine-tuning waits
    for its source). Returns {(arm name, fold): evaluation}. The first failure stops new work and is raised after
    the running ones end (a rerun resumes)."""
    from concurrent.futures import ThreadPoolExecutor

    tasks = [(arm, fold) for fold in folds for arm in plan.arms.values()]  # fold by fold, sources first
    done: Dict[Tuple[str, object], object] = {}
    failed = []

    def work(arm: Arm, fold):
        if arm.pretrained_from is not None:
            source = done[(arm.pretrained_from, fold)]
            source.result()  # raises if the source failed
        if failed:
            raise RuntimeError("skipped after an earlier failure")
        try:
            train_arm_fold(setup, plan, arm, fold, dry_run)
            return None if dry_run else evaluate_arm_fold(setup, arm, fold, dataset_json, plan.modalities)
        except BaseException as e:
            failed.append(e)
            raise

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        # sources are submitted before the arms that wait for them, so a waiting arm never blocks its source
        for arm, fold in tasks:
            done[(arm.name, fold)] = pool.submit(work, arm, fold)
    if failed:
        raise failed[0]
    return {key: future.result() for key, future in done.items()}


# ---------------------------------------------------------------------------------------------------------------------
# aggregation and reports


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def aggregate(plan: ComparisonPlan, evaluations: Mapping[Tuple[str, object], dict], folds: Sequence,
              structures: Sequence[str]) -> List[dict]:
    """One record per (row, modality, column): the fold values and their mean and std (sample std, ddof=1; None
    with a single fold). A fold whose validation has no case of the modality, or a NaN value (structure absent
    from reference and prediction), is left out of that cell's statistics.

    evaluations: {(arm name, fold): evaluate_predictions(...)-like dict}."""
    columns = list(structures) + [MEAN, WHOLE_HEART]
    records = []
    for key, label, cells in plan.rows:
        for m in plan.modalities:
            arm = cells.get(m)
            for column in columns:
                per_fold = {}
                for fold in folds:
                    ev = evaluations.get((arm, fold)) if arm else None
                    value = ev["per_modality"].get(m, {}).get(column) if ev else None
                    per_fold[str(fold)] = value
                values = [v for v in per_fold.values() if v is not None and not math.isnan(v)]
                n = len(values)
                mean = sum(values) / n if n else None
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
                records.append({"method": key, "label": label, "arm": arm, "modality": m, "column": column,
                                "mean": mean, "std": std, "n_folds": n, "per_fold": per_fold})
    return records


def _cell(record: dict, digits: int = 3) -> str:
    if record["mean"] is None:
        return "–"
    text = _fmt(record["mean"], digits)
    return text + (f" ± {_fmt(record['std'], digits)}" if record["std"] is not None else "")


def markdown_table(records: Sequence[dict], plan: ComparisonPlan, structures: Sequence[str], title: str = "",
                   notes: Sequence[str] = (), digits: int = 3) -> str:
    """A summary table (mean and whole heart per modality), then one table per modality (rows: methods, columns:
    structures, mean, WH). The best mean of each column is in bold."""
    columns = list(structures) + [MEAN, WHOLE_HEART]
    rows = [(key, label) for key, label, _ in plan.rows]
    by = {(r["method"], r["modality"], r["column"]): r for r in records}

    def table(header_cells, row_cells):
        best = {}
        for j in range(len(header_cells)):
            means = [round(recs[j]["mean"], digits) for _, recs in row_cells if recs[j]["mean"] is not None]
            best[j] = max(means) if len(set(means)) > 1 else None  # nothing in bold when all are equal
        lines = ["| method | " + " | ".join(header_cells) + " |",
                 "|---|" + "---:|" * len(header_cells)]
        for label, recs in row_cells:
            cells = []
            for j, rec in enumerate(recs):
                text = _cell(rec, digits)
                cells.append(f"**{text}**" if best[j] is not None and rec["mean"] is not None and
                             round(rec["mean"], digits) == round(best[j], digits) else text)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    out = [*([f"# {title}", ""] if title else []), *notes, "",
           "## Summary: mean Dice over structures, and whole heart (WH), per modality", ""]
    header = [f"{m} {c}" for m in plan.modalities for c in (MEAN, WHOLE_HEART)]
    out.append(table(header, [(label, [by[(key, m, c)] for m in plan.modalities for c in (MEAN, WHOLE_HEART)])
                              for key, label in rows]))
    for m in plan.modalities:
        out += ["", f"## {m}", ""]
        out.append(table(columns, [(label, [by[(key, m, c)] for c in columns]) for key, label in rows]))
    return "\n".join(line for line in out).lstrip("\n") + "\n"


def write_csv(records: Sequence[dict], filename: Path, folds: Sequence):
    """Long format: method, label, arm, modality, structure, mean, std, n_folds, then one column per fold."""
    with open(filename, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "label", "arm", "modality", "structure", "mean", "std", "n_folds",
                         *[f"fold_{fold}" for fold in folds]])
        for r in records:
            writer.writerow([r["method"], r["label"], r["arm"] or "", r["modality"], r["column"],
                             "" if r["mean"] is None else f"{r['mean']:.6f}",
                             "" if r["std"] is None else f"{r['std']:.6f}", r["n_folds"],
                             *["" if r["per_fold"][str(fold)] is None else f"{r['per_fold'][str(fold)]:.6f}"
                               for fold in folds]])


def bar_plot(records: Sequence[dict], plan: ComparisonPlan, structures: Sequence[str], filename: Path,
             title: str = ""):
    """One panel per modality: structures, mean and WH along x, one bar per method (error bars: std over folds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = list(structures) + [MEAN, WHOLE_HEART]
    by = {(r["method"], r["modality"], r["column"]): r for r in records}
    n_rows = len(plan.rows)
    width = 0.8 / max(n_rows, 1)
    fig, axes = plt.subplots(len(plan.modalities), 1, figsize=(max(8, 1.1 * len(columns) * (0.6 + 0.12 * n_rows)),
                                                               3.4 * len(plan.modalities)), squeeze=False)
    x = np.arange(len(columns))
    for ax, m in zip(axes[:, 0], plan.modalities):
        for i, (key, label, _) in enumerate(plan.rows):
            recs = [by[(key, m, c)] for c in columns]
            means = [np.nan if r["mean"] is None else r["mean"] for r in recs]
            errs = [0 if r["std"] is None else r["std"] for r in recs]
            ax.bar(x - 0.4 + width * (i + 0.5), means, width, label=label,
                   **({"yerr": errs, "capsize": 2} if any(r["std"] is not None for r in recs) else {}))
        ax.set_xticks(x)
        ax.set_xticklabels(columns)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"Dice ({m})")
        ax.grid(axis="y", alpha=0.3)
        ax.axvline(len(structures) - 0.5, color="gray", lw=0.8)
    axes[0, 0].legend(fontsize=8, ncol=min(n_rows, 3), loc="lower left", bbox_to_anchor=(0, 1.02))
    if title:
        fig.suptitle(title, fontsize=10, y=1.0)
    fig.tight_layout()
    fig.savefig(filename, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------------
# the whole comparison


def comparison_environment() -> dict:
    """os.environ plus our trainers on nnUNet_extTrainer (after the user's own folders) and nnU-Net's folders
    checked."""
    from nnunet_cin.environment import with_our_trainers

    env = with_our_trainers(os.environ)
    missing = [n for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results") if not env.get(n)]
    if missing:
        raise RuntimeError(f"set {', '.join(missing)} as for nnU-Net (or: eval \"$(nnunet-cin env --root DIR)\")")
    return env


def dataset_name(dataset: str, env: Mapping[str, str]) -> Optional[str]:
    """DatasetXXX_Name for an id or name, looked up in nnUNet_preprocessed and nnUNet_raw; None if absent."""
    if re.fullmatch(r"Dataset\d{3}_.+", dataset):
        return dataset
    if not dataset.isdigit():
        raise ValueError(f"-d {dataset}: expected a dataset id (e.g. 999) or a name like Dataset999_SyntheticHeart")
    prefix = f"Dataset{int(dataset):03d}_"
    found = set()
    for root in (env["nnUNet_preprocessed"], env["nnUNet_raw"]):
        if Path(root).is_dir():
            found.update(p.name for p in Path(root).iterdir() if p.name.startswith(prefix) and p.is_dir())
    if len(found) > 1:
        raise ValueError(f"-d {dataset}: several datasets have this id: {sorted(found)}; pass the full name")
    return found.pop() if found else None


def check_trainers(names: Sequence[str], env: Mapping[str, str]):
    """Every trainer must be found by nnU-Net (before hours of training start). Looked up in a subprocess with the
    comparison's environment, exactly as nnUNetv2_train will."""
    code = ("import sys, io, contextlib\n"
            "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name\n"
            "bad = []\n"
            "for n in sys.argv[1:]:\n"
            "    try:\n"
            "        with contextlib.redirect_stdout(io.StringIO()): recursive_find_trainer_class_by_name(n)\n"
            "    except Exception as e: bad.append(n + ': ' + str(e).splitlines()[0][:300])\n"
            "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n")
    result = subprocess.run([sys.executable, "-c", code, *names], env=dict(env), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nnU-Net cannot use these trainers (nnUNet_extTrainer="
                           f"{env.get('nnUNet_extTrainer', '')}):\n{result.stdout.strip() or result.stderr[-2000:]}")


def ensure_raw_dataset(args, env: dict) -> str:
    """The dataset's name; generates the built-in synthetic dataset (--synthetic) when the dataset is missing."""
    name = dataset_name(str(args.d), env)
    if name is None or not (Path(env["nnUNet_raw"]) / name / "dataset.json").is_file() and \
            not (Path(env["nnUNet_preprocessed"]) / name / "dataset.json").is_file():
        if not args.synthetic:
            raise FileNotFoundError(f"dataset {args.d} is in neither nnUNet_raw ({env['nnUNet_raw']}) nor "
                                    f"nnUNet_preprocessed ({env['nnUNet_preprocessed']}); convert it first, or use "
                                    f"--synthetic N to generate the built-in synthetic two-modality hearts")
        if not str(args.d).isdigit():
            raise ValueError("--synthetic needs a numeric -d (the new dataset's id)")
        from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset

        _log(f"generating the synthetic dataset: {args.synthetic} training cases per modality (CT, MR), shape "
             f"{tuple(args.shape)}")
        name = write_nnunet_dataset(env["nnUNet_raw"], int(args.d), "SyntheticHeart",
                                    {"CT": args.synthetic, "MR": args.synthetic}, shape=tuple(args.shape),
                                    seed=args.seed).name
    return name


def ensure_preprocessed(args, env: dict, name: str, log_folder: Path):
    """Plans and preprocessed data: nnUNetv2_plan_and_preprocess_cin when plans nnUNetPlansCIN are missing."""
    plans_file = Path(env["nnUNet_preprocessed"]) / name / f"{args.p}.json"
    if plans_file.is_file():
        return
    if args.p != "nnUNetPlansCIN":
        raise FileNotFoundError(f"{plans_file} does not exist: plan and preprocess the dataset for plans {args.p} "
                                f"first")
    command = ["nnUNetv2_plan_and_preprocess_cin", "-d", name.split("_")[0][len("Dataset"):], "-c", args.c, "-np",
               str(args.np)]
    _log(f"planning and preprocessing: {' '.join(command)}")
    if not args.dry_run:
        plan_env = dict(env)
        if plan_env.get("nnUNet_n_proc_DA") == "0":
            plan_env["nnUNet_n_proc_DA"] = "1"  # nnU-Net's planner calls torch.set_num_threads(it), which rejects 0
        _run_logged(command, plan_env, log_folder / "plan_and_preprocess.log", args.verbose)


def output_folder_for(args, env: Mapping[str, str], name: str) -> Path:
    if args.o:
        return Path(args.o).resolve()
    tag = args.schedule or ("" if args.trainer_template is None else
                            "_" + re.sub(r"[^A-Za-z0-9_]+", "", args.trainer_template.replace("{trainer}", "")))
    return Path(env["nnUNet_results"]) / name / f"comparison{tag}__{args.p}__{args.c}"


def model_lines(plan: ComparisonPlan) -> List[str]:
    """Markdown bullet list: which trainer (and model folder) fills each row."""
    lines = []
    for _, label, cells in plan.rows:
        parts = []
        for arm_name in dict.fromkeys(cells.values()):
            arm = plan.arms[arm_name]
            served = [m for m, a in cells.items() if a == arm_name]
            text = f"`{arm.trainer}`" + (f" from `{plan.arms[arm.pretrained_from].trainer}`'s checkpoint"
                                         if arm.pretrained_from else "")
            if arm.results_subfolder:
                text += f" (in `$nnUNet_results/{arm.results_subfolder}`)"
            parts.append((f"{', '.join(served)}: " if len(set(cells.values())) > 1 else "") + text)
        lines.append(f"- {label}: " + "; ".join(parts))
    return lines


def run_comparison(args) -> Path:
    """Everything: train what is missing, evaluate, write the table, CSV and plot. Returns the Markdown file."""
    started = time.time()
    env = comparison_environment()
    # everything that can be checked is checked before anything is generated, planned or trained
    unknown = [m for m in args.arms or [] if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; valid: {list(METHODS)} (or --arm NAME=TRAINER)")
    finetune_from, custom = parse_pairs(args.finetune_from, "--finetune-from"), parse_pairs(args.arm, "--arm")
    trainer_name("nnUNetTrainer", args.schedule, args.trainer_template)
    name = ensure_raw_dataset(args, env)
    dataset_json_file = Path(env["nnUNet_preprocessed"]) / name / "dataset.json"
    if not dataset_json_file.is_file():
        dataset_json_file = Path(env["nnUNet_raw"]) / name / "dataset.json"
    dataset_json = json.loads(dataset_json_file.read_text())
    from nnunet_cin.modalities import ModalityRules

    modalities = ModalityRules.from_dataset_json(dataset_json, source=str(dataset_json_file)).modalities
    plan = plan_arms(modalities, list(args.arms or []), args.schedule, args.trainer_template, finetune_from, custom)
    if not args.dry_run:
        check_trainers(sorted({a.trainer for a in plan.arms.values()}), env)
    args.output_folder = output_folder_for(args, env, name)
    if not args.dry_run:
        args.output_folder.mkdir(parents=True, exist_ok=True)
    ensure_preprocessed(args, env, name, args.output_folder / "logs")
    device = args.device or _default_device()
    folds = [int(f) if str(f).isdigit() else f for f in args.f]
    setup = Setup(name, args.c, args.p, Path(env["nnUNet_results"]), Path(env["nnUNet_preprocessed"]) / name, env,
                  device, args.output_folder, args.verbose, args.np)
    _log(f"comparison on {name} ({', '.join(modalities)}), {args.c}, plans {args.p}, folds {folds}, device "
         f"{device}\n  models: " + ", ".join(f"{a.name} ({a.trainer})" for a in plan.arms.values()) +
         f"\n  output: {args.output_folder}")

    evaluations = train_and_evaluate(setup, plan, folds, dataset_json, args.jobs, args.dry_run)
    if args.dry_run:
        return args.output_folder / "comparison.md"

    from nnunet_cin.evaluation.evaluate import label_names_of

    structures = list(label_names_of(dataset_json).values())
    records = aggregate(plan, evaluations, folds, structures)
    schedule = args.trainer_template or (args.schedule or "nnU-Net's default schedule")
    title = f"Cross-modality comparison: {name}, {args.c}"
    n_cases = {m: sum(ev["num_cases"].get(m, 0) for (a, f), ev in evaluations.items()
                      if a == plan.rows[0][2].get(m)) for m in modalities}
    notes = [f"Plans {args.p}, trainer schedule `{schedule}`, folds {', '.join(map(str, folds))}, device {device}. "
             f"Dice on each fold's validation cases (nnU-Net's final-validation predictions; "
             + ", ".join(f"{n_cases[m]} {m}" for m in modalities) + " validation cases over all folds), "
             f"mean ± std over {len(folds)} fold(s)" + (" (a single fold: no std)" if len(folds) == 1 else "") +
             f". `{MEAN}`: mean Dice of the structures; `{WHOLE_HEART}`: Dice of the union of all foreground labels "
             f"(whole heart). Best mean per column in bold.",
             "", "Models (`nnUNetv2_train ... -tr TRAINER`):", "",
             *model_lines(plan)]
    md = args.output_folder / "comparison.md"
    md.write_text(markdown_table(records, plan, structures, title, notes))
    write_csv(records, args.output_folder / "comparison.csv", folds)
    bar_plot(records, plan, structures, args.output_folder / "comparison.png", title)
    _log("\n" + md.read_text())
    _log(f"written: {md}, {args.output_folder / 'comparison.csv'}, {args.output_folder / 'comparison.png'} "
         f"({(time.time() - started) / 60:.1f} min)")
    return md


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("-d", required=True, help="dataset id or name (DatasetXXX_Name)")
    parser.add_argument("-c", default="3d_fullres", help="nnU-Net configuration (default: %(default)s)")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"],
                        help="folds (default: 0 1 2 3 4); mean +- std are over these")
    parser.add_argument("-p", default="nnUNetPlansCIN", help="plans identifier (default: %(default)s; planned and "
                                                             "preprocessed with nnUNetv2_plan_and_preprocess_cin "
                                                             "when missing)")
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
    parser.add_argument("--finetune-from", nargs="+", default=None, metavar="TARGET=SOURCE",
                        help="fine-tuning source per target modality, e.g. MR=CT (default: the other modality)")
    parser.add_argument("-device", "--device", default=None, choices=("cpu", "cuda", "mps"),
                        help="default: cuda when available, else cpu")
    parser.add_argument("-o", default=None, help="output folder for the table, CSV, plot, evaluations and logs "
                                                 "(default: $nnUNet_results/<dataset>/comparison<schedule>__<plans>__"
                                                 "<configuration>)")
    parser.add_argument("-np", type=int, default=1, help="processes for planning/preprocessing and evaluation "
                                                         "(default: %(default)s)")
    parser.add_argument("--synthetic", type=int, default=None, metavar="N",
                        help="if the dataset does not exist: generate the built-in synthetic CT+MR hearts with N "
                             "training cases per modality under this (numeric) id")
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 32, 32], help="--synthetic volume shape")
    parser.add_argument("--seed", type=int, default=0, help="--synthetic seed")
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="nnunet-cin compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
