"""The paper's baselines, with nnUNetTrainerCIN's data pipeline (folds, per-modality reporting) and a plain network:

- nnUNetTrainerJoint: all modalities, mixed-modality batches (same shares as nnUNetTrainerCIN), no conditioning.
- nnUNetTrainerJointAlternate: all modalities, one modality per batch in turn (the paper's joint training).
- nnUNetTrainerSingleModality_<MODALITY> (e.g. _CT, _MR_50epochs): that modality's cases of the fold only
  (validation too), in its own results folder. The classes are made on demand for any modality name (nnU-Net looks
  trainers up with hasattr/getattr on the module; see `single_modality_class`); fine-tune on another modality with
  nnU-Net's `-pretrained_weights`.
"""
import re

import torch

from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN
from nnunet_cin.training.schedules import SCHEDULES, add_schedules, schedule_suffix


class nnUNetTrainerJoint(nnUNetTrainerCIN):
    conditioned = False


class nnUNetTrainerJointAlternate(nnUNetTrainerJoint):
    modality_sampling = "alternate"


add_schedules(nnUNetTrainerJoint, globals())
add_schedules(nnUNetTrainerJointAlternate, globals())


_NAME = re.compile(r"^nnUNetTrainerSingleModality_(?P<modality>.+?)(?:_(?P<epochs>\d+)epochs?)?$")


class nnUNetTrainerSingleModality(nnUNetTrainerCIN):
    """Base class; train `nnUNetTrainerSingleModality_<MODALITY>`."""
    conditioned = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        if self.single_modality is None:
            raise RuntimeError("name the modality in the trainer: -tr nnUNetTrainerSingleModality_<MODALITY>, "
                               "e.g. nnUNetTrainerSingleModality_CT")
        super().__init__(plans, configuration, fold, dataset_json, device)


def single_modality_class(modality: str, epochs: int = None) -> type:
    """The trainer class for `modality` (and an optional schedule), created once and kept in this module."""
    name = f"nnUNetTrainerSingleModality_{modality}" + (schedule_suffix(epochs) if epochs is not None else "")
    if name not in globals():
        if epochs is not None and epochs not in SCHEDULES:
            raise AttributeError(f"no schedule {epochs}epochs; available: {SCHEDULES}")
        globals()[name] = type(name, (nnUNetTrainerSingleModality,), {
            "single_modality": modality, "schedule_epochs": epochs, "__module__": __name__, "__qualname__": name,
            "__doc__": f"Single-modality baseline: {modality} only" + (f", {epochs} epochs." if epochs else ".")})
    return globals()[name]


def single_modality_lookup(name: str):
    """Module `__getattr__` of the modules that offer the single-modality trainers (nnU-Net looks trainers up by name)."""
    match = _NAME.match(name)
    if match is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    epochs = match.group("epochs")
    trainer = single_modality_class(match.group("modality"), int(epochs) if epochs else None)
    if trainer.__name__ != name:  # e.g. "_5epoch": nnU-Net spells it "_5epochs"
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (did you mean {trainer.__name__}?)")
    return trainer


__getattr__ = single_modality_lookup
