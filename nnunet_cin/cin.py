"""Conditional instance normalization (CIN) and the context that tells CIN layers which modality they see.

y[i] = weight[m_i] * (x[i] - mean(x[i])) / sqrt(var(x[i]) + eps) + bias[m_i], statistics per sample and channel.
"""
from contextlib import contextmanager
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

ModalityLike = Union[int, torch.Tensor]


class _ConditionalInstanceNorm(nn.Module):
    expected_dim: int = None  # spatial dims
    # the tensors whose first axis is the modality (a row per modality): what adding a modality appends to
    modality_parameters = ("weight", "bias")

    def __init__(self, num_features: int, num_modalities: int, eps: float = 1e-5):
        super().__init__()
        if num_modalities < 1:
            raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
        self.num_features = num_features
        self.num_modalities = num_modalities
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_modalities, num_features))
        self.bias = nn.Parameter(torch.zeros(num_modalities, num_features))
        # set by condition(); None means "no modality given", which is an error at call time
        self.context_modality = None

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_modalities={self.num_modalities}, eps={self.eps}"

    def forward(self, x: torch.Tensor, modality: ModalityLike = None) -> torch.Tensor:
        if x.dim() != self.expected_dim + 2:
            raise ValueError(f"{type(self).__name__} expects a {self.expected_dim + 2}D input (batch, channels, "
                             f"{self.expected_dim} spatial), got shape {tuple(x.shape)}")
        return self.normalize(x, self.modality_of(x, modality))

    def modality_of(self, x: torch.Tensor, modality: ModalityLike = None) -> torch.Tensor:
        """The modality index of each sample of `x`, (batch,) long: `modality`, else the one condition() set."""
        from_context = modality is None
        if from_context:
            modality = self.context_modality  # range-checked once by condition(), not in every layer
        if modality is None:
            raise RuntimeError(f"{type(self).__name__} was called without a modality. Pass forward(x, modality) or "
                               f"run the network inside `with nnunet_cin.condition(network, modality):`; nnU-Net's "
                               f"own predictor does neither: predict with nnUNetv2_predict_cin.")
        return self._modality_index(modality, x.shape[0], x.device, check_range=not from_context)

    def normalize(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        # Fused: instance norm of (b, c, ...) is batch norm of (1, b*c, ...), so the per-sample affine
        # rows can be handed to the same kernel as one (b*c,) weight/bias. Indexing keeps every modality's
        # rows in the graph (unused rows get zero gradients), which DDP needs.
        w = self.weight[m].reshape(b * c)
        bias = self.bias[m].reshape(b * c)
        y = F.instance_norm(x.reshape(1, b * c, *x.shape[2:]), weight=w, bias=bias, eps=self.eps)
        return y.reshape(x.shape)

    def _modality_index(self, modality: ModalityLike, batch: int, device, check_range: bool = True) -> torch.Tensor:
        if isinstance(modality, bool) or not isinstance(modality, (int, torch.Tensor)):
            raise TypeError(f"modality must be an int or an integer tensor of shape (batch,), got {type(modality)}")
        if isinstance(modality, int):
            if not 0 <= modality < self.num_modalities:
                raise ValueError(f"modality {modality} is out of range: this layer knows {self.num_modalities} "
                                 f"modalities (0..{self.num_modalities - 1})")
            return torch.full((batch,), modality, dtype=torch.long, device=device)
        if modality.dtype.is_floating_point or modality.dtype.is_complex or modality.dtype == torch.bool:
            raise TypeError(f"modality tensor must have an integer dtype, got {modality.dtype}")
        if modality.dim() == 0:
            modality = modality.expand(batch)
        if modality.dim() != 1 or modality.shape[0] != batch:
            raise ValueError(f"modality tensor must have shape (batch,) = ({batch},), got {tuple(modality.shape)}")
        if check_range and not torch.compiler.is_compiling():
            _check_range(modality, self.num_modalities)
        return modality.to(device=device, dtype=torch.long)


def _check_range(modality: torch.Tensor, num_modalities: int):
    # data-dependent (a host sync on GPU), hence done once per condition() rather than in every layer
    if bool((modality < 0).any()) or bool((modality >= num_modalities).any()):
        raise ValueError(f"modality values {modality.tolist()} out of range: the network knows {num_modalities} "
                         f"modalities (0..{num_modalities - 1})")


class ConditionalInstanceNorm1d(_ConditionalInstanceNorm):
    expected_dim = 1


class ConditionalInstanceNorm2d(_ConditionalInstanceNorm):
    expected_dim = 2


class ConditionalInstanceNorm3d(_ConditionalInstanceNorm):
    expected_dim = 3


CIN_BY_DIM = {1: ConditionalInstanceNorm1d, 2: ConditionalInstanceNorm2d, 3: ConditionalInstanceNorm3d}


def cin_layers(network: nn.Module):
    return [m for m in network.modules() if isinstance(m, _ConditionalInstanceNorm)]


@contextmanager
def condition(network: nn.Module, modality: ModalityLike):
    """Every CIN layer inside `network` called as norm(x) uses `modality` until the block ends.

    Nesting and re-entry are safe: each layer's previous modality is restored on exit, also on exceptions.
    """
    if modality is None:
        raise ValueError("condition() needs a modality (an int or an integer tensor of shape (batch,))")
    layers = cin_layers(network)
    if layers:
        # validates type, dtype and range once for all layers (shape is checked per layer against its input)
        fewest = min(layers, key=lambda layer: layer.num_modalities)
        if isinstance(modality, torch.Tensor):
            fewest._modality_index(modality, modality.numel(), modality.device)
        else:
            fewest._modality_index(modality, 1, None)
    previous = [layer.context_modality for layer in layers]
    for layer in layers:
        layer.context_modality = modality
    try:
        yield network
    finally:
        for layer, prev in zip(layers, previous):
            layer.context_modality = prev
