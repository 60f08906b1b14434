"""Conditional U-Nets: dynamic_network_architectures' networks with their encoder instance norms swapped for CIN.

The swap works on any built network, so the same function serves networks built from plans, trained plain
checkpoints (load the weights, then swap: the affine values are copied into every modality slot) and ablations
that condition every norm (`scope="all"`). `adapter_modalities` gives the listed modalities a residual adapter after
every conditioned norm (nnunet_cin.networks.adapters); the others compute exactly what they computed without.

What a network built from plans has is data in the plans' arch_kwargs, which `conditional_architecture` writes:
`num_modalities` (from the plans' modalities, set when the network is built), `cin_scope` ("encoder" | "all") and
`adapter_modalities` (indices into the conditioning order; absent: none).
"""
from copy import deepcopy
from typing import Optional, Sequence

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm

from nnunet_cin.cin import CIN_BY_DIM, cin_layers
from nnunet_cin.networks.adapters import AdaptedInstanceNorm

CIN_SCOPES = ("encoder", "all")
ADAPTERS_KEY = "adapter_modalities"  # arch_kwargs: the modalities (indices) with residual adapters


def make_conditional(network: nn.Module, num_modalities: int, scope: str = "encoder",
                     adapter_modalities: Sequence[int] = ()) -> nn.Module:
    """Replace the instance norms of `network.encoder` (scope="encoder") or of the whole network (scope="all")
    by CIN layers, in place, and return the network. Affine values are copied into every modality row, so the
    result computes exactly what the original computed, for every modality (adapters start at zero: the same holds
    for the modalities in `adapter_modalities` until they are trained)."""
    if scope not in CIN_SCOPES:
        raise ValueError(f"scope must be one of {CIN_SCOPES}, got {scope!r}")
    if scope == "encoder" and not hasattr(network, "encoder"):
        raise ValueError(f"{type(network).__name__} has no `encoder` attribute; use scope='all' to condition "
                         f"every instance norm")
    root = network.encoder if scope == "encoder" else network
    replacements = {id(m): _cin_from_instance_norm(m, num_modalities, adapter_modalities)
                    for m in root.modules() if isinstance(m, _InstanceNorm)}
    if not replacements:
        raise ValueError(f"no instance normalization found in the {scope} of {type(network).__name__}: "
                         f"nothing to condition")
    # A norm is registered under several parents (ConvDropoutNormReLU keeps it as .norm and in .all_modules,
    # UNetDecoder keeps a reference to the encoder): swap it wherever it appears.
    for parent in network.modules():
        for name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                parent._modules[name] = replacements[id(child)]
    return network


def _cin_from_instance_norm(norm: _InstanceNorm, num_modalities: int, adapter_modalities: Sequence[int] = ()):
    dim = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}.get(type(norm))
    if dim is None:
        raise TypeError(f"unsupported instance norm type {type(norm).__name__}")
    if adapter_modalities:
        cin = AdaptedInstanceNorm(norm.num_features, num_modalities, norm.eps, adapter_modalities, dim)
    else:
        cin = CIN_BY_DIM[dim](norm.num_features, num_modalities, eps=norm.eps)
    if norm.affine:
        with torch.no_grad():
            cin.weight.copy_(norm.weight.detach().expand_as(cin.weight))
            cin.bias.copy_(norm.bias.detach().expand_as(cin.bias))
    return cin.to(device=norm.weight.device if norm.affine else None)


def num_modalities_of(network: nn.Module) -> int:
    layers = cin_layers(network)
    if not layers:
        raise ValueError(f"{type(network).__name__} holds no conditional instance normalization layer")
    return layers[0].num_modalities


class ConditionalPlainConvUNet(PlainConvUNet):
    """PlainConvUNet with CIN in the encoder; built by nnU-Net's get_network_from_plans from plans arch_kwargs."""

    def __init__(self, *args, num_modalities: int = 2, cin_scope: str = "encoder",
                 adapter_modalities: Sequence[int] = (), **kwargs):
        super().__init__(*args, **kwargs)
        make_conditional(self, num_modalities, cin_scope, adapter_modalities)


class ConditionalResidualEncoderUNet(ResidualEncoderUNet):
    """ResidualEncoderUNet (nnU-Net ResEnc presets) with CIN in the encoder."""

    def __init__(self, *args, num_modalities: int = 2, cin_scope: str = "encoder",
                 adapter_modalities: Sequence[int] = (), **kwargs):
        super().__init__(*args, **kwargs)
        make_conditional(self, num_modalities, cin_scope, adapter_modalities)


def _class_path(cls) -> str:
    return f"{cls.__module__}.{cls.__name__}"


def plans_class_path(cls: type) -> str:
    """The name under which plans record a network class of ours: `nnunet_cin.networks.<Class>`, which nnU-Net's
    get_network_from_plans resolves whichever module of the package defines the class."""
    return f"nnunet_cin.networks.{cls.__name__}"


CONDITIONAL_OF = {
    _class_path(PlainConvUNet): plans_class_path(ConditionalPlainConvUNet),
    _class_path(ResidualEncoderUNet): plans_class_path(ConditionalResidualEncoderUNet),
}


def conditional_architecture(architecture: dict, num_modalities: int, cin_scope: str = "encoder",
                             adapter_modalities: Optional[Sequence[int]] = None) -> dict:
    """Turn a plans `architecture` entry (network_class_name + arch_kwargs + _kw_requires_import) into the one
    of its conditional counterpart. Already conditional entries get their modality count checked and updated.
    adapter_modalities None: the entry's own (none if it has none); [] removes them."""
    if cin_scope not in CIN_SCOPES:
        raise ValueError(f"cin_scope must be one of {CIN_SCOPES}, got {cin_scope!r}")
    if adapter_modalities is None:
        adapter_modalities = architecture["arch_kwargs"].get(ADAPTERS_KEY) or []
    adapter_modalities = sorted(int(m) for m in adapter_modalities)
    if any(not 0 <= m < num_modalities for m in adapter_modalities):
        raise ValueError(f"{ADAPTERS_KEY} {adapter_modalities}: the network has {num_modalities} modalities")
    arch = deepcopy(architecture)
    name = arch["network_class_name"]
    if name in CONDITIONAL_OF.values():
        pass
    elif name in CONDITIONAL_OF:
        arch["network_class_name"] = CONDITIONAL_OF[name]
    else:
        # nnU-Net may write short names ("PlainConvUNet") in older plans
        by_short = {k.split(".")[-1]: v for k, v in CONDITIONAL_OF.items()}
        if name.split(".")[-1] not in by_short:
            raise ValueError(f"no conditional counterpart known for network class {name!r}; supported: "
                             f"{sorted(CONDITIONAL_OF)}")
        arch["network_class_name"] = by_short[name.split(".")[-1]]
    arch["arch_kwargs"] = dict(arch["arch_kwargs"], num_modalities=int(num_modalities), cin_scope=cin_scope)
    arch["arch_kwargs"].pop(ADAPTERS_KEY, None)
    if adapter_modalities:
        if cin_scope != "all":
            raise ValueError(f"adapters follow every normalization, the decoder's too: {ADAPTERS_KEY} needs "
                             f"cin_scope 'all', got {cin_scope!r}")
        arch["arch_kwargs"][ADAPTERS_KEY] = adapter_modalities
    return arch


PLAIN_OF = {v: k for k, v in CONDITIONAL_OF.items()}


def is_conditional_unet(architecture: dict) -> bool:
    """Whether a plans `architecture` entry is one of the conditional U-Nets of this module."""
    return architecture["network_class_name"] in PLAIN_OF


def plain_architecture(architecture: dict) -> dict:
    """The unconditioned counterpart of a plans `architecture` entry (CIN kwargs dropped); plain entries unchanged."""
    arch = deepcopy(architecture)
    arch["network_class_name"] = PLAIN_OF.get(arch["network_class_name"], arch["network_class_name"])
    for k in ("num_modalities", "cin_scope", ADAPTERS_KEY):
        arch["arch_kwargs"].pop(k, None)
    return arch
