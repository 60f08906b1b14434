"""Adding a modality to a trained model, measured: Dice of a T2-like third modality from k labelled cases.

    python benchmarks/bench_add_modality.py [--root bench_add_modality] [--ks 1 2 4] [--seeds 0 1 2] [-device cpu]

One CT+MR model (nnUNetv2_plan_and_preprocess_cin, nnUNetv2_train ... all -tr <a short nnUNetTrainerCIN schedule>,
seed 0) on generated hearts; the T2-like modality of the generator (blood darkest, myocardium brightest) is added
with k = 1, 2, 4 of a pool of labelled T2 cases (each seed draws its own k), and every arm is scored on the same
held-out T2 test cases (nnU-Net's sliding window without test-time mirroring, Dice per structure by
nnunet_cin.evaluation.evaluate.evaluate_folder; a case's value is its mean Dice over the 7 structures):

  (a) new rows only: nnunet-cin add-modality --adapt rows (the new CIN rows from the closest modality's, everything
      else frozen)
  (a+dec) add-modality --adapt rows+decoder: the new modality's rows in the decoder's norms too
  (a+ad) add-modality --adapt adapters: also a residual 1x1 adapter of its own after every norm
  (b) fine-tuning the whole network on the same k cases (the same start, every parameter trains); its CT and MR Dice
      on held-out CT and MR cases against the base model's
  (c) training from scratch on the k cases (the same network, random start, the base model's iteration budget)
  (d) the closest existing row, no training (add-modality --epochs 0), and the mean row
  (e) unlabelled adaptation of the new rows (add-modality --unlabeled) on the k cases' images

(a), (a+dec), (a+ad), (b) and (e) train the same number of iterations (--epochs x --iterations; a run with another budget than the
default is kept apart: `--arms a d --epochs 40` gives (a) the iterations of (c)). The adaptation's own final
validation (nnU-Net's, on the training cases) is skipped here. Statistics as in `nnunet-cin compare`: the unit is the
test case; a case's value is averaged over the seeds first; Student-t 95% intervals over the cases; paired differences
with a bootstrap interval and a Wilcoxon test (nnunet_cin.evaluation.statistics); the spread between seeds is shown as
the range of the per-seed means. Resumable: each run's evaluation is kept in ROOT/evaluations/<run>.json and not
redone.
Prints a Markdown table and writes ROOT/table.md and ROOT/results.json.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# before nnU-Net is imported: its worker counts are read at import
from nnunet_cin.environment import cpu_defaults  # (imports no nnU-Net)

os.environ.update(cpu_defaults(os.environ, processes=1, augmentation_workers=0))
os.environ.setdefault("nnUNet_cin_fingerprint_samples", "1e6")

BASE_ID, T2_ID = 961, 962
BASE = f"Dataset{BASE_ID}_AddBench"
TRAINER = "nnUNetTrainerCINAddBench"
TRAINER_SOURCE = '''
import torch
from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN


class {name}(nnUNetTrainerCIN):
    """The benchmark's base model: {epochs} epochs of {iterations} iterations."""
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = {epochs}
        self.num_iterations_per_epoch = {iterations}
        self.num_val_iterations_per_epoch = 2

    def perform_actual_validation(self, save_probabilities: bool = False):
        pass
'''
DEFAULT_EPOCHS, DEFAULT_ITERATIONS = 8, 25  # of the adaptation arms (a), (a+dec), (a+ad), (b), (e)
ADAPT_OF = {"a": "rows", "a_dec": "rows+decoder", "a_ad": "adapters"}  # add-modality --adapt of each arm
LR_ARMS = ("a", "a_dec", "a_ad", "e")  # at add-modality's learning rate (--lr)
ADAPTING_ARMS = ("a", "a_dec", "a_ad", "b", "e")  # at the adaptation budget (--epochs x --iterations)
TRAINED_ARMS = ("a", "a_dec", "a_ad", "e", "b", "c")  # in the order they run and are tabled
STRUCTURES = ["MYO", "LA", "LV", "RA", "RV", "AA", "PA"]
ARMS = {"a": "(a) new rows only (add-modality --adapt rows)",
        "a_dec": "(a+dec) rows in the decoder too (--adapt rows+decoder)",
        "a_ad": "(a+ad) rows everywhere + residual adapters (--adapt adapters)", "b": "(b) fine-tune whole network",
        "c": "(c) from scratch on the k cases", "d": "(d) closest row, no training", "d_mean": "(d') mean row, no "
        "training", "e": "(e) unlabelled adaptation (k images)"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="bench_add_modality", help="work folder (resumable)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--shape", type=int, default=24, help="volume edge (voxels)")
    p.add_argument("--base-cases", type=int, default=6, help="CT and MR training cases each")
    p.add_argument("--test-cases", type=int, default=6, help="held-out T2 test cases (CT and MR: as many)")
    p.add_argument("--pool", type=int, default=4, help="labelled T2 cases the k are drawn from")
    p.add_argument("--features", type=int, nargs="+", default=[16, 32, 64], help="features per stage (a small net)")
    p.add_argument("--base-epochs", type=int, default=40)
    p.add_argument("--base-iterations", type=int, default=25)
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="adaptation epochs of (a), (b), (e)")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help="adaptation iterations per epoch")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate of (a) and (e). Default: "
                                                           "add-modality's; (b) and (c) train with nnU-Net's 1e-2")
    p.add_argument("--arms", nargs="+", default=["a", "a_dec", "a_ad", "b", "c", "d", "e"],
                   help="arms to run (a a_dec a_ad b c d e)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report-only", action="store_true",
                   help="table the runs already evaluated under ROOT (of --ks, --seeds), run nothing")
    p.add_argument("-device", default="cpu")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------- the arms
def arm_trainers():
    import torch

    from nnunet_cin.add_modality.rows import extended_state_dict
    from nnunet_cin.add_modality.trainer import NewRowsAdaptation, UnlabeledAdaptation

    class NoFinalValidation:
        def perform_actual_validation(self, save_probabilities: bool = False):
            pass

    class NewRows(NoFinalValidation, NewRowsAdaptation):
        pass

    class Unlabeled(NoFinalValidation, UnlabeledAdaptation):
        pass

    class FineTuneAll(NewRows):
        """(b): the same start as (a), every parameter trains; the old modalities change by design."""
        def prepare_network(self, network):
            weights = torch.load(self.adaptation.checkpoint, map_location="cpu", weights_only=False)
            network.load_state_dict(extended_state_dict(weights["network_weights"], network, self.adaptation.init))
            for p in network.parameters():
                p.requires_grad_(True)
            return list(network.parameters())

        def changed_outside_new_rows(self, original, weights):
            return []

    class FromScratch(FineTuneAll):
        """(c): the trainer's own (seeded) random initialisation."""
        def prepare_network(self, network):
            return list(network.parameters())

    return {"a": NewRows, "a_dec": NewRows, "a_ad": NewRows, "b": FineTuneAll, "c": FromScratch, "e": Unlabeled}


# ------------------------------------------------------------------------------------------------ the pipeline
def run_cmd(cmd, env, log):
    with open(log, "w") as f:
        r = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed, see {log}")


def base_model(args, root: Path) -> Path:
    from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset

    model = root / "results" / BASE / f"{TRAINER}__nnUNetPlansCIN__3d_fullres"
    if (model / "fold_all" / "checkpoint_final.pth").is_file():
        return model
    shape = (args.shape,) * 3
    if not (root / "raw" / BASE).is_dir():
        write_nnunet_dataset(root / "raw", BASE_ID, "AddBench", {"CT": args.base_cases, "MR": args.base_cases},
                             shape=shape, seed=0, test_cases_per_modality=args.test_cases)
        write_nnunet_dataset(root / "raw", T2_ID, "AddBenchT2", {"T2": args.pool}, shape=shape, seed=1,
                             test_cases_per_modality=args.test_cases)
    (root / "trainers" / f"{TRAINER}.py").write_text(TRAINER_SOURCE.format(
        name=TRAINER, epochs=args.base_epochs, iterations=args.base_iterations))
    env = dict(os.environ)
    started = time.time()
    run_cmd(["nnUNetv2_plan_and_preprocess_cin", "-d", str(BASE_ID), "-c", "3d_fullres", "-np", "1", "-npfp", "1"],
            dict(env, nnUNet_n_proc_DA="1"), root / "logs" / "plan.log")
    plans_file = root / "preprocessed" / BASE / "nnUNetPlansCIN.json"
    plans = json.loads(plans_file.read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    n = len(arch["features_per_stage"])
    arch["features_per_stage"] = (list(args.features) + [args.features[-1]] * n)[:n]
    plans_file.write_text(json.dumps(plans, indent=2))
    run_cmd(["nnUNetv2_train", str(BASE_ID), "3d_fullres", "all", "-tr", TRAINER, "-p", "nnUNetPlansCIN", "-device",
             args.device], dict(env, nnUNet_cin_seed="0"), root / "logs" / "base_train.log")
    (root / "base_seconds.txt").write_text(f"{time.time() - started:.0f}")
    return model


def subset(root: Path, k: int, seed: int, pool: int) -> Path:
    """A raw dataset with k of the pool's labelled T2 cases (drawn by the seed)."""
    import numpy as np

    folder = root / "subsets" / f"k{k}_s{seed}"
    if folder.is_dir():
        return folder
    source = root / "raw" / f"Dataset{T2_ID}_AddBenchT2"
    cases = sorted(np.random.default_rng(seed).permutation(pool)[:k].tolist())
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)  # (runs side by side may draw the same subset)
    for i in cases:
        shutil.copy(source / "imagesTr" / f"t2_{i:04d}_0000.nii.gz", folder / "imagesTr")
        shutil.copy(source / "labelsTr" / f"t2_{i:04d}.nii.gz", folder / "labelsTr")
    meta = json.loads((source / "dataset.json").read_text())
    meta["numTraining"] = k
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folder


def predict_and_score(model: Path, images: Path, labels: Path, out: Path, modality):
    """{case: {structure: Dice}} of nnU-Net's prediction (no test-time mirroring) of every image."""
    from nnunet_cin.evaluation.evaluate import evaluate_folder
    from nnunet_cin.inference.command import predict_from_modelfolder_entry_point

    if out.is_dir():
        shutil.rmtree(out)
    predict_from_modelfolder_entry_point(["-i", str(images), "-o", str(out), "-m", str(model), "-f", "all", "-device",
                                          "cpu", "--disable_tta", "--disable_progress_bar", "-npp", "0", "-nps", "0",
                                          *(["--modality", modality] if modality else [])])
    dataset_json = json.loads((model / "dataset.json").read_text())
    result = evaluate_folder(str(labels), str(out), dataset_json, modality, num_processes=1)
    return {c["case"]: {s: c["metrics"][s]["Dice"] for s in STRUCTURES} for c in result["metric_per_case"]}


def run_name(args, arm: str, k: int, seed: int) -> str:
    name = (f"{arm}_k{k}_s{seed}" if k else arm) + (f"_lr{args.lr:g}" if args.lr and arm in LR_ARMS else "")
    if arm in ADAPTING_ARMS and (args.epochs, args.iterations) != (DEFAULT_EPOCHS, DEFAULT_ITERATIONS):
        name += f"_{args.epochs}x{args.iterations}"  # another budget: its own runs, not the default's
    return name


def run_arm(args, root: Path, model: Path, arm: str, k: int, seed: int, trainers) -> dict:
    import torch

    from nnunet_cin.add_modality.command import add_modality
    from nnunet_cin.add_modality.inputs import check_request

    name = run_name(args, arm, k, seed)
    record_file = root / "evaluations" / f"{name}.json"
    if record_file.is_file():
        return json.loads(record_file.read_text())
    data = subset(root, k, seed, args.pool) if k else root / "raw" / f"Dataset{T2_ID}_AddBenchT2"
    out = root / "models" / name
    if out.exists():
        shutil.rmtree(out)
    request = check_request(str(model), str(data), "T2", str(out), ["all"], unlabeled=arm == "e",
                            init="mean" if arm == "d_mean" else "closest")
    epochs = args.base_epochs if arm == "c" else 0 if arm in ("d", "d_mean") else args.epochs
    iterations = args.base_iterations if arm == "c" else args.iterations
    started = time.time()
    lr = args.lr if arm in LR_ARMS else 1e-2  # (b), (c): nnU-Net's, as for training a whole network
    add_modality(request, epochs, iterations, 2, torch.device(args.device), seed=seed, initial_lr=lr,
                 trainer_base=trainers.get(arm), adapt=ADAPT_OF.get(arm, "rows"))
    seconds = time.time() - started
    raw_t2 = root / "raw" / f"Dataset{T2_ID}_AddBenchT2"
    added = json.loads((out / "fold_all" / "add_modality.json").read_text()).get("added_parameters")
    record = {"arm": arm, "k": k, "seed": seed, "seconds": round(seconds, 1), "added_parameters": added,
              "T2": predict_and_score(out, raw_t2 / "imagesTs", raw_t2 / "labelsTs", root / "pred" / name, "T2")}
    if arm == "b":
        raw = root / "raw" / BASE
        record["CT+MR"] = predict_and_score(out, raw / "imagesTs", raw / "labelsTs", root / "pred" / f"{name}_old",
                                            None)
    record_file.parent.mkdir(exist_ok=True)
    record_file.write_text(json.dumps(record, indent=1))
    shutil.rmtree(out)  # the models are not needed once scored
    return record


def base_scores(root: Path, model: Path) -> dict:
    record_file = root / "evaluations" / "base.json"
    if record_file.is_file():
        return json.loads(record_file.read_text())
    raw = root / "raw" / BASE
    record = {"CT+MR": predict_and_score(model, raw / "imagesTs", raw / "labelsTs", root / "pred" / "base", None)}
    record_file.parent.mkdir(exist_ok=True)
    record_file.write_text(json.dumps(record, indent=1))
    return record


# ------------------------------------------------------------------------------------------------- the report
def case_means(scores: dict) -> dict:
    import numpy as np
    return {c: float(np.nanmean([v if v is not None else np.nan for v in d.values()])) for c, d in scores.items()}


def by_modality(scores: dict, modality: str) -> dict:
    return {c: v for c, v in case_means(scores).items() if c.startswith(modality.lower() + "_")}


def averaged_over_seeds(records, key="T2", modality=None):
    """{case: value averaged over the seeds' runs}, [per-seed mean over the cases]."""
    import numpy as np
    per_seed = [by_modality(r[key], modality) if modality else case_means(r[key]) for r in records]
    cases = sorted(per_seed[0])
    return {c: float(np.mean([s[c] for s in per_seed])) for c in cases}, [float(np.mean(list(s.values())))
                                                                          for s in per_seed]


def cell(values: dict, seed_means) -> str:
    from nnunet_cin.evaluation.statistics import mean_ci
    ci = mean_ci(list(values.values()))
    text = f"{ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]"
    if len(seed_means) > 1:
        text += f" (seeds {min(seed_means):.3f}–{max(seed_means):.3f})"
    return text


def report(args, records: list, base: dict, root: Path) -> str:
    import numpy as np

    from nnunet_cin.evaluation.statistics import compare_paired

    def runs(arm, k):
        return [r for r in records if r["arm"] == arm and r["k"] == k and (k == 0 or r["seed"] in args.seeds)]

    lines = [f"Training iterations: (a), (b), (e) {args.epochs} x {args.iterations}; (c) {args.base_epochs} x "
             f"{args.base_iterations} (the base model's); test cases: {args.test_cases} per modality", "",
             "| T2 mean Dice, 95% CI over test cases | " + " | ".join(f"k = {k}" for k in args.ks) + " |",
             "|---|" + "---:|" * len(args.ks)]
    for arm in [a for a in TRAINED_ARMS if any(runs(a, k) for k in args.ks)]:
        lines.append(f"| {ARMS[arm]} | " + " | ".join(cell(*averaged_over_seeds(runs(arm, k))) if runs(arm, k)
                                                       else "–" for k in args.ks) + " |")
    for arm in [a for a in ("d", "d_mean") if runs(a, 0)]:
        lines.append(f"| {ARMS[arm]} | " + " | ".join([cell(*averaged_over_seeds(runs(arm, 0)))] * len(args.ks))
                     + " |")
    lines += ["", "| paired difference in T2 mean Dice (bootstrap 95% CI, Wilcoxon p) | "
              + " | ".join(f"k = {k}" for k in args.ks) + " |", "|---|" + "---:|" * len(args.ks)]
    pairs = [("(a) - (d)", "a", "d"), ("(e) - (d)", "e", "d")] + [
        (f"{ARMS[arm].split(' ')[0]} - {ref}", arm, ref.strip("()")) for arm in ("a", "a_dec", "a_ad")
        for ref in ("(b)", "(c)")] + [(f"{ARMS[arm].split(' ')[0]} - (a)", arm, "a") for arm in ("a_dec", "a_ad")]
    for label, arm, ref in pairs:
        if not any(runs(arm, k) for k in args.ks) or not runs(ref, 0) and not any(runs(ref, k) for k in args.ks):
            continue
        reference_d, _ = averaged_over_seeds(runs("d", 0)) if ref == "d" else (None, None)
        row = []
        for k in args.ks:
            # paired over the seeds both arms have (each seed: the same k cases)
            seeds = {r["seed"] for r in runs(arm, k)} & ({0} if ref == "d" else {r["seed"] for r in runs(ref, k)})
            if not seeds:
                row.append("–")
                continue
            mine, _ = averaged_over_seeds([r for r in runs(arm, k) if r["seed"] in seeds])
            other = reference_d if ref == "d" else averaged_over_seeds([r for r in runs(ref, k)
                                                                        if r["seed"] in seeds])[0]
            cases = sorted(mine)
            c = compare_paired([mine[x] for x in cases], [other[x] for x in cases])
            row.append(f"{c.difference:+.3f} [{c.low:+.3f}, {c.high:+.3f}], p={c.p:.3f}")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines += ["", "| CT / MR mean Dice on held-out cases | CT | MR |", "|---|---:|---:|"]
    lines.append("| base model (and (a), (a+dec), (a+ad), (d), (e): bitwise the same) | "
                 + " | ".join(cell(by_modality(base["CT+MR"], m), []) for m in ("CT", "MR")) + " |")
    for k in [k for k in args.ks if runs("b", k)]:  # (b) changes them
        b = runs("b", k)
        lines.append(f"| (b) fine-tuned on k = {k} T2 cases | "
                     + " | ".join(cell(*averaged_over_seeds(b, "CT+MR", m)) for m in ("CT", "MR")) + " |")
    seconds = {arm: float(np.mean([r["seconds"] for r in records if r["arm"] == arm]))
               for arm in ARMS if any(r["arm"] == arm for r in records)}
    lines += ["", "Wall time per run (s, mean; model folder written, before scoring): "
              + ", ".join(f"{ARMS[a].split(')')[0]}) {s:.0f}" for a, s in seconds.items())]
    base_seconds = root / "base_seconds.txt"
    if base_seconds.is_file():
        lines[-1] += f"; base model (planning + training) {base_seconds.read_text()}"
    added = {arm: r["added_parameters"] for r in records for arm in ("a", "a_dec", "a_ad")
             if r["arm"] == arm and r.get("added_parameters")}
    if added:
        lines += ["", "Parameters added for T2 (the only ones trained): "
                  + ", ".join(f"{ARMS[a].split(' ')[0]} {n}" for a, n in added.items())]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    root = Path(args.root).resolve()
    for sub in ("raw", "preprocessed", "results", "trainers", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    import nnunet_cin.trainers
    os.environ.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
                      nnUNet_results=str(root / "results"),
                      nnUNet_extTrainer=os.pathsep.join([str(root / "trainers"), nnunet_cin.trainers.__path__[0]]))
    started = time.time()
    model = base_model(args, root)
    base = base_scores(root, model)
    trainers = arm_trainers()
    if args.report_only:
        names = [run_name(args, a, 0, 0) for a in ("d", "d_mean")] + [
            run_name(args, a, k, s) for a in TRAINED_ARMS if a in args.arms for k in args.ks for s in args.seeds]
        files = [root / "evaluations" / f"{n}.json" for n in names]
        records = [json.loads(f.read_text()) for f in files if f.is_file()]
        print(report(args, records, base, root))
        return
    records = [run_arm(args, root, model, arm, 0, 0, trainers) for arm in ("d", "d_mean") if "d" in args.arms]
    for k in args.ks:
        for seed in args.seeds:
            for arm in [a for a in TRAINED_ARMS if a in args.arms]:
                records.append(run_arm(args, root, model, arm, k, seed, trainers))
                print(f"[{time.time() - started:.0f} s] {arm} k={k} seed={seed}: T2 "
                      f"{sum(case_means(records[-1]['T2']).values()) / len(records[-1]['T2']):.3f}", flush=True)
    table = report(args, records, base, root)
    (root / "table.md").write_text(table + "\n")
    (root / "results.json").write_text(json.dumps({"args": vars(args), "base": base, "runs": records}, indent=1))
    print(table)
    print(f"\ntotal {time.time() - started:.0f} s (this invocation)")


if __name__ == "__main__":
    sys.exit(main())
