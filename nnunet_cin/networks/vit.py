"""Conditional Vision Transformer (C-ViT): a ViT encoder whose pre-normalizations are CIN over the token features.

A C-ViT block is the usual pre-norm ViT block
    x = x + Attention(norm1(x));  x = x + MLP(norm2(x))
with norm1/norm2 a conditional instance norm over the tokens: for tokens x of shape (B, N, C), each sample's
channel c is normalized with the mean/variance of its N tokens, then scaled and shifted by its modality's row
of (weight, bias). norm="layernorm" builds the unconditioned reference: the same blocks with nn.LayerNorm.
Modalities reach the blocks like every other CIN layer: `with nnunet_cin.condition(network, modality): ...`.
"""
import math
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.patch_encode_decode import PatchEmbed
from timm.layers import Mlp
from torch import nn

from nnunet_cin.cin import ConditionalInstanceNorm1d
from nnunet_cin.networks.blocks import as_tuple

NORMS = ("cin", "layernorm")


class TokenConditionalInstanceNorm(ConditionalInstanceNorm1d):
    """CIN over token features: tokens (B, N, C) -> (B, C, N) -> ConditionalInstanceNorm1d -> (B, N, C).

    Statistics per sample and channel over the N tokens; parameters `weight`, `bias` of shape
    (num_modalities, C) exactly as in every other CIN layer (so `condition()` and `cin_layers()` find it).
    """

    def forward(self, x: torch.Tensor, modality=None) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"{type(self).__name__} expects tokens of shape (batch, tokens, channels), "
                             f"got {tuple(x.shape)}")
        return super().forward(x.transpose(1, 2), modality).transpose(1, 2)


def token_norm(norm: str, dim: int, num_modalities: int, eps: float = 1e-5) -> nn.Module:
    """The pre-normalization of a transformer sub-layer: CIN over tokens ("cin") or nn.LayerNorm ("layernorm")."""
    if norm == "cin":
        return TokenConditionalInstanceNorm(dim, num_modalities, eps=eps)
    if norm == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class SelfAttention(nn.Module):
    """Multi-head self-attention with torch's fused F.scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block; with norm="cin" this is the C-ViT block of the paper."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 dropout: float = 0.0, attn_dropout: float = 0.0, norm: str = "cin", num_modalities: int = 2,
                 eps: float = 1e-5):
        super().__init__()
        self.norm1 = token_norm(norm, dim, num_modalities, eps)
        self.attn = SelfAttention(dim, num_heads, qkv_bias, attn_dropout, dropout)
        self.norm2 = token_norm(norm, dim, num_modalities, eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ConditionalViT(nn.Module):
    """ViT encoder: patch embedding (conv with stride = token patch size), learnable position embedding, `depth`
    blocks, and a final norm of the same kind (CIN or LayerNorm) on the last block's output.

    forward(x) returns the hidden states after the blocks listed in `feature_depths` (1-based, last == depth; the
    last one after the final norm) as feature maps (B, hidden_size, *token_grid).

    The position embedding is learned for the token grid of `image_size` (rounded up to whole tokens); inputs with
    another grid get it interpolated (linear), so any input size whose sides are multiples of the token patch works.
    """

    def __init__(self, input_channels: int, image_size: Sequence[int], token_patch_size: Union[int, Sequence[int]] = 16,
                 hidden_size: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 feature_depths: Sequence[int] = (3, 6, 9, 12), qkv_bias: bool = False, dropout: float = 0.0,
                 attn_dropout: float = 0.0, norm: str = "cin", num_modalities: int = 2, eps: float = 1e-5):
        super().__init__()
        ndim = len(image_size)
        self.token_patch_size = as_tuple(token_patch_size, ndim)
        self.feature_depths = tuple(int(d) for d in feature_depths)
        if (list(self.feature_depths) != sorted(set(self.feature_depths)) or self.feature_depths[0] < 1
                or self.feature_depths[-1] != depth):
            raise ValueError(f"feature_depths must increase strictly from >= 1 and end at depth={depth}, "
                             f"got {self.feature_depths}")
        self.grid = tuple(math.ceil(s / p) for s, p in zip(image_size, self.token_patch_size))
        self.patch_embed = PatchEmbed(self.token_patch_size, input_channels, hidden_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.grid), hidden_size))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            ViTBlock(hidden_size, num_heads, mlp_ratio, qkv_bias, dropout, attn_dropout, norm, num_modalities, eps)
            for _ in range(depth))
        self.norm = token_norm(norm, hidden_size, num_modalities, eps)

    def position_embedding(self, grid: Tuple[int, ...]) -> torch.Tensor:
        if grid == self.grid:
            return self.pos_embed
        c = self.pos_embed.shape[-1]
        pe = self.pos_embed.reshape(1, *self.grid, c).movedim(-1, 1)
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(grid)]
        pe = F.interpolate(pe, size=grid, mode=mode, align_corners=False)
        return pe.movedim(1, -1).reshape(1, -1, c)

    def forward(self, x: torch.Tensor) -> list:
        x = self.patch_embed(x)  # (B, C, *grid)
        grid = tuple(x.shape[2:])
        x = self.pos_drop(x.flatten(2).transpose(1, 2) + self.position_embedding(grid))  # (B, N, C)
        features = []
        for d, block in enumerate(self.blocks, start=1):
            x = block(x)
            if d in self.feature_depths:
                features.append(self.norm(x) if d == len(self.blocks) else x)
        return [f.transpose(1, 2).reshape(f.shape[0], f.shape[2], *grid) for f in features]
