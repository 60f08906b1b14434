"""Continuing an interrupted run (`nnUNetv2_train ... --c`): how often our trainers write checkpoint_latest.pth.

nnU-Net writes checkpoint_latest.pth every `save_every` = 50 epochs, so a run of 50 epochs or fewer (our `_1epoch` ...
`_50epochs` schedules, the demo's 30) never has one, and `--c` after an interruption starts again from epoch 0.
Our trainers also write it at the end of an epoch when, since the last write (or the start of this run), either
- `every_epochs` epochs have ended (default: a tenth of the schedule, at least 1), or
- `every_minutes` minutes have passed (default 5),
so an interrupted run loses at most a tenth of its epochs or a few minutes. Everything else is nnU-Net's: its own
writes every `save_every` epochs, none after the last epoch (checkpoint_final.pth follows), checkpoint_latest.pth
removed when the run ends.
"""
import time
from typing import Callable, Optional


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
