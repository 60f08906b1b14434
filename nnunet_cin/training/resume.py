"""Continuing an interrupted run (`nnUNetv2_train ... --c`): how often our trainers write checkpoint_latest.pth, and
which checkpoint `--c` loads when the one nnU-Net chose cannot be read.

nnU-Net writes checkpoint_latest.pth every `save_every` = 50 epochs, so a run of 50 epochs or fewer (our `_1epoch` ...
`_50epochs` schedules, the demo's 30) never has one, and `--c` after an interruption starts again from epoch 0.
Our trainers also write it at the end of an epoch when, since the last write (or the start of this run), either
- `every_epochs` epochs have ended (default: a tenth of the schedule, at least 1), or
- `every_minutes` minutes have passed (default 5),
so an interrupted run loses at most a tenth of its epochs or a few minutes. Everything else is nnU-Net's: its own
writes every `save_every` epochs, none after the last epoch (checkpoint_final.pth follows), checkpoint_latest.pth
removed when the run ends.

`--c` loads the first of checkpoint_final.pth, checkpoint_latest.pth, checkpoint_best.pth that exists (nnU-Net's
order). When that file cannot be read (cut short, corrupt), our trainers name it and load the next one of that order
that can be read: e.g. a truncated checkpoint_latest.pth -> checkpoint_best.pth (written whenever the moving average
of the pseudo-Dice improved: it may be older; the message says at which epoch the run continues). None readable: an
error naming every file; no new training starts on its own (the user decides whether to restore a copy or start
again).
"""
import os
import time
from typing import Callable, List, Optional, Tuple

import torch


def default_every_epochs(num_epochs: int) -> int:
    return max(1, num_epochs // 10)


class LatestCheckpointSchedule:
    def __init__(self, every_epochs: int, every_minutes: Optional[float], clock: Callable[[], float] = time.monotonic):
        if every_epochs < 1:
            raise ValueError(f"checkpoint_latest.pth every {every_epochs} epochs: give 1 or more")
        self.every_epochs, self.every_minutes, self.clock = every_epochs, every_minutes, clock
        self.epochs_since, self.since = 0, clock()

    def epoch_ended(self) -> bool:
        """Count an ended epoch; True when checkpoint_latest.pth is due."""
        self.epochs_since += 1
        return self.epochs_since >= self.every_epochs or (
            self.every_minutes is not None and self.clock() - self.since >= 60 * self.every_minutes)

    def written(self) -> None:
        self.epochs_since, self.since = 0, self.clock()


# ------------------------------------------------------------------------------------------ --c: which checkpoint
# nnU-Net's --c (run_training.maybe_load_checkpoint) takes the first of these that exists, and hands it to the
# trainer's load_checkpoint. When that file cannot be read, our trainers say so and take the next readable one.
CONTINUE_ORDER = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


class UnreadableCheckpoint(RuntimeError):
    """A checkpoint file torch cannot read (cut short, corrupt) or that is no nnU-Net checkpoint."""


def read_checkpoint(path: str) -> dict:
    """The checkpoint at `path`, memory-mapped where torch can (what load_checkpoint inspects before nnU-Net
    loads it); UnreadableCheckpoint naming the file otherwise."""
    try:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # e.g. a checkpoint in torch's legacy format, which cannot be memory-mapped
            saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises RuntimeError, EOFError, pickle and zip errors for a damaged file
        reason = str(e).strip().split("\n")[0].split(". ")[0]  # torch's first sentence; the rest is advice
        raise UnreadableCheckpoint(f"{path} cannot be read ({type(e).__name__}: {reason}); it is probably cut short "
                                   f"(a run killed while writing it, a full disk, an incomplete copy)") from None
    if not isinstance(saved, dict) or "network_weights" not in saved:
        raise UnreadableCheckpoint(f"{path} is not an nnU-Net checkpoint (no 'network_weights')")
    return saved


def checkpoint_to_continue(chosen: str) -> Tuple[str, dict, List[str]]:
    """--c: nnU-Net's choice `chosen` if it can be read, else the next file of nnU-Net's order (CONTINUE_ORDER) in
    the same folder that exists and can be read. Returns (file, its content, what was wrong with the files skipped);
    raises UnreadableCheckpoint naming every file when none can be read."""
    folder, name = os.path.split(chosen)
    later = CONTINUE_ORDER[CONTINUE_ORDER.index(name) + 1:] if name in CONTINUE_ORDER else ()
    skipped = []
    for path in [chosen, *(os.path.join(folder, n) for n in later)]:
        if os.path.isfile(path):
            try:
                return path, read_checkpoint(path), skipped
            except UnreadableCheckpoint as e:
                skipped.append(str(e))
    raise UnreadableCheckpoint(
        "--c found no checkpoint it can read:\n" + "\n".join(f"  {m}" for m in skipped) +
        f"\nNothing was loaded. Put back a good copy, or remove the broken file(s) from {folder} and run "
        f"nnUNetv2_train without --c to start the training again.")
