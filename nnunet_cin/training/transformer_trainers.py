"""nnUNetTrainerCViT: nnUNetTrainerCIN with a conditional ViT encoder (C-ViT) in a UNETR-style network.

Everything but the network and the optimizer is nnUNetTrainerCIN's (mixed-modality batches, conditioning of every
forward pass, folds, per-modality reporting, checkpoints with the modality names). What changes:
- the network: nnunet_cin.networks.unetr.ConditionalUNETR, a ViT encoder whose two pre-norms per block (and final norm) are
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
from copy import deepcopy
from typing import List, Sequence, Union

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN
from nnunet_cin.training.schedules import WarmupPolyLRScheduler, add_schedules
from nnunet_cin.networks.blocks import adjust_patch_size, as_tuple, deep_supervision_scales
from nnunet_cin.networks.swin import ConditionalSwinUNETR, decoder_strides, patch_divisor
from nnunet_cin.networks.unet import plans_class_path
from nnunet_cin.networks.unetr import ConditionalUNETR, stage_strides
from nnunet_cin.plans import CINPlans

UNETR_CLASS = plans_class_path(ConditionalUNETR)


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
        # nnUNetTrainerCIN has written the (conditional or plain) conv U-Net of the plans and the modalities; put the
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
            "feature_size": self.feature_size, "num_modalities": len(CINPlans(plans).modalities),
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
        return deep_supervision_scales(stage_strides(self.configuration_manager.network_arch_init_kwargs["token_patch_size"]))

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




class nnUNetTrainerViTJoint(nnUNetTrainerCViT):
    """The unconditioned reference of nnUNetTrainerCViT: the same UNETR with LayerNorm before every transformer sub-layer
    (and instance norm in every conv block), the same data pipeline and recipe: the paper's joint-training ViT baseline."""
    conditioned = False


# ------------------------------------------------------------------------------------------------------ C-Swin
"""nnUNetTrainerCSwinUNETR: nnUNetTrainerCViT with a conditional Swin transformer encoder (C-Swin-UNETR).

Everything but the network is nnUNetTrainerCViT's (and so nnUNetTrainerCIN's: mixed-modality batches, conditioning
of every forward pass, folds, per-modality reporting, checkpoints with the modality names, AdamW with warm-up).
The network: nnunet_cin.networks.swin.ConditionalSwinUNETR, Swin blocks whose two pre-norms, the patch-merging norms and the
norms of the hidden states are CIN over the token features, Swin-UNETR's encoder-side conv blocks with CIN, and its
decoder with plain instance norm. The trainer writes its architecture entry (class path + every hyper-parameter)
and the patch size adjusted by nnunet_cin.networks.swin.adjust_patch_size (sides multiples of token_patch_size * 2^stages,
32 by default, and at least two tokens at the deepest stage) into the plans it trains; nnU-Net saves them as the
model folder's plans.json, from which nnUNetv2_predict_cin / get_network_from_plans rebuild the network.

Hyper-parameters (class attributes; change them in a subclass, as nnU-Net's variants do). Defaults are Swin-UNETR's
(Hatamizadeh et al. 2022; MONAI SwinUNETR, feature_size 48), the network of the paper's C-Swin-UNETR:
    token_patch_size = 2            voxels per token side (int or per axis)
    feature_size = 48               Swin embedding dimension F; stage i has 2^i F channels (48 ... 768)
    depths = (2, 2, 2, 2)           Swin blocks per stage (S = 4 stages: patch sides multiples of 2 * 2^4 = 32)
    num_heads = (3, 6, 12, 24)      attention heads per stage (2^i F divisible by num_heads[i])
    window_size = 7                 window side in tokens; every second block shifted by 3
    mlp_ratio = 4.0, qkv_bias = True, dropout = attn_dropout = 0.0, drop_path_rate = 0.0
    use_checkpoint = False          activation checkpointing of every Swin block (about -30% peak memory for
                                    about +20..100% step time; see benchmarks/bench_swin.py)
Training recipe: nnUNetTrainerCViT's (AdamW, initial_lr 1e-4, weight_decay 1e-5, 50 warm-up epochs capped at a
tenth of the schedule, then poly decay; lr_decay = "cosine" for the paper's schedule).

nnUNetTrainerSwinUNETRJoint is the unconditioned reference: the same network with LayerNorm in the transformer and
instance norm in every conv block.

NOTE: nnU-Net imports the files of this folder as top-level modules: import our code absolutely.
"""
SWIN_UNETR_CLASS = plans_class_path(ConditionalSwinUNETR)


class nnUNetTrainerCSwinUNETR(nnUNetTrainerCViT):
    plans_network_class = SWIN_UNETR_CLASS
    # network (Swin-UNETR); see the module docstring
    token_patch_size: Union[int, Sequence[int]] = 2
    feature_size = 48
    depths: Sequence[int] = (2, 2, 2, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: Union[int, Sequence[int]] = 7
    mlp_ratio = 4.0
    qkv_bias = True
    dropout = 0.0
    attn_dropout = 0.0
    drop_path_rate = 0.0
    use_checkpoint = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        kwargs = self.configuration_manager.network_arch_init_kwargs
        self.print_to_log_file(f"Swin-UNETR patch size {self.configuration_manager.patch_size}: sides are multiples of "
                               f"token patch {kwargs['token_patch_size']} x 2^{len(kwargs['depths'])} stages, with at "
                               f"least two tokens at the deepest stage.")

    def unetr_plans(self, plans: dict, configuration: str) -> dict:
        """Copy of `plans` whose `configuration` describes this trainer's Swin-UNETR: architecture entry with every
        hyper-parameter, patch size adjusted to what patch embedding and merging need."""
        plans = deepcopy(plans)
        resolved = PlansManager(plans).get_configuration(configuration)
        patch_size = adjust_patch_size(resolved.patch_size, patch_divisor(self.token_patch_size, len(self.depths),
                                                                        len(resolved.patch_size)))
        ndim = len(patch_size)
        arch_kwargs = {
            "patch_size": patch_size, "token_patch_size": list(as_tuple(self.token_patch_size, ndim)),
            "feature_size": self.feature_size, "depths": list(self.depths), "num_heads": list(self.num_heads),
            "window_size": list(as_tuple(self.window_size, ndim)), "mlp_ratio": self.mlp_ratio,
            "num_modalities": len(CINPlans(plans).modalities), "norm": "cin" if self.conditioned else "layernorm",
            "qkv_bias": self.qkv_bias, "dropout": self.dropout, "attn_dropout": self.attn_dropout,
            "drop_path_rate": self.drop_path_rate, "use_checkpoint": self.use_checkpoint}
        plans["configurations"][configuration].update(
            patch_size=patch_size, architecture={"network_class_name": SWIN_UNETR_CLASS, "arch_kwargs": arch_kwargs,
                                                 "_kw_requires_import": []})
        return plans

    def _get_deep_supervision_scales(self) -> Union[List[List[float]], None]:
        if not self.enable_deep_supervision:
            return None
        kwargs = self.configuration_manager.network_arch_init_kwargs
        return deep_supervision_scales(decoder_strides(kwargs["token_patch_size"], len(kwargs["depths"]),
                                                       len(kwargs["patch_size"])))


class nnUNetTrainerSwinUNETRJoint(nnUNetTrainerCSwinUNETR):
    """The unconditioned reference of nnUNetTrainerCSwinUNETR: LayerNorm in the transformer, in patch merging and on the
    hidden states, instance norm in every conv block; the paper's joint-training Swin baseline."""
    conditioned = False


for _trainer in (nnUNetTrainerCViT, nnUNetTrainerViTJoint, nnUNetTrainerCSwinUNETR, nnUNetTrainerSwinUNETRJoint):
    add_schedules(_trainer, globals())
