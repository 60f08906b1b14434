"""UNETR-style segmentation network with a C-ViT encoder, constructible by nnU-Net's get_network_from_plans.

Layout (Hatamizadeh et al., UNETR, WACV 2022; token patch p = 2^n per axis):
  encoder   stem: residual conv block on the image                                   -> stride 1,   F channels
            C-ViT on tokens of p voxels; hidden states of `feature_depths` d_1..d_n:
            d_j (j < n): transposed convs (+ residual conv blocks) up to stride 2^j   -> 2^j * F channels
            d_n (after the final norm): the bottleneck at stride p                   -> hidden_size channels
  decoder   for j = n-1 .. 0: transposed conv (x2) of the coarser map, concatenated with skip j, residual block
            segmentation head (1x1 conv) on every decoder stage: outputs at strides 1, 2, ..., p/2
Encoder-side normalizations (ViT pre-norms and final norm, stem and skip conv blocks) are CIN with
norm="cin"; the decoder keeps plain InstanceNorm, like the conditional conv U-Net. norm="layernorm" is the
unconditioned reference: LayerNorm in the ViT, InstanceNorm in every conv block, otherwise identical.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunet_cin.networks.blocks import ConvBlocks, SkipDecoder, as_tuple, encoder_decoder_blocks, run_padded
from nnunet_cin.networks.vit import NORMS, ConditionalViT


def _levels(token_patch_size: Sequence[int]) -> Tuple[int, ...]:
    levels = []
    for p in token_patch_size:
        if p < 1 or p & (p - 1):
            raise ValueError(f"token patch sizes must be powers of two, got {tuple(token_patch_size)}")
        levels.append(p.bit_length() - 1)
    if max(levels) < 1:
        raise ValueError(f"token patch size {tuple(token_patch_size)} has no axis > 1: nothing to decode")
    return tuple(levels)


def stage_strides(token_patch_size: Sequence[int]) -> List[Tuple[int, ...]]:
    """Per-axis upsampling factors of the decoder stages, fine to coarse (the `up_strides` of
    nnunet_cin.networks.blocks.deep_supervision_scales): step k (1-based) of n = log2(max p) doubles axis i when
    k > n - log2(p_i) (an axis with a smaller token side is pooled in the coarse steps only, as nnU-Net pools the
    axis with the coarse spacing last)."""
    levels = _levels(token_patch_size)
    n = max(levels)
    return [tuple(2 if k > n - lv else 1 for lv in levels) for k in range(1, n + 1)]


def default_feature_depths(depth: int, n: int) -> Tuple[int, ...]:
    """n depths spread evenly over the blocks, ending at the last one (12 blocks, n=4: 3, 6, 9, 12)."""
    if depth < n:
        raise ValueError(f"the decoder needs {n} hidden states but the ViT has only {depth} blocks")
    return tuple(round(depth * (i + 1) / n) for i in range(n))


class UNETREncoder(nn.Module):
    """C-ViT plus UNETR's convolutional skip paths; forward returns the skips, fine to coarse, then the bottleneck."""

    def __init__(self, vit: ConditionalViT, input_channels: int, feature_size: int, strides, blocks: ConvBlocks):
        super().__init__()
        n = len(strides)
        hidden = vit.pos_embed.shape[-1]
        self.vit = vit
        self.stem = blocks.res(input_channels, feature_size)
        self.skips = nn.ModuleList()
        for j in range(1, n):  # hidden state j-1 -> stride 2^j: n - j upsamplings (UNETR's PrUp block)
            c = feature_size * 2 ** j
            layers = [blocks.up(hidden, c, strides[n - 1])]
            for k in range(n - 2, j - 1, -1):
                layers += [blocks.up(c, c, strides[k]), blocks.res(c, c)]
            self.skips.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        hidden = self.vit(x)
        return [self.stem(x)] + [skip(h) for skip, h in zip(self.skips, hidden[:-1])] + [hidden[-1]]


class UNETRDecoder(SkipDecoder):
    """UNETR's upsampling path: one stage per power of two of the token patch."""

    def __init__(self, hidden_size: int, feature_size: int, num_classes: int, strides, blocks: ConvBlocks,
                 deep_supervision: bool):
        super().__init__(deep_supervision)
        n = len(strides)
        cin = hidden_size
        for j in range(n - 1, -1, -1):  # coarse to fine; stage j ends at stride 2^j
            c = feature_size * 2 ** j
            self.add_stage(blocks, cin, c, strides[j], num_classes)
            cin = c


class ConditionalUNETR(nn.Module):
    """UNETR with a conditional ViT encoder (C-ViT), built from nnU-Net plans.

    Run it inside `with nnunet_cin.condition(net, modality):` (norm="cin"); norm="layernorm" needs no modality.

    Args (defaults: UNETR-Base of the paper / MONAI's UNETR):
        input_channels, num_classes: as passed by nnU-Net's get_network_from_plans.
        patch_size: the training patch size (plans); sets the learned position-embedding grid. Best a multiple of
            token_patch_size (see nnunet_cin.networks.blocks.adjust_patch_size); other input sizes are zero-padded
            up to a multiple inside forward and the logits cropped back, so sliding-window inference works with any
            patch size.
        token_patch_size=16: voxels per token side (int or one power of two per axis). Sets the number of
            decoder stages n = log2(max side) (16 -> 4, 8 -> 3).
        hidden_size=768, depth=12, num_heads=12, mlp_ratio=4.0: the ViT (MLP hidden = mlp_ratio * hidden_size).
        feature_depths=None: the n blocks (1-based) whose outputs feed the decoder, last == depth; default evenly
            spread (12 blocks, n=4: 3, 6, 9, 12 as in UNETR).
        feature_size=16: channels of the full-resolution stage; stage j has feature_size * 2^j.
        num_modalities=2: CIN rows per layer.  norm="cin" | "layernorm".
        deep_supervision=False: return the logits of every decoder stage (strides 1, 2, ..., p/2, full resolution
            first; scales: blocks.deep_supervision_scales(stage_strides(token_patch_size))) instead of the
            full-resolution logits only. Toggled later through `decoder.deep_supervision`, as nnU-Net does. Every
            segmentation head exists either way (same state dict); train with deep supervision on so that each gets
            gradients.
        qkv_bias=False, dropout=0.0, attn_dropout=0.0, eps=1e-5: ViT details (eps for CIN/LayerNorm).
    """

    def __init__(self, input_channels: int, num_classes: int, patch_size: Sequence[int],
                 token_patch_size: Union[int, Sequence[int]] = 16, hidden_size: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, feature_depths: Optional[Sequence[int]] = None,
                 feature_size: int = 16, num_modalities: int = 2, norm: str = "cin", deep_supervision: bool = False,
                 qkv_bias: bool = False, dropout: float = 0.0, attn_dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        ndim = len(patch_size)
        self.token_patch_size = as_tuple(token_patch_size, ndim)
        strides = stage_strides(self.token_patch_size)
        if feature_depths is None:
            feature_depths = default_feature_depths(depth, len(strides))
        if len(feature_depths) != len(strides):
            raise ValueError(f"token patch {self.token_patch_size} makes {len(strides)} decoder stages, which need "
                             f"{len(strides)} feature_depths; got {tuple(feature_depths)}")
        vit = ConditionalViT(input_channels, patch_size, self.token_patch_size, hidden_size, depth, num_heads,
                             mlp_ratio, feature_depths, qkv_bias, dropout, attn_dropout, norm, num_modalities, eps)
        encoder_blocks, decoder_blocks = encoder_decoder_blocks(ndim, norm, num_modalities, eps)
        self.encoder = UNETREncoder(vit, input_channels, feature_size, strides, encoder_blocks)
        self.decoder = UNETRDecoder(hidden_size, feature_size, num_classes, strides, decoder_blocks,
                                    deep_supervision)

    def forward(self, x: torch.Tensor):
        return run_padded(lambda v: self.decoder(self.encoder(v)), x, self.token_patch_size)

    @staticmethod
    def initialize(module: nn.Module):
        """nnU-Net applies this to every module (get_network_from_plans, allow_init=True): He init for convs
        (as nnU-Net), truncated normal for the transformer's linear layers (as ViT)."""
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        else:
            InitWeights_He(1e-2)(module)
