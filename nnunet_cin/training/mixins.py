"""What any nnU-Net trainer can take from us, nnU-Net's own `nnUNetTrainer` included: put a mixin first in the bases.

    class nnUNetTrainerShort(ShortSchedule, Seeded, OMPThreads, nnUNetTrainer):
        schedule_epochs, schedule_iterations = 20, 100

- ShortSchedule: the length of a run from class attributes, set after nnU-Net's __init__ as nnU-Net's own variants
  do (nnunetv2/training/nnUNetTrainer/variants/training_length): `schedule_epochs`, `schedule_iterations` (training
  batches per epoch), `schedule_val_iterations` (pseudo-Dice batches per epoch); None keeps nnU-Net's value.
- Seeded: `seed` (class attribute) or $nnUNet_cin_seed seeds the network's initial weights and the data loading of
  the training process (nnunet_cin.training.seeding); unset, nothing is seeded, as in nnU-Net. nnUNetTrainerCIN adds
  what needs its own data pipeline: seeds for the augmentation workers and the generators' states in checkpoints.
- OMPThreads: on the CPU, torch uses $OMP_NUM_THREADS threads; nnU-Net's nnUNetv2_train gives it every core
  whatever OMP_NUM_THREADS says, so trainings side by side (nnunet-cin compare -j) would each take them all.
nnUNetTrainerCIN and all our trainers have the three.
"""
import os
from typing import Optional

import torch

from nnunet_cin.training.seeding import DATA, INIT, derive_seed, run_seed, seed_everything
from nnunet_cin.training.seeding import describe as describe_seed


class ShortSchedule:
    schedule_epochs: Optional[int] = None
    schedule_iterations: Optional[int] = None
    schedule_val_iterations: Optional[int] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.schedule_epochs is not None:
            self.num_epochs = self.schedule_epochs
        if self.schedule_iterations is not None:
            self.num_iterations_per_epoch = self.schedule_iterations
        if self.schedule_val_iterations is not None:
            self.num_val_iterations_per_epoch = self.schedule_val_iterations


class Seeded:
    seed: Optional[int] = None  # the run seed; $nnUNet_cin_seed overrides it; None: unseeded (nnU-Net's)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.seed = run_seed(type(self).seed)  # an instance attribute: nnU-Net's debug.json lists it
        self.my_init_kwargs["seed"] = self.seed  # checkpoints record it in init_args
        self.print_to_log_file(f"Random streams: {describe_seed(self.seed)}")

    def initialize(self):
        if self.seed is not None and not self.was_initialized:
            seed_everything(derive_seed(self.seed, INIT))  # the network's initial weights
        super().initialize()

    def on_train_start(self):
        if not self.was_initialized:  # (nnU-Net initializes here when nobody did: the network before the data)
            self.initialize()
        if self.seed is not None:  # data loading and augmentation: every DDP rank its own stream
            seed_everything(derive_seed(self.seed, DATA, self.local_rank, self.current_epoch))
        super().on_train_start()  # builds the data loaders (and draws one batch from each)


class OMPThreads:
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        threads = os.environ.get("OMP_NUM_THREADS", "").strip()
        if self.device.type == "cpu" and threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))
