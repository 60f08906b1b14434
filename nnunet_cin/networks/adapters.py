"""Residual adapters: capacity of its own for a modality whose contrast a CIN row cannot undo.

A CIN row rescales and shifts each channel; a modality that orders the tissues differently (T2: fluid bright, blood
dark) needs its features MIXED differently. `AdaptedInstanceNorm` is a CIN layer followed, for the modalities listed
in `adapted`, by a residual 1x1(x1) convolution of their own (Rebuffi et al. 2017's residual adapter, placed after
the normalization of every conv layer):

    y = CIN(x)                   for every sample
    y = y + W[slot(m)] @ y       only for the samples whose modality m is adapted (W starts at zero)

The other modalities run exactly the computation of a CIN layer: their samples take `y` itself through torch.where,
not y + 0 (which turns -0.0 into +0.0), so a model gains adapters for a new modality without a bit of its old
modalities' outputs changing. The adapter weights of every adapted modality are gathered for the whole batch, so
each takes part in every training step's graph (zero gradient when unused), as DDP without find_unused_parameters
needs; no loop over samples. One weight tensor (A, C, C) holds the A adapted modalities' adapters, slot by slot in
the order of `adapted` (a modality added later appends a slot, like a CIN row).
"""
from typing import Sequence

import torch
from torch import nn

from nnunet_cin.cin import ModalityLike, _ConditionalInstanceNorm


class AdaptedInstanceNorm(_ConditionalInstanceNorm):
    modality_parameters = ("weight", "bias", "adapter")

    def __init__(self, num_features: int, num_modalities: int, eps: float = 1e-5, adapted: Sequence[int] = (),
                 spatial_dims: int = 3):
        super().__init__(num_features, num_modalities, eps)
        adapted = [int(m) for m in adapted]
        if not adapted or len(set(adapted)) != len(adapted) or not all(0 <= m < num_modalities for m in adapted):
            raise ValueError(f"adapted must list distinct modality indices in 0..{num_modalities - 1}, got {adapted}")
        self.expected_dim = spatial_dims
        self.adapted = adapted
        slot = torch.full((num_modalities,), -1, dtype=torch.long)
        slot[adapted] = torch.arange(len(adapted))
        self.register_buffer("slot", slot, persistent=False)  # modality -> adapter slot, -1: none
        self.adapter = nn.Parameter(torch.zeros(len(adapted), num_features, num_features))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", adapted={self.adapted}"

    def forward(self, x: torch.Tensor, modality: ModalityLike = None) -> torch.Tensor:
        if x.dim() != self.expected_dim + 2:
            raise ValueError(f"{type(self).__name__} expects a {self.expected_dim + 2}D input (batch, channels, "
                             f"{self.expected_dim} spatial), got shape {tuple(x.shape)}")
        given = self.context_modality if modality is None else modality
        m = self.modality_of(x, modality)
        y = self.normalize(x, m)
        if isinstance(given, int) and given not in self.adapted:
            return y  # one modality without an adapter (prediction): nothing to compute, nothing to skip
        slot = self.slot[m]
        w = self.adapter[slot.clamp(min=0)]  # (b, C, C): every slot in the graph
        b, c = y.shape[:2]
        delta = torch.bmm(w.to(y.dtype), y.reshape(b, c, -1)).reshape(y.shape)
        uses = (slot >= 0).reshape(b, *([1] * (y.dim() - 1)))
        return torch.where(uses, y + delta, y)


def adapter_parameters(network: nn.Module) -> int:
    """Number of adapter weights in `network` (each layer counted once)."""
    return sum(m.adapter.numel() for m in {id(m): m for m in network.modules()
                                          if isinstance(m, AdaptedInstanceNorm)}.values())
