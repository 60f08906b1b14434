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

The same holds for every tensor whose first axis is a modality (a layer's `modality_parameters`), which `--adapt`
may add beyond the encoder's rows (nnunet_cin.add_modality.command.ADAPT):
- a decoder norm the model shares between its modalities (weight (C,)) becomes a CIN layer (M + 1, C) whose M old
  rows are copies of the shared vector (bitwise the same computation: nnunet_cin.networks.unet.make_conditional) and
  whose new row starts as one more copy;
- the new modality's adapter slot (nnunet_cin.networks.adapters: (1, C, C), or a slot appended to a model's own
  adapters) starts at zero; a tensor the model did not have has no old rows at all.
Always the LAST row of such a tensor is the new modality's, and the only part that trains.
"""
from typing import Dict, List, Mapping, Sequence, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from nnunet_cin.cin import _ConditionalInstanceNorm

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


def _modality_layers(network: nn.Module) -> Dict[int, nn.Module]:
    return {id(m): m for m in network.modules() if isinstance(m, _ConditionalInstanceNorm)}


def cin_tensor_names(network: nn.Module) -> Dict[str, str]:
    """{state-dict key: parameter name} of the tensors of `network` with a row per modality (the CIN layers'
    `modality_parameters`; each key under which a layer is registered: nnU-Net's blocks register a norm under two
    parents)."""
    layers = _modality_layers(network)
    return {f"{prefix}.{name}": name for prefix, module in network.named_modules(remove_duplicate=False)
            if id(module) in layers for name in module.modality_parameters}


def extended_state_dict(weights: Mapping[str, torch.Tensor], network: nn.Module,
                        init: Union[int, str]) -> Dict[str, torch.Tensor]:
    """`weights` (a trained network's state dict, M rows per CIN tensor) for `network` (the same architecture with M + 1
    rows, and possibly more conditioned norms and adapters: see the module docstring): every tensor as it is; each CIN
    weight and bias with one row appended, a copy of row `init` (an index) or the mean of the rows (MEAN); a shared
    norm tensor (C,) that became a CIN tensor repeated M + 1 times; another per-modality tensor (an adapter) with the
    network's own initial last row appended, or the network's own value when the model had none. Anything else that
    does not fit is an error naming the tensor."""
    target = network.state_dict()
    per_modality = cin_tensor_names(network)
    missing = sorted(k for k in set(target) - set(weights) if k not in per_modality or per_modality[k] in AFFINE)
    if missing:
        raise ValueError(f"the checkpoint has no tensor {missing[0]} of the network ({len(missing)} missing): it is "
                         f"not from this architecture")
    out = {}
    for key, want in target.items():
        value = weights.get(key)
        if value is None:  # capacity the model did not have
            value = want
        elif key in per_modality and value.shape != want.shape:
            if value.dim() == want.dim() - 1 and value.shape == want.shape[1:]:  # shared by all -> one row each
                value = value[None].expand(want.shape).clone()
            elif value.dim() == want.dim() and value.shape[0] + 1 == want.shape[0] and value.shape[1:] == want.shape[1:]:
                if per_modality[key] in AFFINE:
                    row = value.mean(0, keepdim=True) if init == MEAN else value[int(init)][None]
                else:
                    row = want[-1:]
                value = torch.cat([value, row.to(value.dtype)], 0)
            else:
                raise ValueError(f"CIN tensor {key} has shape {tuple(value.shape)}; adding one modality to it needs "
                                 f"({want.shape[0] - 1}, {', '.join(map(str, want.shape[1:]))})")
        elif value.shape != want.shape:
            raise ValueError(f"tensor {key} has shape {tuple(value.shape)}, the network wants {tuple(want.shape)}")
        out[key] = value.to(want.dtype)
    return out


def attach_new_rows(network: nn.Module, original: Mapping[str, torch.Tensor]) -> List[nn.Parameter]:
    """Make the new modality's row of every per-modality tensor that grew against the model's weights `original`
    (the last row; see the module docstring) the only trainable parameters of `network`; returns them. Every other
    parameter gets requires_grad=False."""
    for p in network.parameters():
        p.requires_grad_(False)
    prefixes = {}
    for prefix, module in network.named_modules(remove_duplicate=False):
        prefixes.setdefault(id(module), prefix)
    trainable = []
    for layer in _modality_layers(network).values():
        for name in layer.modality_parameters:
            old = original.get(f"{prefixes[id(layer)]}.{name}")
            full = getattr(layer, name)
            if old is not None and old.shape == full.shape:
                continue  # not the new modality's (e.g. the model's own adapters, when the new one has none)
            parametrize.register_parametrization(layer, name, AppendedRows(full[:full.shape[0] - 1]))
            new_row = layer.parametrizations[name].original
            new_row.requires_grad_(True)
            trainable.append(new_row)
    return trainable


def detach_new_rows(network: nn.Module) -> None:
    """Fold the parametrized rows back into plain parameters (the network's original layout)."""
    for layer in _modality_layers(network).values():
        for name in layer.modality_parameters:
            if parametrize.is_parametrized(layer, name):
                parametrize.remove_parametrizations(layer, name, leave_parametrized=True)


def unchanged_except_new_rows(original: Mapping[str, torch.Tensor], extended: Mapping[str, torch.Tensor],
                              cin_keys: Sequence[str]) -> List[str]:
    """The keys where `extended` is not `original` plus the new modality's rows: every tensor bitwise equal; a
    per-modality tensor (`cin_keys`) equal on the original rows and one row longer (or as it was); a shared tensor
    (C,) that became per-modality equal to it in every row but the last; a tensor the model did not have only as a
    per-modality tensor. Empty: the guarantee holds."""
    cin_keys = set(cin_keys)
    problems = sorted((set(original) - set(extended)) | (set(extended) - set(original) - cin_keys))
    for key in sorted(set(original) & set(extended)):
        a, b = original[key].detach().cpu(), extended[key].detach().cpu()
        if b.dtype != a.dtype:
            ok = False
        elif key in cin_keys and b.dim() == a.dim() + 1:
            ok = b.shape[1:] == a.shape and b.shape[0] >= 2 and all(torch.equal(row, a) for row in b[:-1])
        elif key in cin_keys:
            ok = (b.shape[1:] == a.shape[1:] and b.shape[0] in (a.shape[0], a.shape[0] + 1)
                  and torch.equal(b[:a.shape[0]], a))
        else:
            ok = b.shape == a.shape and torch.equal(a, b)
        if not ok:
            problems.append(key)
    return problems
