"""nnU-Net checkpoints that know their modalities, and pretrained weights across plain and conditional networks.

- `extra_checkpoint_entries(...)`: nnU-Net's `save_checkpoint` writes its usual dict; inside this context the dict
  gets extra top-level keys (e.g. "modalities"). The format stays nnU-Net's: every nnU-Net tool still reads it.
- `load_pretrained_weights(network, fname)`: nnU-Net's `-pretrained_weights` semantics (every key but the
  segmentation layers must exist with a compatible shape) plus the conversions between normalisation layers:
  plain InstanceNorm (C,) -> CIN (M, C): copied into every modality row; CIN -> CIN: rows matched by modality name
  when the checkpoint records its modalities (a modality the checkpoint lacks gets the mean of its rows);
  CIN (M, C) -> plain (C,): mean over the rows. `install_pretrained_weights_loader()` makes nnU-Net's
  `nnUNetv2_train -pretrained_weights` use it (it behaves as nnU-Net's own for plain -> plain).
"""
from contextlib import contextmanager
from typing import Optional, Sequence

import torch
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_cin.cin import cin_layers

SKIP_IN_PRETRAINED = (".seg_layers.",)


@contextmanager
def extra_checkpoint_entries(entries: dict):
    """Add `entries` to every nnU-Net checkpoint dict (recognised by its "network_weights") saved in this block."""
    original = torch.save

    def save(obj, *args, **kwargs):
        if isinstance(obj, dict) and "network_weights" in obj:
            obj = {**obj, **entries}
        return original(obj, *args, **kwargs)

    torch.save = save
    try:
        yield
    finally:
        torch.save = original


def unwrap(network: nn.Module) -> nn.Module:
    if isinstance(network, DDP):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def _cin_parameter_names(module: nn.Module) -> set:
    names = {id(layer) for layer in cin_layers(module)}
    return {f"{prefix}.{p}" for prefix, m in module.named_modules() if id(m) in names for p in ("weight", "bias")}


def adapt_state_dict(pretrained: dict, model_dict: dict, cin_keys: set, target_modalities: Optional[Sequence[str]],
                     source_modalities: Optional[Sequence[str]]) -> dict:
    """Reshape normalisation parameters of `pretrained` to the layout of `model_dict` (see the module docstring)."""
    out = dict(pretrained)
    for key, value in pretrained.items():
        if key not in model_dict or model_dict[key].shape == value.shape:
            continue
        target = model_dict[key]
        if key in cin_keys and value.dim() == 1 and target.dim() == 2 and target.shape[1] == value.shape[0]:
            out[key] = value[None].expand_as(target).clone()  # plain -> CIN
        elif key in cin_keys and value.dim() == 2 and target.dim() == 2 and target.shape[1] == value.shape[1]:
            out[key] = _match_rows(key, value, target, target_modalities, source_modalities)  # CIN -> CIN
        elif value.dim() == 2 and target.dim() == 1 and value.shape[1] == target.shape[0]:
            out[key] = value.mean(0)  # CIN -> plain
    return out


def _match_rows(key, value, target, target_modalities, source_modalities):
    if not source_modalities or not target_modalities:
        raise ValueError(f"{key}: the pretrained CIN layer has {value.shape[0]} modalities, this network "
                         f"{target.shape[0]}; without the modality names in both checkpoints the rows cannot be "
                         f"matched")
    rows = []
    for name in target_modalities:
        rows.append(value[list(source_modalities).index(name)] if name in source_modalities else value.mean(0))
    return torch.stack(rows).to(target.dtype)


def load_pretrained_weights(network: nn.Module, fname: str, verbose: bool = False,
                            modalities: Optional[Sequence[str]] = None) -> None:
    """nnU-Net's load_pretrained_weights, across plain and conditional networks. `modalities`: the names of this
    network's CIN rows (default: what the trainer attached as `network.cin_modalities`, if anything)."""
    import torch.distributed as dist

    map_location = torch.device("cuda", dist.get_rank()) if dist.is_initialized() else "cpu"
    saved = torch.load(fname, map_location=map_location, weights_only=False)
    mod = unwrap(network)
    model_dict = mod.state_dict()
    if modalities is None:
        modalities = getattr(mod, "cin_modalities", None)
    pretrained = adapt_state_dict(saved["network_weights"], model_dict, _cin_parameter_names(mod), modalities,
                                  saved.get("modalities"))
    for key in model_dict:
        if all(s not in key for s in SKIP_IN_PRETRAINED):
            if key not in pretrained:
                raise RuntimeError(f"Key {key} is missing in the pretrained model weights {fname}: the pretrained "
                                   f"weights do not seem to be compatible with your network.")
            if model_dict[key].shape != pretrained[key].shape:
                raise RuntimeError(f"The shape of {key} differs: pretrained {tuple(pretrained[key].shape)}, your "
                                   f"network {tuple(model_dict[key].shape)}.")
    pretrained = {k: v for k, v in pretrained.items()
                  if k in model_dict and all(s not in k for s in SKIP_IN_PRETRAINED)}
    model_dict.update(pretrained)
    print("################### Loading pretrained weights from file ", fname, "###################")
    if verbose:
        print("Below is the list of overlapping blocks in pretrained model and nnUNet architecture:")
        for key, value in pretrained.items():
            print(key, "shape", value.shape)
        print("################### Done ###################")
    mod.load_state_dict(model_dict)


def install_pretrained_weights_loader() -> None:
    """Let `nnUNetv2_train -pretrained_weights` load across plain/conditional networks (idempotent)."""
    import nnunetv2.run.run_training as run_training

    run_training.load_pretrained_weights = load_pretrained_weights
