"""`nnunet-cin demo`: the whole cross-modality workflow on generated CT and MR hearts, with nnU-Net's real commands.

generate -> nnUNetv2_plan_and_preprocess_cin -> nnUNetv2_train -tr nnUNetTrainerCINDemo -> nnUNetv2_predict_cin -m CT
and -m MR on held-out cases -> nnUNetv2_evaluate_cin -> overlay PNGs. Everything goes under one output folder (its
own nnUNet_raw/_preprocessed/_results); rerunning continues where a previous run stopped (an interrupted training
with nnU-Net's `--c` from the last epoch reached) and redoes nothing that is finished.
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from nnunet_cin.inference.orphans import run_forwarding_signals
from nnunet_cin.experiments.nnunet_runs import CONTINUE, DONE, VALIDATE, prepare_continue, training_state
from nnunet_cin.modalities import case_id_from_image_file, case_id_from_label_file

DATASET_ID = 990
DATASET_NAME = "DemoHeart"
MODALITIES = ("CT", "MR")


def _stage(number: int, total: int, text: str):
    print(f"\n=== [{number}/{total}] {text}", flush=True)


def _run(command: List[str], env: dict):
    print("$ " + " ".join(command), flush=True)
    start = time.time()
    run_forwarding_signals(command, env=env, check=True)  # SIGTERM/SIGINT reach the command, which is waited for
    print(f"    ({time.time() - start:.0f} s)", flush=True)


def _newer_than(result: Path, inputs) -> bool:
    """`result` exists and is at least as new as every input (a rerun need not make it again)."""
    return result.is_file() and all(result.stat().st_mtime >= f.stat().st_mtime for f in inputs)


def demo_environment(output: Path) -> dict:
    """nnU-Net's folders inside `output` (the demo never touches the user's own), our trainers on
    nnUNet_extTrainer, and CPU-friendly defaults the user may override."""
    from nnunet_cin.environment import NNUNET_FOLDERS, cpu_defaults, with_our_trainers

    env = dict(os.environ)
    for name in NNUNET_FOLDERS:
        env[name] = str(output / name)
        Path(env[name]).mkdir(parents=True, exist_ok=True)
    env = with_our_trainers(env)
    env.update(cpu_defaults(env))
    return env


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def write_overlay(image_file: Path, reference_file: Path, prediction_file: Path, png: Path, title: str):
    """Middle axial slice: image, reference labels and predicted labels side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import SimpleITK as sitk

    image, reference, prediction = (sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in
                                    (image_file, reference_file, prediction_file))
    z = int(np.argmax((reference > 0).sum(axis=(1, 2))))  # the slice with most heart in it
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    labels = np.ma.masked_equal
    for ax, (name, overlay) in zip(axes, (("image", None), ("reference", reference), ("prediction", prediction))):
        ax.imshow(image[z], cmap="gray")
        if overlay is not None:
            ax.imshow(labels(overlay[z], 0), cmap="tab10", vmin=0, vmax=9, alpha=0.5, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def run_demo(output: Path, device: str, quick: bool = False, cases_per_modality: int = 12, test_cases: int = 3,
             shape: Sequence[int] = (32, 32, 32), num_processes: int = 2) -> Path:
    from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset

    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    env = demo_environment(output)
    trainer = "nnUNetTrainerCINDemoQuick" if quick else "nnUNetTrainerCINDemo"
    dataset = f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    raw = Path(env["nnUNet_raw"]) / dataset
    total = 6
    started = time.time()

    _stage(1, total, f"generate {cases_per_modality} training + {test_cases} test cases per modality "
                     f"({', '.join(MODALITIES)}) in {raw}")
    if not (raw / "dataset.json").is_file():
        write_nnunet_dataset(env["nnUNet_raw"], DATASET_ID, DATASET_NAME, {m: cases_per_modality for m in MODALITIES},
                             shape=shape, seed=2017, test_cases_per_modality=test_cases)
    else:
        print("    already there")

    _stage(2, total, "plan and preprocess, per-modality normalization (nnUNetv2_plan_and_preprocess_cin)")
    plans = Path(env["nnUNet_preprocessed"]) / dataset / "nnUNetPlansCIN.json"
    if not plans.is_file():
        # -npfp too: nnU-Net's default starts 8 fingerprint workers, each importing torch, for a few small cases
        _run(["nnUNetv2_plan_and_preprocess_cin", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np",
              str(num_processes), "-npfp", str(num_processes)], env)
    else:
        print("    already there")

    _stage(3, total, f"train the conditional model on both modalities at once (nnUNetv2_train -tr {trainer}, "
                     f"device {device})")
    fold = Path(env["nnUNet_results"]) / dataset / f"{trainer}__nnUNetPlansCIN__3d_fullres" / "fold_0"
    train = ["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", trainer, "-p", "nnUNetPlansCIN",
             "-device", device]
    state = training_state(fold)
    if state in (DONE, VALIDATE):  # the demo predicts with checkpoint_final; nnU-Net's own validation is extra
        print("    already trained")
    elif state == CONTINUE:
        print(f"    continuing the interrupted training from epoch {prepare_continue(fold)}")
        _run(train + ["--c"], env)
    else:
        _run(train, env)

    _stage(4, total, "predict the held-out cases of each modality (nnUNetv2_predict_cin -m ...)")
    predictions = output / "predictions"
    for modality in MODALITIES:
        inputs = output / f"test_inputs_{modality}"
        inputs.mkdir(exist_ok=True)
        images = sorted((raw / "imagesTs").glob(f"{modality.lower()}_*_0000.nii.gz"))
        for f in images:
            if not (inputs / f.name).exists():
                shutil.copy2(f, inputs / f.name)
        if all((predictions / f"{case_id_from_image_file(f.name, '.nii.gz')}.nii.gz").is_file() for f in images):
            print(f"    {modality}: already predicted")
            continue
        _run(["nnUNetv2_predict_cin", "-i", str(inputs), "-o", str(predictions), "-d", str(DATASET_ID), "-c",
              "3d_fullres", "-f", "0", "-tr", trainer, "-p", "nnUNetPlansCIN", "-m", modality, "-device", device,
              "-npp", "1", "-nps", "1", "--continue_prediction"], env)  # a rerun skips finished cases

    _stage(5, total, "evaluate per modality and structure (nnUNetv2_evaluate_cin)")
    evaluation = output / "evaluation.json"
    if _newer_than(evaluation, predictions.glob("*.nii.gz")):
        print("    already evaluated")
    else:
        _run(["nnUNetv2_evaluate_cin", "-ref", str(raw / "labelsTs"), "-pred", str(predictions), "-d",
              str(DATASET_ID), "-o", str(evaluation)], env)

    _stage(6, total, "overlays")
    for modality in MODALITIES:
        case = case_id_from_label_file(sorted((raw / "labelsTs").glob(f"{modality.lower()}_*.nii.gz"))[0].name,
                                       ".nii.gz")
        png = output / f"overlay_{modality}.png"
        if _newer_than(png, [predictions / f"{case}.nii.gz"]):
            print(f"    {png} (already there)")
            continue
        write_overlay(raw / "imagesTs" / f"{case}_0000.nii.gz", raw / "labelsTs" / f"{case}.nii.gz",
                      predictions / f"{case}.nii.gz", png, f"{modality} {case}: one conditioned model")
        print(f"    {png}")
    print(f"\nDemo finished in {(time.time() - started) / 60:.1f} min. Everything is in {output}")
    return output


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="nnunet-cin demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args)


def add_arguments(parser):
    parser.add_argument("-o", "--output", default="nnunet_cin_demo", help="output folder (default: %(default)s)")
    parser.add_argument("-device", "--device", default=None, choices=("cpu", "cuda", "mps"),
                        help="default: cuda when available, else cpu")
    parser.add_argument("--quick", action="store_true", help="plumbing check only: 2 epochs of 2 iterations and "
                                                             "3 small cases per modality (the model learns nothing)")


def run(args) -> int:
    kwargs = dict(cases_per_modality=3, test_cases=1, shape=(24, 24, 24)) if args.quick else {}
    try:
        run_demo(Path(args.output), args.device or default_device(), quick=args.quick, **kwargs)
    except subprocess.CalledProcessError as e:
        print(f"nnunet-cin demo: error: {' '.join(e.cmd)} failed (exit {e.returncode}); rerun the same command to "
              f"continue where it stopped", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
