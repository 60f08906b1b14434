"""The new modality's CIN rows: how they start, how only they are trained, and the proof that nothing else changed.

A conditional network keeps, in every CIN layer, ONE weight and ONE bias tensor of shape (M, C): row m belongs to
modality m. Adding a modality appends row M to each. Training "only the new rows" cannot mean training the (M + 1, C)
tensors with the old rows' gradients masked: nnU-Net's SGD applies weight decay (and momentum) to a parameter whatever
its gradient, so the old rows would drift. Here the old rows are not parameters at all while the new modality is
trained: `attach_new_rows` re-parametrizes every CIN weight and bias (torch.nn.utils.parametrize) as
cat(old rows, new row), the old rows a constant buffer and the new row the only parameter; every other parameter of
the network gets requires_grad=False (torch's optimizers skip a parameter without a gradient, weight decay included).
`detach_new_rows` folds the rows back into plain (M + 1, C) parameters: torch.cat copies the old rows bit for bit.
`unchanged_except_new_rows` checks the outcome against the original checkpoint, tensor by tensor, with torch.equal.
"""
from typing import Dict, List, Mapping, Sequence, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from nnunet_cin.cin import cin_layers

AFFINE = ("weight", "bias")
MEAN = "mean"  # the initial row: the mean of the existing rows


class AppendedRows(nn.Module):
    """A parametrization of an (M + 1, C) CIN tensor whose stored parameter is its last row (1, C) and whose first M
    rows are a constant: forward(new) = cat(old, new)."""

    def __init__(self, old_rows: torch.Tensor):
        super().__init__()
        self.register_buffer("old_rows", old_rows.detach().clone(), persistent=False)

    def forward(self, new_row: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.old_rows, new_row], 0)

    def right_inverse(self, full: torch.Tensor) -> torch.Tensor:
        return full[self.old_rows.shape[0]:].clone()


def cin_tensor_names(network: nn.Module) -> Dict[str, str]:
    """{state-dict key: "weight" | "bias"} of the CIN tensors of `network` (each key under which a layer is
    registered: nnU-Net's blocks register a norm under two parents)."""
    ids = {id(layer) for layer in cin_layers(network)}
    return {f"{prefix}.{name}": name for prefix, module in network.named_modules(remove_duplicate=False)
            if id(module) in ids for name in AFFINE}


def extended_state_dict(weights: Mapping[str, torch.Tensor], network: nn.Module,
                        init: Union[int, str]) -> Dict[str, torch.Tensor]:
    """`weights` (a trained network's state dict, M rows per CIN tensor) for `network` (the same architecture with M + 1
    rows): every tensor as it is, each CIN tensor with one row appended, a copy of row `init` (an index) or the mean
    of the rows (MEAN). Anything else that does not fit is an error naming the tensor."""
    target = network.state_dict()
    cin = cin_tensor_names(network)
    missing = sorted(set(target) - set(weights))
    if missing:
        raise ValueError(f"the checkpoint has no tensor {missing[0]} of the network ({len(missing)} missing): it is "
                         f"not from this architecture")
    out = {}
    for key, want in target.items():
        value = weights[key]
        if key in cin:
            if value.dim() != 2 or value.shape[0] + 1 != want.shape[0] or value.shape[1] != want.shape[1]:
                raise ValueError(f"CIN tensor {key} has shape {tuple(value.shape)}; adding one modality to it needs "
                                 f"({want.shape[0] - 1}, {want.shape[1]})")
            row = value.mean(0, keepdim=True) if init == MEAN else value[int(init)][None]
            value = torch.cat([value, row], 0)
        elif value.shape != want.shape:
            raise ValueError(f"tensor {key} has shape {tuple(value.shape)}, the network wants {tuple(want.shape)}")
        out[key] = value.to(want.dtype)
    return out


def attach_new_rows(network: nn.Module, num_old: int) -> List[nn.Parameter]:
    """Make the last row of every CIN weight and bias the only trainable parameters of `network` (see the module
    docstring); returns them. Every other parameter gets requires_grad=False."""
    for p in network.parameters():
        p.requires_grad_(False)
    trainable = []
    for layer in cin_layers(network):
        if layer.num_modalities != num_old + 1:
            raise ValueError(f"a CIN layer has {layer.num_modalities} rows; expected {num_old + 1} (the model's "
                             f"{num_old} modalities and the new one)")
        for name in AFFINE:
            parametrize.register_parametrization(layer, name, AppendedRows(getattr(layer, name)[:num_old]))
            new_row = layer.parametrizations[name].original
            new_row.requires_grad_(True)
            trainable.append(new_row)
    return trainable


def detach_new_rows(network: nn.Module) -> None:
    """Fold the parametrized rows back into plain (M + 1, C) parameters (the network's original layout)."""
    for layer in cin_layers(network):
        for name in AFFINE:
            if parametrize.is_parametrized(layer, name):
                parametrize.remove_parametrizations(layer, name, leave_parametrized=True)


def unchanged_except_new_rows(original: Mapping[str, torch.Tensor], extended: Mapping[str, torch.Tensor],
                              cin_keys: Sequence[str]) -> List[str]:
    """The keys where `extended` is not `original` plus one row per CIN tensor: every tensor bitwise equal, CIN
    tensors equal on the original rows and one row longer. Empty: the guarantee holds."""
    cin_keys = set(cin_keys)
    problems = sorted(set(original) ^ set(extended))
    for key in sorted(set(original) & set(extended)):
        a, b = original[key].detach().cpu(), extended[key].detach().cpu()
        if key in cin_keys:
            ok = b.shape[0] == a.shape[0] + 1 and b.dtype == a.dtype and torch.equal(b[:a.shape[0]], a)
        else:
            ok = b.shape == a.shape and b.dtype == a.dtype and torch.equal(a, b)
        if not ok:
            problems.append(key)
    return problems
