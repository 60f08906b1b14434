"""Running a comparison: every run (model x seed x fold) trained with `nnUNetv2_train` in a subprocess unless done,
continued with `--c` from the last epoch reached when interrupted, then evaluated once on its fold's validation cases
through nnunet_cin.evaluation (kept in <output>/evaluations/)."""
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from nnunet_cin.experiments.compare.arms import PLAIN_PLANS, Arm, ComparisonPlan, Run, plans_with_normalization
from nnunet_cin.experiments.compare.cases import WHOLE_HEART
from nnunet_cin.experiments.compare.prepare import Split, log
from nnunet_cin.experiments.nnunet_runs import (CONTINUE, DONE, FINAL, NEW, VALIDATE, prepare_continue, run_logged,
                                                training_state)

SEED_VARIABLE = "nnUNet_cin_seed"  # read by our trainers; nnU-Net's own ignore it
EVALUATION_FORMAT = 2  # evaluations/*.json written by an older layout are computed again


@dataclass
class Setup:
    dataset: str  # DatasetXXX_Name
    configuration: str
    plans: str  # the comparison's plans (-p)
    results: Path  # nnUNet_results
    preprocessed: Path  # nnUNet_preprocessed/DatasetXXX_Name
    env: dict
    device: str
    output: Path
    verbose: bool = False
    num_processes: int = 1
    extra_train_args: List[str] = field(default_factory=list)
    plain_plans: str = "nnUNetPlans"  # nnU-Net's plain plans (--plain-plans)

    def plans_of(self, arm: Arm) -> str:
        return self.plain_plans if arm.plans == PLAIN_PLANS else plans_with_normalization(self.plans, arm.normalization)

    def results_root(self, arm: Arm, seed: Optional[int] = None) -> Path:
        """nnUNet_results of one model and seed: each seed's replicate has its own root ($nnUNet_results/seed_<s>, the
        usual nnU-Net layout below it), so replicates never overwrite each other; unseeded runs use nnUNet_results
        itself. Fine-tuned models go one folder deeper (finetuned_from_<A>), apart from the single-modality ones."""
        root = self.results if seed is None else self.results / f"seed_{seed}"
        return root / arm.results_subfolder if arm.results_subfolder else root

    def model_folder(self, arm: Arm, seed: Optional[int] = None) -> Path:
        return self.results_root(arm, seed) / self.dataset / f"{arm.trainer}__{self.plans_of(arm)}__{self.configuration}"

    def fold_folder(self, arm: Arm, fold, seed: Optional[int] = None) -> Path:
        return self.model_folder(arm, seed) / f"fold_{fold}"

    def run_folder(self, run: Run) -> Path:
        return self.fold_folder(run.arm, run.fold, run.seed)

    def run_env(self, run: Run) -> dict:
        env = dict(self.env)
        env["nnUNet_results"] = str(self.results_root(run.arm, run.seed))
        if run.seed is not None:
            env[SEED_VARIABLE] = str(run.seed)
        return env


def train_command(setup: Setup, plan: ComparisonPlan, run: Run, state: str) -> List[str]:
    arm = run.arm
    command = ["nnUNetv2_train", setup.dataset, setup.configuration, str(run.fold), "-tr", arm.trainer, "-p",
               setup.plans_of(arm), "-device", setup.device, *setup.extra_train_args]
    if state == VALIDATE:
        command.append("--val")
    elif state == CONTINUE:
        command.append("--c")  # nnU-Net refuses -pretrained_weights with --c: the checkpoint has them already
    elif arm.pretrained_from is not None:
        source = setup.fold_folder(plan.arms[arm.pretrained_from], run.fold, run.seed) / FINAL
        command += ["-pretrained_weights", str(source)]
    return command


def train(setup: Setup, plan: ComparisonPlan, run: Run, dry_run: bool = False) -> str:
    """Train (or continue, or validate) one run unless done. Returns the state found."""
    folder = setup.run_folder(run)
    state = training_state(folder)
    if state == DONE:
        log(f"  [{run}] skipped: already trained ({folder / FINAL})")
        return state
    if run.arm.pretrained_from is not None and state == NEW and not dry_run:
        source = setup.fold_folder(plan.arms[run.arm.pretrained_from], run.fold, run.seed) / FINAL
        if not source.is_file():
            raise FileNotFoundError(f"{run}: the model to fine-tune from is missing: {source} (train arm "
                                    f"{run.arm.pretrained_from} first)")
    command = train_command(setup, plan, run, state)
    what = {NEW: "training", VALIDATE: "running the missing final validation (--val)",
            CONTINUE: "continuing the interrupted training (--c)"}[state]
    if state == CONTINUE and not dry_run:
        what += f" from epoch {prepare_continue(folder)}"
    log(f"  [{run}] {what}: {' '.join(command)}")
    if dry_run:
        return state
    log_file = setup.output / "logs" / f"{run.name}.log"
    seconds = run_logged(command, setup.run_env(run), log_file, setup.verbose)
    log(f"  [{run}] finished in {seconds:.0f} s (log: {log_file})")
    return state


def evaluate(setup: Setup, run: Run, dataset_json: dict, split: Optional[Split] = None) -> dict:
    """The per-case Dice of one run's validation cases (nnU-Net's final-validation predictions in fold_X/validation),
    computed once with nnunet_cin.evaluation.evaluate.evaluate_folder and kept in output/evaluations/<run>.json:
    {"cases": [{"case", "modality", "Dice": {structure: value, ..., "WH": value}}], ...}. The cases must be the
    fold's validation cases of the split file (of the model's modalities): a model trained with another split is an
    error, not a silently different table."""
    from nnunet_cin.evaluation.evaluate import evaluate_folder, foreground_union

    validation = setup.run_folder(run) / "validation"
    cache = setup.output / "evaluations" / f"{run.name}.json"
    summary_file = validation / "summary.json"
    if not summary_file.is_file():
        raise FileNotFoundError(f"{run}: no final validation in {validation} (nnUNetv2_train did not finish); run the "
                                f"comparison again to complete it")
    if cache.is_file() and cache.stat().st_mtime >= summary_file.stat().st_mtime:
        cached = json.loads(cache.read_text())
        if cached.get("format") == EVALUATION_FORMAT:
            log(f"  [{run}] evaluation skipped: already in {cache}")
            return cached
    result = evaluate_folder(str(setup.preprocessed / "gt_segmentations"), str(validation), dataset_json,
                             num_processes=setup.num_processes, chill=True,
                             extra_regions={WHOLE_HEART: foreground_union(dataset_json)})
    cases = [{"case": c["case"], "modality": c["modality"],
              "Dice": {name: _finite_or_none(values["Dice"]) for name, values in c["metrics"].items()}}
             for c in result["metric_per_case"] if c["modality"] in run.arm.modalities]
    if split is not None and run.fold in split.validation:
        expected = sorted(c for m in run.arm.modalities for c in split.validation[run.fold].get(m, []))
        found = sorted(c["case"] for c in cases)
        if found != expected:
            raise RuntimeError(f"{run}: validated on other cases than fold {run.fold} of {split.file} (found "
                               f"{found}, expected {expected}): the model was trained with another split. Move "
                               f"{setup.model_folder(run.arm, run.seed)} away (or restore the split) and rerun.")
    record = {"format": EVALUATION_FORMAT, "arm": run.arm.name, "trainer": run.arm.trainer,
              "plans": setup.plans_of(run.arm), "seed": run.seed, "fold": run.fold,
              "validation_folder": str(validation), "cases": cases}
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(cache.name + ".partial")
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(cache)
    wh = {}
    for c in cases:
        wh.setdefault(c["modality"], []).append(c["Dice"][WHOLE_HEART])
    log(f"  [{run}] evaluated {len(cases)} validation case(s): " +
        ", ".join(f"{m} WH {sum(v) / len(v):.3f}" for m, v in wh.items() if None not in v))
    return record


def _finite_or_none(value) -> Optional[float]:
    """JSON has no NaN: a Dice that is undefined (structure absent from reference and prediction) is stored as null."""
    value = float(value)
    return value if math.isfinite(value) else None


def train_and_evaluate(setup: Setup, plan: ComparisonPlan, runs: Sequence[Run], dataset_json: dict,
                       split: Optional[Split] = None, jobs: int = 1, dry_run: bool = False) -> Dict[str, dict]:
    """Train what is missing and evaluate every run; up to `jobs` trainings at once (a fine-tuning waits for its
    source). Returns {run name: evaluation}. The first failure stops new work and is raised after the running ones
    end (a rerun resumes)."""
    futures: Dict[str, object] = {}
    failed = []

    def work(run: Run):
        if run.arm.pretrained_from is not None:
            source = Run(plan.arms[run.arm.pretrained_from], run.seed, run.fold)
            futures[source.name].result()  # raises if the source failed
        if failed:
            raise RuntimeError("skipped after an earlier failure")
        try:
            train(setup, plan, run, dry_run)
            return None if dry_run else evaluate(setup, run, dataset_json, split)
        except BaseException as e:
            failed.append(e)
            raise

    started = time.time()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        # sources are submitted before the runs that wait for them, so a waiting run never blocks its source
        for run in runs:
            futures[run.name] = pool.submit(work, run)
    if failed:
        raise failed[0]
    if not dry_run:
        log(f"  all {len(runs)} run(s) trained and evaluated ({(time.time() - started) / 60:.1f} min)")
    return {name: future.result() for name, future in futures.items()}
