"""nnUNetTrainerCINAllNorms (nnunet_cin.training.variants) and its schedules _1epoch ... _250epochs
(nnunet_cin.training.training_length).
Thin on purpose: nnU-Net finds trainers by searching the modules of the nnUNet_extTrainer folder."""
from nnunet_cin.training.variants import nnUNetTrainerCINAllNorms
from nnunet_cin.training.training_length import (nnUNetTrainerCINAllNorms_1epoch, nnUNetTrainerCINAllNorms_5epochs,
                                                 nnUNetTrainerCINAllNorms_10epochs,
                                                 nnUNetTrainerCINAllNorms_20epochs,
                                                 nnUNetTrainerCINAllNorms_50epochs,
                                                 nnUNetTrainerCINAllNorms_100epochs,
                                                 nnUNetTrainerCINAllNorms_250epochs)
