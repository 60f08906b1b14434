"""nnU-Net trainings run as `nnUNetv2_train` subprocesses (by `nnunet-cin demo` and `nnunet-cin compare`), resumable:
the state a fold's output folder is in, and what makes `--c` continue from the last epoch reached."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List

from nnunet_cin.inference.orphans import signals_passed_on

FINAL, LATEST, BEST = "checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"
NEW, CONTINUE, VALIDATE, DONE = "new", "continue", "validate", "done"


def training_state(fold_folder: Path) -> str:
    """DONE (final checkpoint and final validation), VALIDATE (final checkpoint, validation/summary.json missing),
    CONTINUE (an interrupted training: a latest or best checkpoint) or NEW."""
    fold_folder = Path(fold_folder)
    final = (fold_folder / FINAL).is_file()
    if final and (fold_folder / "validation" / "summary.json").is_file():
        return DONE
    if final:
        return VALIDATE
    if (fold_folder / LATEST).is_file() or (fold_folder / BEST).is_file():
        return CONTINUE
    return NEW


def checkpoint_epoch(checkpoint_file: Path) -> int:
    """The epoch a training continues at from this checkpoint (nnU-Net stores current_epoch + 1)."""
    import torch

    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False, mmap=True)
    return int(checkpoint["current_epoch"])


def prepare_continue(fold_folder: Path) -> int:
    """Make nnU-Net's `--c` continue from the last epoch reached; returns that epoch (the next one to train).

    `nnUNetv2_train --c` loads checkpoint_latest.pth when present, else checkpoint_best.pth. Both hold a whole
    training state (nnU-Net writes them with the same save_checkpoint at the end of an epoch), but a trainer writes
    latest only every `save_every` epochs (nnU-Net's default: 50) and best whenever the EMA pseudo-Dice improves, so
    best can be the newer of the two. Then best is copied over latest (written aside and renamed, so that an
    interruption never leaves half a file), and --c continues from it instead of repeating the epochs in between."""
    fold_folder = Path(fold_folder)
    latest, best = fold_folder / LATEST, fold_folder / BEST
    epochs = {f: checkpoint_epoch(f) for f in (latest, best) if f.is_file()}
    if not epochs:
        raise FileNotFoundError(f"no {LATEST} or {BEST} in {fold_folder}: nothing to continue")
    if latest in epochs and best in epochs and epochs[best] > epochs[latest]:
        partial = fold_folder / f"{LATEST}.{os.getpid()}.partial"
        shutil.copy2(best, partial)
        os.replace(partial, latest)
        epochs[latest] = epochs[best]
    return epochs[latest] if latest in epochs else epochs[best]


def run_logged(command: List[str], env: dict, log_file: Path, verbose: bool = False) -> float:
    """Run `command`, its output appended to log_file (and shown with verbose). Returns the seconds it took; raises
    RuntimeError with the log's tail when it fails."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    # SIGTERM/SIGINT are passed on to the command and it is waited for: nothing outlives the comparison
    with open(log_file, "a") as log, signals_passed_on() as forwarder:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        process = forwarder.started(subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                                     stderr=subprocess.STDOUT, text=True, bufsize=1))
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
