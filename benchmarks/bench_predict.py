"""nnUNetv2_predict_cin vs nnUNetv2_predict: wall time of the two commands on the same inputs (one run each).

The models are equivalent: the same plans (patch size, spacing, U-Net) from nnUNetv2_plan_and_preprocess_cin; the
conditional model (nnUNetTrainerCIN, CIN in the encoder, per-modality normalization) vs its plain counterpart
(nnUNetTrainer, InstanceNorm, nnU-Net's DefaultPreprocessor with the planned z-score). Timing does not depend on
training, so both model folders are written directly (seeded random weights, nnU-Net's checkpoint format).
Both commands run with the same flags (-f 0 -device cpu|cuda -npp -nps, TTA as given) on the same CT + MR inputs.

    python benchmarks/bench_predict.py [--cases 2] [--shape 40 40 40] [--device cpu] [--disable_tta] [--repeats 1]

Prints a Markdown table (wall seconds per command and the ratio; goal <= 1.03x).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DATASET_ID = 986
DATASET = f"Dataset{DATASET_ID}_BenchPredict"
CONFIG = "3d_fullres"


def run(cmd, env) -> float:
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return elapsed


def write_model(folder: Path, trainer: str, plans: dict, dataset_json: dict, modalities=None, seed: int = 0):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    pm = PlansManager(plans)
    torch.manual_seed(seed)
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration(CONFIG), 1,
                                                   len(dataset_json["labels"]), False)
    ckpt = {"network_weights": net.state_dict(), "trainer_name": trainer, "init_args": {"configuration": CONFIG},
            "inference_allowed_mirroring_axes": (0, 1, 2)}
    if modalities is not None:
        ckpt["modalities"] = list(modalities)
    torch.save(ckpt, folder / "fold_0" / "checkpoint_final.pth")
    return net


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=2, help="test cases per modality (CT and MR). Default: 2")
    parser.add_argument("--shape", type=int, nargs=3, default=(40, 40, 40), help="image shape. Default: 40 40 40")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--disable_tta", action="store_true")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per command, in ABBA order; the best is shown. Default: 1")
    parser.add_argument("--workdir", default=None, help="keep the data here (default: a temporary folder)")
    args = parser.parse_args(argv)

    import nnunet_cin.trainers
    from nnunet_cin.networks.unet import plain_architecture
    from nnunet_cin.plans import CINPlans
    from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN
    from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_predict_"))
    env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_compile="false",
               nnUNet_extTrainer=nnunet_cin.trainers.__path__[0])
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    for k in ("raw", "preprocessed", "results"):
        (root / k).mkdir(parents=True, exist_ok=True)
    raw = root / "raw" / DATASET
    if not (raw / "dataset.json").is_file():
        write_nnunet_dataset(root / "raw", DATASET_ID, "BenchPredict", {"CT": 2, "MR": 2}, shape=tuple(args.shape),
                             seed=3, test_cases_per_modality=args.cases)
    plans_file = root / "preprocessed" / DATASET / "nnUNetPlansCIN.json"
    if not plans_file.is_file():
        run(["nnUNetv2_plan_and_preprocess_cin", "-d", str(DATASET_ID), "-c", CONFIG, "--no_pp", "-npfp", "1"],
            dict(env, nnUNet_n_proc_DA=env.get("nnUNet_n_proc_DA") or "1"))
    cin_plans = json.loads(plans_file.read_text())
    dataset_json = json.loads((raw / "dataset.json").read_text())
    modalities = CINPlans(cin_plans).modalities

    # the conditional model, as nnUNetTrainerCIN writes it
    cin_model_plans = nnUNetTrainerCIN.plans_for_training(CINPlans(cin_plans).with_modalities(modalities), CONFIG, None)
    cin_folder = root / "results" / DATASET / f"nnUNetTrainerCIN__nnUNetPlansCIN__{CONFIG}"
    write_model(cin_folder, "nnUNetTrainerCIN", cin_model_plans, dataset_json, modalities)
    # its plain counterpart: same plans, plain network, nnU-Net's preprocessor
    plain_plans = CINPlans(cin_plans).without_entry()
    plain_plans["plans_name"] = "nnUNetPlans"
    cfg = plain_plans["configurations"][CONFIG]
    cfg["architecture"] = plain_architecture(cfg["architecture"])
    cfg["preprocessor_name"] = "DefaultPreprocessor"
    plain_folder = root / "results" / DATASET / f"nnUNetTrainer__nnUNetPlans__{CONFIG}"
    plain_dj = {k: v for k, v in dataset_json.items() if k not in ("modalities", "modality_patterns")}
    write_model(plain_folder, "nnUNetTrainer", plain_plans, plain_dj)

    common = ["-i", str(raw / "imagesTs"), "-d", str(DATASET_ID), "-c", CONFIG, "-f", "0", "-device", args.device,
              "-npp", "2", "-nps", "2", "--disable_progress_bar"] + (["--disable_tta"] if args.disable_tta else [])
    commands = {
        "nnUNetv2_predict (plain model)": ["nnUNetv2_predict", *common, "-tr", "nnUNetTrainer", "-p", "nnUNetPlans"],
        "nnUNetv2_predict_cin (conditional model)": ["nnUNetv2_predict_cin", *common, "-tr", "nnUNetTrainerCIN",
                                                     "-p", "nnUNetPlansCIN"],
    }
    times = {k: [] for k in commands}
    for r in range(args.repeats):
        order = list(commands.items())
        for name, cmd in (order if r % 2 == 0 else order[::-1]):  # ABBA: neither command always runs second
            out = root / f"out_{list(commands).index(name)}_{r}"
            times[name].append(run(cmd + ["-o", str(out)], env))
    n = len(list((raw / "imagesTs").iterdir()))
    cfgm = cin_plans["configurations"][CONFIG]
    print(f"\n{n} cases ({args.cases} CT + {args.cases} MR, shape {tuple(args.shape)}), patch "
          f"{cfgm['patch_size']}, device {args.device}, TTA {'off' if args.disable_tta else 'on'}, "
          f"{args.repeats} run(s) each (best shown; all: "
          f"{', '.join(f'{k.split()[0]} {[round(x, 1) for x in v]}' for k, v in times.items())}), "
          f"torch {torch.__version__}\n")
    base = min(next(iter(times.values())))
    rows = [("command", "wall time (s)", "ratio")] + [
        (name, f"{min(t):.1f}", f"{min(t) / base:.3f}x") for name, t in times.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]

    def line(r):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"
    print(line(rows[0]))
    print("| " + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)) + " |")
    for r in rows[1:]:
        print(line(r))
    return times


if __name__ == "__main__":
    main()
