"""The transformer trainers: nnUNetTrainerCIN with a conditional transformer encoder.

Everything but the network and the optimizer is nnUNetTrainerCIN's (mixed-modality batches, conditioning of every
forward pass, folds, per-modality reporting, checkpoints). What changes:
- the network: `configuration_for_training` (nnUNetTrainerCIN's hook) puts the transformer's architecture entry
  (class path + every hyper-parameter, like any nnU-Net architecture) into the plans configuration, together with
  the plans' patch size adjusted to the token grid (nnunet_cin.networks.blocks.adjust_patch_size). nnU-Net saves
  those plans as the model folder's plans.json, so nnU-Net's get_network_from_plans rebuilds the network at
  inference, and the model folder documents the hyper-parameters it was trained with. A plans.json whose
  configuration already holds this trainer's network is kept as it is.
- deep supervision: one output per decoder stage, scales from the decoder's strides.
- the optimizer: AdamW with a linear warm-up, then nnU-Net's poly decay (or cosine, `lr_decay`), per epoch.

nnUNetTrainerCViT: nnunet_cin.networks.unetr.ConditionalUNETR, a ViT encoder (C-ViT) whose two pre-norms per block
(and final norm) are CIN over the token features, UNETR's convolutional skips (CIN) and decoder (plain instance
norm). Deep-supervision outputs at strides 1, 2, ..., token/2. Hyper-parameters (class attributes; change them in a
subclass, as nnU-Net's variants do), UNETR-Base's (Hatamizadeh et al. 2022), the network of the paper:
    token_patch_size = 16     voxels per token side (int, or one power of two per axis). Sets the decoder depth:
                              log2(16) = 4 upsampling stages. The plans patch size is rounded up to a multiple.
    hidden_size = 768         token features
    depth = 12                transformer blocks
    num_heads = 12            attention heads (hidden_size must be divisible by it)
    mlp_ratio = 4.0           MLP hidden = mlp_ratio * hidden_size (3072)
    feature_depths = None     blocks whose outputs feed the decoder (default evenly spread: 3, 6, 9, 12)
    feature_size = 16         channels of the full-resolution conv stage (stage j: feature_size * 2^j)
    dropout = attn_dropout = 0.0, qkv_bias = False

nnUNetTrainerCSwinUNETR: nnunet_cin.networks.swin.ConditionalSwinUNETR, Swin blocks whose two pre-norms, the
patch-merging norms and the norms of the hidden states are CIN over the token features, Swin-UNETR's encoder-side
conv blocks with CIN, and its decoder with plain instance norm. Patch sides: multiples of token_patch_size * 2^stages
(32 by default), at least two tokens at the deepest stage. Defaults are Swin-UNETR's (Hatamizadeh et al. 2022; MONAI
SwinUNETR, feature_size 48), the network of the paper's C-Swin-UNETR:
    token_patch_size = 2            voxels per token side (int or per axis)
    feature_size = 48               Swin embedding dimension F; stage i has 2^i F channels (48 ... 768)
    depths = (2, 2, 2, 2)           Swin blocks per stage (S = 4 stages: patch sides multiples of 2 * 2^4 = 32)
    num_heads = (3, 6, 12, 24)      attention heads per stage (2^i F divisible by num_heads[i])
    window_size = 7                 window side in tokens; every second block shifted by 3
    mlp_ratio = 4.0, qkv_bias = True, dropout = attn_dropout = 0.0, drop_path_rate = 0.0
    use_checkpoint = False          activation checkpointing of every Swin block (about -30% peak memory for
                                    about +20..100% step time; see benchmarks/bench_swin.py)

Training recipe of both (set in __init__ like nnU-Net's own hyper-parameters; change them after super().__init__):
    initial_lr = 1e-4, weight_decay = 1e-5: AdamW, as in the paper (Bastico et al. 2023; their code's defaults;
        the paper tunes the rate in [1e-5, 1e-3])
    warmup_epochs = 50: linear warm-up from initial_lr / warmup_epochs to initial_lr (paper: 50 epochs), capped at a
        tenth of the schedule for short runs (so the _5epochs variant has none)
    lr_decay = "poly": after warm-up, nnU-Net's poly decay (exponent 0.9) to 0 at num_epochs; "cosine" is the
        paper's schedule (MONAI's WarmupCosineSchedule: half a cosine period to 0)
    nnU-Net's epochs (1000 x 250 iterations), batch size, loss (Dice + CE with deep supervision), augmentation and
    gradient clipping (norm 12) stay nnU-Net's. The paper trains 2500 (Lightning) epochs of batch 1 at 96^3 patches
    with Dice + CE; nnU-Net's schedule is longer in iterations.

nnUNetTrainerViTJoint and nnUNetTrainerSwinUNETRJoint are the unconditioned references: the same networks with
LayerNorm in the transformer and instance norm in every conv block, the same data pipeline and recipe (the paper's
joint-training baselines).

NOTE: nnU-Net imports the files of the trainers folder as top-level modules: import our code absolutely.
"""
from typing import List, Sequence, Tuple, Union

import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_cin.networks.blocks import adjust_patch_size, as_tuple, deep_supervision_scales
from nnunet_cin.networks import swin
from nnunet_cin.networks.unet import plans_class_path
from nnunet_cin.networks.unetr import ConditionalUNETR, stage_strides
from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN
from nnunet_cin.training.schedules import WarmupPolyLRScheduler

UNETR_CLASS = plans_class_path(ConditionalUNETR)
SWIN_UNETR_CLASS = plans_class_path(swin.ConditionalSwinUNETR)


class nnUNetTrainerCViT(nnUNetTrainerCIN):
    network_class_name = UNETR_CLASS  # what the plans record as the architecture's network_class_name
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
        planned = PlansManager(plans).get_configuration(configuration).patch_size
        if list(self.configuration_manager.patch_size) != list(planned):
            self.print_to_log_file(f"Patch size {list(planned)} of the plans adjusted to "
                                   f"{self.configuration_manager.patch_size} for the transformer's token grid.")
        self.initial_lr = 1e-4
        self.weight_decay = 1e-5

    # ------------------------------------------------------------------------------------------------------ plans
    @classmethod
    def patch_divisor(cls, ndim: int) -> Tuple[int, ...]:
        """What the sides of an input patch must be multiples of."""
        return as_tuple(cls.token_patch_size, ndim)

    @classmethod
    def transformer_arch_kwargs(cls, patch_size: List[int], num_modalities: int) -> dict:
        """The network's keyword arguments: every hyper-parameter, as the plans record them."""
        return {"patch_size": patch_size, "token_patch_size": list(cls.patch_divisor(len(patch_size))),
                "hidden_size": cls.hidden_size, "depth": cls.depth, "num_heads": cls.num_heads,
                "mlp_ratio": cls.mlp_ratio,
                "feature_depths": None if cls.feature_depths is None else list(cls.feature_depths),
                "feature_size": cls.feature_size, "num_modalities": num_modalities,
                "norm": "cin" if cls.conditioned else "layernorm", "qkv_bias": cls.qkv_bias, "dropout": cls.dropout,
                "attn_dropout": cls.attn_dropout}

    @staticmethod
    def decoder_strides(arch_kwargs: dict) -> List[Tuple[int, ...]]:
        """Per-axis upsampling factors of the network's decoder stages, fine to coarse."""
        return stage_strides(arch_kwargs["token_patch_size"])

    @classmethod
    def configuration_for_training(cls, configuration: dict, modalities: Sequence[str]) -> dict:
        """The plans configuration with this trainer's network: architecture entry with every hyper-parameter, patch
        size adjusted to the token grid. A configuration that holds this trainer's network already (a model folder's
        plans.json) is kept: its hyper-parameters are the ones the weights were trained with."""
        arch = configuration["architecture"]
        norm = "cin" if cls.conditioned else "layernorm"
        if arch["network_class_name"] == cls.network_class_name and arch["arch_kwargs"].get("norm") == norm:
            kwargs = dict(arch["arch_kwargs"], num_modalities=len(modalities))
            return dict(configuration, architecture=dict(arch, arch_kwargs=kwargs))
        patch_size = adjust_patch_size(configuration["patch_size"], cls.patch_divisor(len(configuration["patch_size"])))
        return dict(configuration, patch_size=patch_size, architecture={
            "network_class_name": cls.network_class_name, "_kw_requires_import": [],
            "arch_kwargs": cls.transformer_arch_kwargs(patch_size, len(modalities))})

    def _get_deep_supervision_scales(self) -> Union[List[List[float]], None]:
        if not self.enable_deep_supervision:
            return None
        return deep_supervision_scales(self.decoder_strides(self.configuration_manager.network_arch_init_kwargs))

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


class nnUNetTrainerViTJoint(nnUNetTrainerCViT):
    """The unconditioned reference of nnUNetTrainerCViT: the same UNETR with LayerNorm before every transformer
    sub-layer (and instance norm in every conv block), the same data pipeline and recipe: the paper's joint-training
    ViT baseline."""
    conditioned = False


class nnUNetTrainerCSwinUNETR(nnUNetTrainerCViT):
    network_class_name = SWIN_UNETR_CLASS
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

    @classmethod
    def patch_divisor(cls, ndim: int) -> Tuple[int, ...]:
        return swin.patch_divisor(cls.token_patch_size, len(cls.depths), ndim)

    @classmethod
    def transformer_arch_kwargs(cls, patch_size: List[int], num_modalities: int) -> dict:
        ndim = len(patch_size)
        return {"patch_size": patch_size, "token_patch_size": list(as_tuple(cls.token_patch_size, ndim)),
                "feature_size": cls.feature_size, "depths": list(cls.depths), "num_heads": list(cls.num_heads),
                "window_size": list(as_tuple(cls.window_size, ndim)), "mlp_ratio": cls.mlp_ratio,
                "num_modalities": num_modalities, "norm": "cin" if cls.conditioned else "layernorm",
                "qkv_bias": cls.qkv_bias, "dropout": cls.dropout, "attn_dropout": cls.attn_dropout,
                "drop_path_rate": cls.drop_path_rate, "use_checkpoint": cls.use_checkpoint}

    @staticmethod
    def decoder_strides(arch_kwargs: dict) -> List[Tuple[int, ...]]:
        return swin.decoder_strides(arch_kwargs["token_patch_size"], len(arch_kwargs["depths"]),
                                    len(arch_kwargs["patch_size"]))


class nnUNetTrainerSwinUNETRJoint(nnUNetTrainerCSwinUNETR):
    """The unconditioned reference of nnUNetTrainerCSwinUNETR: LayerNorm in the transformer, in patch merging and on
    the hidden states, instance norm in every conv block; the paper's joint-training Swin baseline."""
    conditioned = False
