"""Trainers of the powered comparison (documentation/comparison.md, "The powered run"): every arm's trainer, the
same for all arms:

- schedule: EPOCHS x ITERATIONS training iterations (VALIDATION_ITERATIONS pseudo-Dice batches per epoch);
- network: the plans' U-Net cut to len(FEATURES) stages with FEATURES channels (a small CPU-sized network; nnU-Net
  plans 3 stages of 32, 64, 128 for these volumes);
- final validation without test-time mirroring (mirroring multiplies its cost by 8 and is the same for every arm);
- the plain nnU-Net arm (nnUNetTrainer) seeded like ours ($nnUNet_cin_seed; nnunet_cin.training.mixins.Seeded), so
  that its replicates are reproducible.

nnunet-cin compare finds them with `--trainer-template '{trainer}Powered'` once this folder is first on
nnUNet_extTrainer (benchmarks/powered_comparison/run.sh). For pilots, the environment variables
nnUNet_cin_powered_epochs, _iterations and _features (e.g. "16,32,64") override the constants.
"""
import os
from copy import deepcopy

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_cin.training.baselines import (nnUNetTrainerJoint, nnUNetTrainerJointAlternate,
                                           nnUNetTrainerSingleModality_CT, nnUNetTrainerSingleModality_MR)
from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN
from nnunet_cin.training.mixins import OMPThreads, Seeded, ShortSchedule
from nnunet_cin.training.variants import nnUNetTrainerCINAllNorms, nnUNetTrainerCINAlternate

EPOCHS = int(os.environ.get("nnUNet_cin_powered_epochs", 20))
ITERATIONS = int(os.environ.get("nnUNet_cin_powered_iterations", 100))
VALIDATION_ITERATIONS = 5
FEATURES = tuple(int(f) for f in os.environ.get("nnUNet_cin_powered_features", "16,32,64").split(","))


def small_network_plans(plans: dict, configuration: str) -> dict:
    """A copy of the plans whose configuration's U-Net keeps its first len(FEATURES) stages, with FEATURES channels."""
    plans = deepcopy(plans)
    kwargs = plans["configurations"][configuration]["architecture"]["arch_kwargs"]
    n = len(FEATURES)
    kwargs.update(n_stages=n, features_per_stage=list(FEATURES))
    for key in ("kernel_sizes", "strides", "n_conv_per_stage", "n_blocks_per_stage"):
        if key in kwargs:
            kwargs[key] = kwargs[key][:n]
    if "n_conv_per_stage_decoder" in kwargs:
        kwargs["n_conv_per_stage_decoder"] = kwargs["n_conv_per_stage_decoder"][:n - 1]
    return plans


class PoweredSchedule(ShortSchedule):
    """Put first in the bases: the comparison's schedule, network and validation on top of any nnU-Net trainer."""
    schedule_epochs, schedule_iterations, schedule_val_iterations = EPOCHS, ITERATIONS, VALIDATION_ITERATIONS

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(small_network_plans(plans, configuration), configuration, fold, dataset_json, device)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        configured = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None  # training keeps its mirroring augmentation
        return configured


class nnUNetTrainerPowered(PoweredSchedule, Seeded, OMPThreads, nnUNetTrainer):
    """Plain nnU-Net, seeded as our trainers are (network initialisation, then data loading and augmentation)."""


class nnUNetTrainerCINPowered(PoweredSchedule, nnUNetTrainerCIN):
    pass


class nnUNetTrainerJointPowered(PoweredSchedule, nnUNetTrainerJoint):
    pass


class nnUNetTrainerJointAlternatePowered(PoweredSchedule, nnUNetTrainerJointAlternate):
    pass


class nnUNetTrainerCINAlternatePowered(PoweredSchedule, nnUNetTrainerCINAlternate):
    pass


class nnUNetTrainerCINAllNormsPowered(PoweredSchedule, nnUNetTrainerCINAllNorms):
    pass


# the single-modality arms of the generated CT + MR hearts (another modality: one more line like these)
class nnUNetTrainerSingleModality_CTPowered(PoweredSchedule, nnUNetTrainerSingleModality_CT):
    pass


class nnUNetTrainerSingleModality_MRPowered(PoweredSchedule, nnUNetTrainerSingleModality_MR):
    pass
