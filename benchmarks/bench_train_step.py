"""Time per training iteration of nnUNetTrainerCIN against nnU-Net's nnUNetTrainer: same plans, same patch, same
batches (drawn once by nnUNetTrainerCIN's mixed-modality loader, so data loading and augmentation are left out and
both trainers see identical tensors). Each iteration is nnU-Net's full `train_step` (forward, deep-supervision loss,
backward, gradient clipping, SGD step); for nnUNetTrainerCIN it includes looking up the batch's modalities and
conditioning the network. Iterations alternate between the two trainers so that a noisy machine slows both alike.

    python benchmarks/bench_train_step.py [--device cpu|cuda] [--iterations 20] [--shape 64] [--workdir DIR]

Generates a two-modality synthetic dataset (nnunet_cin.dataset_conversion.synthetic), plans it with plain `nnUNetv2_plan_and_preprocess`
(3d_fullres) in a temporary folder, then prints a Markdown table.
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nnunet_cin.environment import cpu_defaults

DATASET_ID = 998


def prepare(workdir: Path, shape: int, cases: int) -> dict:
    env = {"nnUNet_raw": str(workdir / "raw"), "nnUNet_preprocessed": str(workdir / "preprocessed"),
           "nnUNet_results": str(workdir / "results")}
    for p in env.values():
        Path(p).mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    os.environ.update(cpu_defaults(os.environ, augmentation_workers=0))
    if not list((workdir / "preprocessed").glob(f"Dataset{DATASET_ID}_*/nnUNetPlans.json")):
        from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset

        write_nnunet_dataset(workdir / "raw", DATASET_ID, name="BenchTrainStep",
                             cases_per_modality={"CT": cases, "MR": cases}, shape=(shape,) * 3)
        subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID),
                        "-c", "3d_fullres", "-np", "1", "-npfp", "1"], check=True, capture_output=True,
                       env={**os.environ, "nnUNet_n_proc_DA": "1"})
    return env


def make_trainer(name: str, device: torch.device):
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(DATASET_ID), "3d_fullres", 0, name, "nnUNetPlans", device=device)
    trainer.initialize()
    return trainer


def timed_step(trainer, batch, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.train_step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per trainer")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--shape", type=int, default=64, help="edge of the generated volumes (sets the plans' patch)")
    parser.add_argument("--cases", type=int, default=4, help="cases per modality")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--workdir", default=None, help="keep the generated data here (default: a temporary folder)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        import nnunet_cin.trainers

        os.environ["nnUNet_extTrainer"] = nnunet_cin.trainers.__path__[0]
        prepare(workdir, args.shape, args.cases)
        torch.manual_seed(0)
        np.random.seed(0)
        cin = make_trainer("nnUNetTrainerCIN", device)
        plain = make_trainer("nnUNetTrainer", device)
        loader, _ = cin.get_dataloaders()
        batches = [next(loader) for _ in range(args.warmup + args.iterations)]
        for b in batches[:args.warmup]:
            cin.train_step(b)
            plain.train_step(b)
        times = {"nnUNetTrainer": [], "nnUNetTrainerCIN": []}
        for b in batches[args.warmup:]:
            times["nnUNetTrainer"].append(timed_step(plain, b, device))
            times["nnUNetTrainerCIN"].append(timed_step(cin, b, device))

    cm = cin.configuration_manager
    base = statistics.median(times["nnUNetTrainer"])
    print(f"\nTraining iteration (nnU-Net train_step), 3d_fullres, patch {tuple(cm.patch_size)}, batch "
          f"{cin.batch_size}, {len(cm.network_arch_init_kwargs['features_per_stage'])} stages "
          f"{cm.network_arch_init_kwargs['features_per_stage']}, device {device}"
          f"{'' if device.type == 'cuda' else f' ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})'}"
          f", {args.iterations} iterations each, interleaved; median ms\n")
    print("| trainer | median ms / iteration | min ms | ratio to nnUNetTrainer |")
    print("|---|---:|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t) * 1000:.1f} | {min(t) * 1000:.1f} | "
              f"{statistics.median(t) / base:.3f}x |")
    return times


if __name__ == "__main__":
    main()
