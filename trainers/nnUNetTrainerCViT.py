"""nnUNetTrainerCViT: nnUNetTrainerCIN with a conditional ViT encoder (C-ViT) in a UNETR-style network.

Everything but the network and the optimizer is nnUNetTrainerCIN's (mixed-modality batches, conditioning of every
forward pass, folds, per-modality reporting, checkpoints with the modality names). What changes:
- the network: nnunet_cin.unetr.ConditionalUNETR, a ViT encoder whose two pre-norms per block (and final norm) are
  CIN over the token features, UNETR's convolutional skips (CIN) and decoder (plain instance norm). The trainer
  writes its architecture entry into the plans configuration it trains (class path + keyword arguments, like any
  nnU-Net architecture), together with the patch size rounded up to a multiple of the token patch size. That copy of
  the plans is what nnU-Net saves as the model folder's plans.json, so nnU-Net's get_network_from_plans rebuilds the
  network at inference (nnUNetv2_predict_cin / nnUNetv2_predict, unchanged) and the model folder documents the
  hyper-parameters it was trained with.
- deep supervision: one output per decoder stage (strides 1, 2, ..., token/2), scales from the token patch size.
- the optimizer: AdamW with a linear warm-up, then nnU-Net's poly decay (or cosine, `lr_decay`), per epoch.

Hyper-parameters (class attributes; change them in a subclass, as nnU-Net's variants do):
    token_patch_size = 16     voxels per token side (int, or one power of two per axis). Sets the decoder depth:
                              log2(16) = 4 upsampling stages. The plans patch size is rounded up to a multiple.
    hidden_size = 768         token features
    depth = 12                transformer blocks
    num_heads = 12            attention heads (hidden_size must be divisible by it)
    mlp_ratio = 4.0           MLP hidden = mlp_ratio * hidden_size (3072)
    feature_depths = None     blocks whose outputs feed the decoder (default evenly spread: 3, 6, 9, 12)
    feature_size = 16         channels of the full-resolution conv stage (stage j: feature_size * 2^j)
    dropout = attn_dropout = 0.0, qkv_bias = False
    These are UNETR-Base's values (Hatamizadeh et al. 2022), the network of the paper.

Training recipe (set in __init__ like nnU-Net's own hyper-parameters; change them after super().__init__):
    initial_lr = 1e-4, weight_decay = 1e-5: AdamW, as in the paper (Bastico et al. 2023; their code's defaults;
        the paper tunes the rate in [1e-5, 1e-3])
    warmup_epochs = 50: linear warm-up from initial_lr / warmup_epochs to initial_lr (paper: 50 epochs), capped at a
        tenth of the schedule for short runs (so the _5epochs variant has none)
    lr_decay = "poly": after warm-up, nnU-Net's poly decay (exponent 0.9) to 0 at num_epochs; "cosine" is the
        paper's schedule (MONAI's WarmupCosineSchedule: half a cosine period to 0)
    nnU-Net's epochs (1000 x 250 iterations), batch size, loss (Dice + CE with deep supervision), augmentation and
    gradient clipping (norm 12) stay nnU-Net's. The paper trains 2500 (Lightning) epochs of batch 1 at 96^3 patches
    with Dice + CE; nnU-Net's schedule is longer in iterations.

nnUNetTrainerViTJoint (nnUNetTrainerViTJoint.py) is the unconditioned reference: the same network with LayerNorm in
the transformer and instance norm in every conv block, the same data pipeline.

NOTE: nnU-Net imports the files of this folder as top-level modules: import our code absolutely.
"""
import math
from copy import deepcopy
from typing import List, Sequence, Union

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_cin.trainers.nnUNetTrainerCIN import add_schedules, nnUNetTrainerCIN
from nnunet_cin.unetr import ConditionalUNETR, adjust_patch_size, deep_supervision_scales
from nnunet_cin.vit import as_tuple

UNETR_CLASS = f"{ConditionalUNETR.__module__}.{ConditionalUNETR.__name__}"
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


class nnUNetTrainerCViT(nnUNetTrainerCIN):
    plans_network_class = UNETR_CLASS  # the network class unetr_plans writes into the plans
    # network (UNETR-Base); see the module docstring
    token_patch_size: Union[int, Sequence[int]] = 16
    hidden_size = 768
    depth = 12
    num_heads = 12
    mlp_ratio = 4.0
    feature_depths = None
    feature_size = 16
    dropout = 0.0
    attn_dropout = 0.0
    qkv_bias = False
    # schedule
    warmup_epochs = 50
    lr_decay = "poly"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # nnUNetTrainerCIN has written the (conditional or plain) conv U-Net of the plans and plans["cin"]; put the
        # UNETR in its place. Nothing nnUNetTrainer.__init__ derived from them uses the architecture or the patch size
        # (only the optional W&B logger's config keeps the plans as given).
        planned = self.configuration_manager.patch_size
        self.plans_manager = PlansManager(self.unetr_plans(self.plans_manager.plans, configuration))
        self.configuration_manager = self.plans_manager.get_configuration(configuration)
        if list(self.configuration_manager.patch_size) != list(planned):
            self.print_to_log_file(f"Patch size {list(planned)} of the plans adjusted to "
                                   f"{self.configuration_manager.patch_size} for the transformer's token grid.")
        self.initial_lr = 1e-4
        self.weight_decay = 1e-5

    # ------------------------------------------------------------------------------------------------------ plans
    def unetr_plans(self, plans: dict, configuration: str) -> dict:
        """Copy of `plans` whose `configuration` describes this trainer's UNETR: architecture entry with every
        hyper-parameter, patch size a multiple of the token patch size."""
        plans = deepcopy(plans)
        resolved = PlansManager(plans).get_configuration(configuration)
        patch_size = adjust_patch_size(resolved.patch_size, self.token_patch_size)
        tps = list(as_tuple(self.token_patch_size, len(patch_size)))
        arch_kwargs = {
            "patch_size": patch_size, "token_patch_size": tps, "hidden_size": self.hidden_size, "depth": self.depth,
            "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
            "feature_depths": None if self.feature_depths is None else list(self.feature_depths),
            "feature_size": self.feature_size, "num_modalities": len(plans["cin"]["modalities"]),
            "norm": "cin" if self.conditioned else "layernorm", "qkv_bias": self.qkv_bias, "dropout": self.dropout,
            "attn_dropout": self.attn_dropout}
        plans["configurations"][configuration].update(
            patch_size=patch_size,
            architecture={"network_class_name": UNETR_CLASS, "arch_kwargs": arch_kwargs, "_kw_requires_import": []})
        return plans

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """The network the plans describe (also at inference: the model folder's plans.json)."""
        name = configuration_manager.network_arch_class_name
        if name != cls.plans_network_class:
            raise ValueError(f"these plans describe a {name}, not {cls.plans_network_class}: use the plans.json that "
                             f"{cls.__name__} wrote into its model folder (or let the trainer write it)")
        return get_network_from_plans(name, configuration_manager.network_arch_init_kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import, num_input_channels,
                                      num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)

    def _get_deep_supervision_scales(self) -> Union[List[List[float]], None]:
        if not self.enable_deep_supervision:
            return None
        return deep_supervision_scales(self.configuration_manager.network_arch_init_kwargs["token_patch_size"])

    # -------------------------------------------------------------------------------------------------- optimizer
    def effective_warmup_epochs(self) -> int:
        return min(int(self.warmup_epochs), self.num_epochs // 10)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        warmup = self.effective_warmup_epochs()
        lr_scheduler = WarmupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, warmup, decay=self.lr_decay)
        self.print_to_log_file(f"AdamW, lr {self.initial_lr}, weight decay {self.weight_decay}; {warmup} warm-up "
                               f"epochs, then {self.lr_decay} decay to epoch {self.num_epochs}")
        return optimizer, lr_scheduler

    def checkpoint_entries(self) -> dict:
        entries = super().checkpoint_entries()
        entries["cin"]["recipe"] = {"optimizer": "AdamW", "initial_lr": self.initial_lr,
                                    "weight_decay": self.weight_decay, "warmup_epochs": self.effective_warmup_epochs(),
                                    "lr_decay": self.lr_decay, "num_epochs": self.num_epochs}
        return entries


add_schedules(nnUNetTrainerCViT, globals())
