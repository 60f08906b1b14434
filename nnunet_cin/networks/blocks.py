"""Building blocks shared by the transformer networks (UNETR, Swin-UNETR): the conv blocks of the encoder side (where
the method puts CIN) and of the decoder, the skip decoder with deep supervision, padding to the token grid, and the
two sizes a trainer derives from the hyper-parameters (patch size, deep-supervision scales)."""
import math
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import (convert_dim_to_conv_op, get_matching_convtransp,
                                                                  get_matching_instancenorm)
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from torch import nn

from nnunet_cin.cin import CIN_BY_DIM


def as_tuple(value: Union[int, Sequence[int]], ndim: int) -> Tuple[int, ...]:
    """An int or one value per axis, as a tuple of `ndim` ints."""
    value = (value,) * ndim if isinstance(value, int) else tuple(int(v) for v in value)
    if len(value) != ndim:
        raise ValueError(f"expected {ndim} values, got {value}")
    return value


class ConvBlocks:
    """Residual conv blocks (dynamic_network_architectures' BasicBlockD: conv-norm-LeakyReLU x2 + projection skip)
    and transposed convs of one dimensionality and one normalization."""

    def __init__(self, ndim: int, norm_op, norm_op_kwargs: dict):
        self.conv_op = convert_dim_to_conv_op(ndim)
        self.transp_op = get_matching_convtransp(dimension=ndim)
        self.norm_op, self.norm_op_kwargs = norm_op, norm_op_kwargs

    def res(self, cin: int, cout: int) -> nn.Module:
        return BasicBlockD(self.conv_op, cin, cout, 3, 1, True, self.norm_op, self.norm_op_kwargs,
                           nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})

    def up(self, cin: int, cout: int, stride: Sequence[int]) -> nn.Module:
        return self.transp_op(cin, cout, kernel_size=stride, stride=stride, bias=False)


def encoder_decoder_blocks(ndim: int, norm: str, num_modalities: int, eps: float) -> Tuple[ConvBlocks, ConvBlocks]:
    """Conv blocks of the encoder side (CIN when norm="cin", else affine instance norm) and of the decoder (always
    affine instance norm): where the method puts CIN, shared by the UNETR and Swin-UNETR networks."""
    instance_norm = get_matching_instancenorm(dimension=ndim)
    if norm == "cin":
        encoder = ConvBlocks(ndim, CIN_BY_DIM[ndim], {"num_modalities": num_modalities, "eps": eps})
    else:
        encoder = ConvBlocks(ndim, instance_norm, {"eps": eps, "affine": True})
    return encoder, ConvBlocks(ndim, instance_norm, {"eps": eps, "affine": True})


class SkipDecoder(nn.Module):
    """Upsampling path shared by the UNETR and Swin-UNETR decoders: subclasses fill `ups`, `convs` and `seg_layers`
    coarse to fine. `deep_supervision` (toggled by nnU-Net's set_deep_supervision_enabled) picks between the
    full-resolution logits and the list of every stage's logits, full resolution first."""

    def __init__(self, deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision
        self.ups, self.convs, self.seg_layers = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()

    def add_stage(self, blocks: ConvBlocks, in_channels: int, channels: int, up_stride, num_classes: int):
        """Next finer stage: upsample, concatenate the skip (also `channels` wide), conv block, segmentation head."""
        self.ups.append(blocks.up(in_channels, channels, up_stride))
        self.convs.append(blocks.res(2 * channels, channels))
        self.seg_layers.append(blocks.conv_op(channels, num_classes, 1, 1, 0, bias=True))

    def forward(self, skips: List[torch.Tensor]):
        x, outputs = skips[-1], []
        for j, (up, conv, seg) in enumerate(zip(self.ups, self.convs, self.seg_layers)):
            x = conv(torch.cat((up(x), skips[-2 - j]), dim=1))
            if self.deep_supervision or j == len(self.ups) - 1:
                outputs.append(seg(x))
        outputs = outputs[::-1]
        return outputs if self.deep_supervision else outputs[0]


def deep_supervision_scales(up_strides: Sequence[Sequence[int]]) -> List[List[float]]:
    """Scales of a SkipDecoder's outputs (full resolution first), in the form of
    nnUNetTrainer._get_deep_supervision_scales. up_strides: the per-axis upsampling factor of each decoder stage,
    fine to coarse (the output of stage j lies at the stride of stages 0..j-1)."""
    scales, cumulative = [], (1,) * len(up_strides[0])
    for step in up_strides:
        scales.append([1.0 / c for c in cumulative])
        cumulative = tuple(c * s for c, s in zip(cumulative, step))
    return scales


def adjust_patch_size(patch_size: Sequence[int], divisor: Union[int, Sequence[int]]) -> List[int]:
    """The training patch size for a network whose input sides must be multiples of `divisor` (per axis; the
    coarsest token grid is patch / divisor): every side rounded up to a multiple, and at least two cells of that
    grid, because CIN over the tokens of a single cell has no statistics (x - mean = 0). A single cell grows along
    the axis the plans made longest relative to its divisor (the last one on ties)."""
    div = as_tuple(divisor, len(patch_size))
    adjusted = [int(math.ceil(s / d) * d) for s, d in zip(patch_size, div)]
    if math.prod(a // d for a, d in zip(adjusted, div)) == 1:
        axis = max(range(len(div)), key=lambda i: (patch_size[i] / div[i], i))
        adjusted[axis] *= 2
    return adjusted


def run_padded(fn, x: torch.Tensor, multiple: Sequence[int]):
    """fn(x) with x's spatial sides zero-padded up to multiples of `multiple`; every output (a tensor or nnU-Net's
    deep-supervision list, possibly at lower resolutions) cropped back to the unpadded extent."""
    size = x.shape[2:]
    pad = [(-s) % m for s, m in zip(size, multiple)]
    if not any(pad):
        return fn(x)
    x = F.pad(x, [v for p in reversed(pad) for v in (0, p)])
    out = fn(x)

    def crop(y):
        f = [x.shape[2 + i] // y.shape[2 + i] for i in range(len(size))]
        return y[(..., *(slice(0, math.ceil(s / fi)) for s, fi in zip(size, f)))]
    return [crop(y) for y in out] if isinstance(out, list) else crop(out)
