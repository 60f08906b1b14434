"""nnUNetTrainerCSwinUNETR: nnUNetTrainerCViT with a conditional Swin transformer encoder (C-Swin-UNETR).

Everything but the network is nnUNetTrainerCViT's (and so nnUNetTrainerCIN's: mixed-modality batches, conditioning
of every forward pass, folds, per-modality reporting, checkpoints with the modality names, AdamW with warm-up).
The network: nnunet_cin.swin.ConditionalSwinUNETR, Swin blocks whose two pre-norms, the patch-merging norms and the
norms of the hidden states are CIN over the token features, Swin-UNETR's encoder-side conv blocks with CIN, and its
decoder with plain instance norm. The trainer writes its architecture entry (class path + every hyper-parameter)
and the patch size adjusted by nnunet_cin.swin.adjust_patch_size (sides multiples of token_patch_size * 2^stages,
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
from copy import deepcopy
from typing import List, Sequence, Union

import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_cin.swin import ConditionalSwinUNETR, adjust_patch_size, deep_supervision_scales
from nnunet_cin.trainers.nnUNetTrainerCIN import add_schedules
from nnunet_cin.trainers.nnUNetTrainerCViT import nnUNetTrainerCViT
from nnunet_cin.vit import as_tuple

SWIN_UNETR_CLASS = f"{ConditionalSwinUNETR.__module__}.{ConditionalSwinUNETR.__name__}"


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
        patch_size = adjust_patch_size(resolved.patch_size, self.token_patch_size, len(self.depths))
        ndim = len(patch_size)
        arch_kwargs = {
            "patch_size": patch_size, "token_patch_size": list(as_tuple(self.token_patch_size, ndim)),
            "feature_size": self.feature_size, "depths": list(self.depths), "num_heads": list(self.num_heads),
            "window_size": list(as_tuple(self.window_size, ndim)), "mlp_ratio": self.mlp_ratio,
            "num_modalities": len(plans["cin"]["modalities"]), "norm": "cin" if self.conditioned else "layernorm",
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
        return deep_supervision_scales(kwargs["token_patch_size"], len(kwargs["depths"]), len(kwargs["patch_size"]))


add_schedules(nnUNetTrainerCSwinUNETR, globals())
