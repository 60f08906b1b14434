"""Conditional Swin transformer (C-Swin) and a Swin-UNETR-style network, constructible by nnU-Net's
get_network_from_plans.

The C-ViT construction applied to Swin transformer blocks (Liu et al. 2021; Swin-UNETR: Hatamizadeh et al. 2022,
its 3D form as in MONAI). A Swin block is the pre-norm transformer block with attention restricted to windows:
    x = x + WindowAttention(norm1(x));  x = x + MLP(norm2(x))
every other block on windows shifted by half a window (cyclic shift + a mask that keeps attention inside the
regions that were contiguous before the shift). With norm="cin", norm1/norm2, the patch-merging norm and the norms
of the hidden states handed to the decoder are CIN over the tokens (nnunet_cin.networks.vit.token_norm: statistics per
sample and channel over all tokens of the sample, scale/shift of the sample's modality); norm="layernorm" is the
unconditioned reference with otherwise identical weights.

Layout (token patch t, S stages; the defaults t=2, S=4 are Swin-UNETR's):
  encoder   patch embedding (conv, stride t)                                 h_0: stride t,          F channels
            stage i = 1..S: Swin blocks, then patch merging (2x per axis)     h_i: stride t * 2^i,    2^i F
            conv blocks (CIN): on the image (stride 1, F), on h_0 .. h_{S-2}, and on h_S (the bottleneck);
            h_{S-1} is a skip as it is (as in Swin-UNETR)
  decoder   from the bottleneck, per skip (coarse to fine): transposed conv, concatenation, residual conv block
            (plain InstanceNorm); segmentation heads on every decoder stage: strides 1, t, 2t, ..., 2^(S-1) t
Windows: a stage whose token grid is no larger than the window along an axis uses the whole axis as window there
and does not shift it (as Swin-UNETR/MONAI); grids that are not multiples of the window are zero-padded to
whole windows after norm1 and the padded tokens are masked out as keys, so the padding changes nothing.
Relative position bias: one learned table per block over window offsets (2W-1 per axis), shared by all windows.
"""
import math
from contextlib import contextmanager
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.patch_encode_decode import PatchEmbed
from timm.layers import DropPath, Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from nnunet_cin.cin import cin_layers
from nnunet_cin.networks.blocks import ConvBlocks, SkipDecoder, as_tuple, encoder_decoder_blocks, run_padded
from nnunet_cin.networks.unetr import ConditionalUNETR
from nnunet_cin.networks.vit import NORMS, token_norm

MASKED = -1e4  # additive attention score of a forbidden key: exp() underflows to exactly 0 (also in float16)


# ---- windows -------------------------------------------------------------------------------------------------

def effective_window(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]):
    """Per axis: the whole axis as window and no shift where the grid is no larger than the window."""
    w = tuple(g if g <= wi else wi for g, wi in zip(grid, window))
    s = tuple(0 if g <= wi else si for g, wi, si in zip(grid, window, shift))
    return w, s


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, *grid, C), grid a multiple of window -> (B * num_windows, prod(window), C), windows in raster order."""
    b, *grid, c = x.shape
    d = len(grid)
    shape = [b]
    for g, w in zip(grid, window):
        shape += [g // w, w]
    perm = [0] + [1 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)] + [1 + 2 * d]
    return x.reshape(*shape, c).permute(perm).reshape(-1, math.prod(window), c)


def window_reverse(windows: torch.Tensor, window: Sequence[int], grid: Sequence[int], batch: int) -> torch.Tensor:
    """Inverse of window_partition."""
    d, c = len(grid), windows.shape[-1]
    x = windows.reshape(batch, *(g // w for g, w in zip(grid, window)), *window, c)
    perm = [0] + [k for i in range(d) for k in (1 + i, 1 + d + i)] + [1 + 2 * d]
    return x.permute(perm).reshape(batch, *grid, c)


def attention_mask(grid: Sequence[int], padded: Sequence[int], window: Sequence[int], shift: Sequence[int],
                   device=None) -> Optional[torch.Tensor]:
    """Which keys each query of a window may attend, for the windows of the padded grid cyclically shifted by
    -shift: (num_windows, N, N) bool (True = allowed), or None when every key is allowed (no shift, no padding).

    Allowed: key and query come from the same region, i.e. no axis wrapped around for one and not the other
    (shifted windows never join the two ends of an axis), and the key is a real token, not padding."""
    if not any(shift) and tuple(grid) == tuple(padded):
        return None
    region = torch.zeros(padded, dtype=torch.long, device=device)
    real = torch.ones(padded, dtype=torch.bool, device=device)
    for axis, (g, L, s) in enumerate(zip(grid, padded, shift)):
        j = torch.arange(L, device=device)  # position in the shifted grid; it holds token (j + s) % L
        view = [1] * len(padded)
        view[axis] = L
        region = region * 2 + (j >= L - s).long().reshape(view) if s else region * 2
        real = real & (((j + s) % L) < g).reshape(view)
    ids = window_partition(torch.stack((region, real.long()), -1)[None], window)  # (nW, N, 2)
    same = ids[:, :, None, 0] == ids[:, None, :, 0]
    return same & ids[:, None, :, 1].bool()


def relative_position_index(window: Sequence[int], max_window: Sequence[int], device=None) -> torch.Tensor:
    """(N, N) index into a (prod(2 * max_window - 1), heads) bias table for query i, key j of a window of size
    `window` <= max_window: the table row of the offset coord(i) - coord(j)."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(w, device=device) for w in window), indexing="ij"))
    coords = coords.flatten(1)  # (d, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (d, N, N)
    index = torch.zeros(rel.shape[1:], dtype=torch.long, device=device)
    for axis, m in enumerate(max_window):
        index = index * (2 * m - 1) + rel[axis] + m - 1
    return index


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias (per head, per offset)."""

    def __init__(self, dim: int, num_heads: int, window_size: Sequence[int], qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"channels {dim} are not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.window_size = tuple(window_size)
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(math.prod(2 * w - 1 for w in self.window_size), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self._index_cache = {}

    def position_bias(self, window: Tuple[int, ...], device) -> torch.Tensor:
        key = (window, str(device))
        if key not in self._index_cache:
            self._index_cache[key] = relative_position_index(window, self.window_size, device)
        n = math.prod(window)
        return self.relative_position_bias_table[self._index_cache[key].reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, window: Tuple[int, ...], batch: int,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (batch * num_windows, N, C); mask: (num_windows, N, N) bool or None."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.position_bias(window, x.device).to(q.dtype)  # (heads, N, N)
        if mask is not None:
            forbidden = torch.zeros(mask.shape, dtype=q.dtype, device=x.device).masked_fill_(~mask, MASKED)
            bias = (bias[None] + forbidden[:, None]).expand(batch, -1, -1, -1, -1).reshape(bw, self.num_heads, n, n)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(bw, n, c)))


class SwinBlock(nn.Module):
    """Pre-norm Swin block on channels-last token grids (B, *grid, C); shifted=True shifts the windows by half a
    window. With norm="cin" both pre-normalizations are CIN over all tokens of a sample."""

    def __init__(self, dim: int, num_heads: int, window_size: Sequence[int], shifted: bool = False,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, dropout: float = 0.0, attn_dropout: float = 0.0,
                 drop_path: float = 0.0, norm: str = "cin", num_modalities: int = 2, eps: float = 1e-5):
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(w // 2 for w in self.window_size) if shifted else (0,) * len(self.window_size)
        self.norm1 = token_norm(norm, dim, num_modalities, eps)
        self.attn = WindowAttention(dim, num_heads, self.window_size, qkv_bias, attn_dropout, dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = token_norm(norm, dim, num_modalities, eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=dropout)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """(Shifted-)window attention on a normalized grid (B, *grid, C): pad to whole windows, shift, attend inside
        each window (mask: no attention across shift regions or to padding), undo the shift, crop."""
        b, *grid, c = x.shape
        window, shift = effective_window(grid, self.window_size, self.shift_size)
        pad = [(-g) % w for g, w in zip(grid, window)]
        if any(pad):
            x = F.pad(x, [0, 0] + [v for p in reversed(pad) for v in (0, p)])
        padded = tuple(x.shape[1:-1])
        dims = tuple(range(1, len(grid) + 1))
        if any(shift):
            x = torch.roll(x, [-s for s in shift], dims)
        mask = attention_mask(grid, padded, window, shift, x.device)
        x = window_reverse(self.attn(window_partition(x, window), window, b, mask), window, padded, b)
        if any(shift):
            x = torch.roll(x, list(shift), dims)
        return x[(slice(None), *(slice(0, g) for g in grid))] if any(pad) else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[-1]
        x = x + self.drop_path(self.attend(self.norm1(x.reshape(b, -1, c)).reshape(x.shape)))
        return x + self.drop_path(self.mlp(self.norm2(x.reshape(b, -1, c)))).reshape(x.shape)


class PatchMerging(nn.Module):
    """2x downsampling per axis: the 2^d neighbours' features concatenated (2^d C), normalized (CIN over the tokens
    with norm="cin"), projected to 2C."""

    def __init__(self, dim: int, ndim: int, norm: str = "cin", num_modalities: int = 2, eps: float = 1e-5):
        super().__init__()
        self.ndim = ndim
        self.norm = token_norm(norm, 2 ** ndim * dim, num_modalities, eps)
        self.reduction = nn.Linear(2 ** ndim * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, *grid, c = x.shape
        if any(g % 2 for g in grid):
            raise ValueError(f"patch merging needs an even token grid, got {tuple(grid)}: the input side lengths "
                             f"must be multiples of token_patch_size * 2^stages (see patch_divisor)")
        d = self.ndim
        x = x.reshape(b, *(v for g in grid for v in (g // 2, 2)), c)
        x = x.permute(0, *(1 + 2 * i for i in range(d)), *(2 + 2 * i for i in range(d)), 1 + 2 * d)
        half = [g // 2 for g in grid]
        x = self.norm(x.reshape(b, -1, 2 ** d * c))
        return self.reduction(x).reshape(b, *half, 2 * c)


@contextmanager
def _modalities_restored(layers, modalities):
    previous = [layer.context_modality for layer in layers]
    for layer, m in zip(layers, modalities):
        layer.context_modality = m
    try:
        yield
    finally:
        for layer, m in zip(layers, previous):
            layer.context_modality = m


def checkpointed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) with activation checkpointing. The CIN layers' modality is captured now and reinstated for the
    recomputation, so backward() may also run outside `condition(...)`."""
    layers = cin_layers(module)
    modalities = [layer.context_modality for layer in layers]

    def run(t):
        with _modalities_restored(layers, modalities):
            return module(t)
    return checkpoint(run, x, use_reentrant=False)


class SwinStage(nn.Module):
    """`depth` Swin blocks (windows regular, shifted, regular, ...), then patch merging."""

    def __init__(self, dim: int, ndim: int, depth: int, num_heads: int, window_size: Sequence[int],
                 mlp_ratio: float, qkv_bias: bool, dropout: float, attn_dropout: float, drop_path: Sequence[float],
                 norm: str, num_modalities: int, eps: float, use_checkpoint: bool = False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, i % 2 == 1, mlp_ratio, qkv_bias, dropout, attn_dropout,
                      drop_path[i], norm, num_modalities, eps) for i in range(depth))
        self.downsample = PatchMerging(dim, ndim, norm, num_modalities, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = checkpointed(block, x) if self.use_checkpoint and torch.is_grad_enabled() else block(x)
        return self.downsample(x)


class ConditionalSwin(nn.Module):
    """Swin transformer encoder (2D or 3D). forward(x) returns S + 1 feature maps (B, 2^i * embed_dim, *grid_i):
    the patch embedding and every stage's merged output, each normalized (CIN over tokens, or LayerNorm) as the
    hidden states Swin-UNETR hands to its decoder. Input sides must be multiples of token_patch_size * 2^S."""

    def __init__(self, input_channels: int, ndim: int, token_patch_size: Union[int, Sequence[int]] = 2,
                 embed_dim: int = 48, depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: Union[int, Sequence[int]] = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 dropout: float = 0.0, attn_dropout: float = 0.0, drop_path_rate: float = 0.0, norm: str = "cin",
                 num_modalities: int = 2, eps: float = 1e-5, use_checkpoint: bool = False):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} must be non-empty and of equal "
                             f"length (one entry per stage)")
        self.token_patch_size = as_tuple(token_patch_size, ndim)
        window = as_tuple(window_size, ndim)
        if min(self.token_patch_size) < 1 or min(window) < 1:
            raise ValueError(f"token_patch_size {self.token_patch_size} and window_size {window} must be >= 1")
        self.patch_embed = PatchEmbed(self.token_patch_size, input_channels, embed_dim)
        self.pos_drop = nn.Dropout(dropout)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth grows with depth
        self.stages = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.stages.append(SwinStage(embed_dim * 2 ** i, ndim, depth, heads, window, mlp_ratio, qkv_bias, dropout,
                                         attn_dropout, rates[start:start + depth], norm, num_modalities, eps,
                                         use_checkpoint))
        self.output_norms = nn.ModuleList(token_norm(norm, embed_dim * 2 ** i, num_modalities, eps)
                                          for i in range(len(depths) + 1))

    @property
    def divisor(self) -> Tuple[int, ...]:
        return patch_divisor(self.token_patch_size, len(self.stages), len(self.token_patch_size))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.pos_drop(self.patch_embed(x).movedim(1, -1))  # (B, *grid, C)
        hidden = [x]
        for stage in self.stages:
            x = stage(x)
            hidden.append(x)
        out = []
        for h, norm in zip(hidden, self.output_norms):
            b, c = h.shape[0], h.shape[-1]
            out.append(norm(h.reshape(b, -1, c)).reshape(h.shape).movedim(-1, 1))
        return out


# ---- Swin-UNETR ----------------------------------------------------------------------------------------------

def patch_divisor(token_patch_size: Union[int, Sequence[int]], num_stages: int, ndim: int) -> Tuple[int, ...]:
    """What every input side must be a multiple of: token_patch_size * 2^num_stages (patch embedding, then one patch
    merging per stage; 32 for Swin-UNETR's 2 and 4 stages). The `divisor` of blocks.adjust_patch_size."""
    return tuple(t * 2 ** num_stages for t in as_tuple(token_patch_size, ndim))


def decoder_strides(token_patch_size: Union[int, Sequence[int]], num_stages: int, ndim: int) -> List[Tuple[int, ...]]:
    """Per-axis upsampling factors of ConditionalSwinUNETR's decoder stages, fine to coarse (the `up_strides` of
    blocks.deep_supervision_scales): the token patch, then 2 per Swin stage (outputs at strides 1, t, 2t, ...,
    2^(S-1) t)."""
    return [as_tuple(token_patch_size, ndim)] + [(2,) * ndim] * num_stages


class SwinUNETREncoder(nn.Module):
    """The Swin transformer plus Swin-UNETR's encoder-side conv blocks; forward returns the skips fine to coarse
    (image block, blocks on h_0 .. h_{S-2}, h_{S-1} as it is), then the bottleneck (block on h_S)."""

    def __init__(self, swin: ConditionalSwin, input_channels: int, feature_size: int, blocks: ConvBlocks):
        super().__init__()
        s = len(swin.stages)
        self.swin = swin
        self.stem = blocks.res(input_channels, feature_size)
        self.skip_blocks = nn.ModuleList(blocks.res(feature_size * 2 ** i, feature_size * 2 ** i) for i in range(s - 1))
        self.bottleneck = blocks.res(feature_size * 2 ** s, feature_size * 2 ** s)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        hidden = self.swin(x)
        s = len(self.skip_blocks) + 1
        return ([self.stem(x)] + [blk(h) for blk, h in zip(self.skip_blocks, hidden)] + [hidden[s - 1]]
                + [self.bottleneck(hidden[s])])


class SwinUNETRDecoder(SkipDecoder):
    """Upsampling path of Swin-UNETR: one stage per Swin stage, then the token patch."""

    def __init__(self, feature_size: int, num_stages: int, num_classes: int, token_patch_size: Tuple[int, ...],
                 blocks: ConvBlocks, deep_supervision: bool):
        super().__init__(deep_supervision)
        cin = feature_size * 2 ** num_stages
        for i in range(num_stages - 1, -2, -1):  # skip h_i (stride t * 2^i), i = -1: the image block (stride 1)
            c = feature_size * 2 ** max(i, 0)
            self.add_stage(blocks, cin, c, (2,) * len(token_patch_size) if i >= 0 else token_patch_size, num_classes)
            cin = c


class ConditionalSwinUNETR(nn.Module):
    """Swin-UNETR with a conditional Swin encoder (C-Swin), built from nnU-Net plans.

    Run it inside `with nnunet_cin.condition(net, modality):` (norm="cin"); norm="layernorm" needs no modality.

    Args (defaults: Swin-UNETR of Hatamizadeh et al. 2022 / MONAI's SwinUNETR, feature_size 48):
        input_channels, num_classes: as passed by nnU-Net's get_network_from_plans.
        patch_size: the training patch size (plans), recorded for reference; the network has no absolute position
            embedding and takes any size. Sides that are not multiples of token_patch_size * 2^S
            (patch_divisor; blocks.adjust_patch_size) are zero-padded inside forward and the logits cropped back.
        token_patch_size=2: voxels per token side (int or per axis).
        feature_size=48: Swin embedding dimension F and channels of the full-resolution conv stage; stage i has
            2^i F channels (48: 48, 96, 192, 384, 768).
        depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24): Swin blocks and attention heads per stage (S = 4 stages);
            2^i F must be divisible by num_heads[i].
        window_size=7: window side in tokens (int or per axis); every second block shifts by window_size // 2.
        mlp_ratio=4.0, qkv_bias=True, dropout=0.0, attn_dropout=0.0, drop_path_rate=0.0 (stochastic depth, linear
            over the blocks), eps=1e-5 (CIN/LayerNorm/InstanceNorm).
        num_modalities=2: CIN rows per layer.  norm="cin" | "layernorm".
        use_checkpoint=False: activation (gradient) checkpointing of every Swin block: less memory, ~1 more
            forward of the transformer per step.
        deep_supervision=False: return the logits of every decoder stage (strides 1, t, 2t, ..., 2^(S-1) t, full
            resolution first; scales: blocks.deep_supervision_scales(decoder_strides(...))) instead of the
            full-resolution logits only. Toggled later through `decoder.deep_supervision`, as nnU-Net does; same
            state dict either way.
    """

    def __init__(self, input_channels: int, num_classes: int, patch_size: Sequence[int],
                 token_patch_size: Union[int, Sequence[int]] = 2, feature_size: int = 48,
                 depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: Union[int, Sequence[int]] = 7, mlp_ratio: float = 4.0, num_modalities: int = 2,
                 norm: str = "cin", deep_supervision: bool = False, qkv_bias: bool = True, dropout: float = 0.0,
                 attn_dropout: float = 0.0, drop_path_rate: float = 0.0, use_checkpoint: bool = False,
                 eps: float = 1e-5):
        super().__init__()
        ndim = len(patch_size)
        if ndim not in (2, 3):
            raise ValueError(f"patch_size must have 2 or 3 sides, got {tuple(patch_size)}")
        for i, h in enumerate(num_heads):
            if (feature_size * 2 ** i) % h:
                raise ValueError(f"stage {i} has {feature_size * 2 ** i} channels (feature_size {feature_size} * 2^{i})"
                                 f", not divisible by num_heads[{i}] = {h}")
        swin = ConditionalSwin(input_channels, ndim, token_patch_size, feature_size, depths, num_heads, window_size,
                               mlp_ratio, qkv_bias, dropout, attn_dropout, drop_path_rate, norm, num_modalities, eps,
                               use_checkpoint)
        self.patch_size = tuple(patch_size)
        self.token_patch_size = swin.token_patch_size
        self.divisor = swin.divisor
        encoder_blocks, decoder_blocks = encoder_decoder_blocks(ndim, norm, num_modalities, eps)
        self.encoder = SwinUNETREncoder(swin, input_channels, feature_size, encoder_blocks)
        self.decoder = SwinUNETRDecoder(feature_size, len(depths), num_classes, self.token_patch_size,
                                        decoder_blocks, deep_supervision)

    def forward(self, x: torch.Tensor):
        size = x.shape[2:]
        pad = [(-s) % d for s, d in zip(size, self.divisor)]
        if all(s + p == d for s, p, d in zip(size, pad, self.divisor)):
            raise ValueError(f"input {tuple(size)} leaves a single token at the deepest stage (sides <= "
                             f"{self.divisor}), where instance norm and CIN have no statistics: use a patch size "
                             f"from nnunet_cin.networks.blocks.adjust_patch_size(patch, patch_divisor(...))")
        return run_padded(lambda v: self.decoder(self.encoder(v)), x, self.divisor)

    # nnU-Net applies this to every module: He init for convs, truncated normal for the transformer's linear layers
    initialize = staticmethod(ConditionalUNETR.initialize)
