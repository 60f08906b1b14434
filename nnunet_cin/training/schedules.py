"""nnU-Net-style schedules: the `_1epoch` ... `_250epochs` trainer variants, and a poly learning-rate decay with a
linear warm-up (the transformer trainers' recipe)."""
import math
import sys
from typing import Dict

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

SCHEDULES = (1, 5, 10, 20, 50, 100, 250)
LR_DECAYS = ("poly", "cosine")

def schedule_suffix(epochs: int) -> str:
    return "_1epoch" if epochs == 1 else f"_{epochs}epochs"  # nnU-Net's naming


def add_schedules(base: type, namespace: dict, schedules=SCHEDULES) -> None:
    """Module-level classes `<base>_1epoch`, `<base>_<n>epochs` for every n in schedules."""
    for n in schedules:
        name = base.__name__ + schedule_suffix(n)
        namespace[name] = type(name, (base,), {"schedule_epochs": n, "__module__": namespace["__name__"],
                                               "__qualname__": name, "__doc__": f"{base.__name__}, {n} epochs."})


def schedule_variants(base: type) -> Dict[str, type]:
    """{name: class} of the schedule variants `add_schedules` made for `base` (for re-export where nnU-Net looks)."""
    module = sys.modules[base.__module__]
    return {n: getattr(module, n) for n in (base.__name__ + schedule_suffix(e) for e in SCHEDULES)}


class WarmupPolyLRScheduler(PolyLRScheduler):
    """nnU-Net's PolyLRScheduler with a linear warm-up: lr(step) for step = 0, 1, ... (nnU-Net steps once per epoch,
    with the epoch number):
        step < W:  initial_lr * (step + 1) / W
        else:      initial_lr * (1 - (step - W) / (max_steps - W)) ** exponent      (decay="poly")
                   initial_lr * 0.5 * (1 + cos(pi * (step - W) / (max_steps - W)))   (decay="cosine")
    warmup_steps=0 with decay="poly" is PolyLRScheduler exactly."""

    def __init__(self, optimizer, initial_lr: float, max_steps: int, warmup_steps: int = 0, exponent: float = 0.9,
                 decay: str = "poly", current_step: int = None):
        if decay not in LR_DECAYS:
            raise ValueError(f"decay must be one of {LR_DECAYS}, got {decay!r}")
        if not 0 <= warmup_steps < max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps={max_steps}), got {warmup_steps}")
        self.warmup_steps, self.decay = int(warmup_steps), decay
        super().__init__(optimizer, initial_lr, max_steps, exponent, current_step)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.initial_lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.max_steps - self.warmup_steps))
        if self.decay == "cosine":
            return self.initial_lr * 0.5 * (1 + math.cos(math.pi * progress))
        return self.initial_lr * (1 - progress) ** self.exponent

    def step(self, current_step=None):
        # nnU-Net's PolyLRScheduler.step body with lr_at() in place of its formula (it has no hook for the formula)
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        new_lr = self.lr_at(current_step)
        for param_group in self.optimizer.param_groups:
            param_group['lr'] = new_lr
        self._last_lr = [group['lr'] for group in self.optimizer.param_groups]
