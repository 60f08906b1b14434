"""A poly learning-rate decay with a linear warm-up (the transformer trainers' recipe). The `_1epoch` ... `_250epochs`
trainer variants: nnunet_cin.training.training_length; a run's length from class attributes:
nnunet_cin.training.mixins.ShortSchedule."""
import math

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

LR_DECAYS = ("poly", "cosine")


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
        # PolyLRScheduler.step's body with lr_at() in place of its formula (it has no hook for the formula)
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        new_lr = self.lr_at(current_step)
        for param_group in self.optimizer.param_groups:
            param_group['lr'] = new_lr
        self._last_lr = [group['lr'] for group in self.optimizer.param_groups]
