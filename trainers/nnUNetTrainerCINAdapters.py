"""nnUNetTrainerCINAdapters (nnunet_cin.training.variants) and its schedules _1epoch ... _250epochs
(nnunet_cin.training.training_length).
Thin on purpose: nnU-Net finds trainers by searching the modules of the nnUNet_extTrainer folder."""
from nnunet_cin.training.variants import nnUNetTrainerCINAdapters
from nnunet_cin.training.training_length import (nnUNetTrainerCINAdapters_1epoch, nnUNetTrainerCINAdapters_5epochs,
                                                 nnUNetTrainerCINAdapters_10epochs,
                                                 nnUNetTrainerCINAdapters_20epochs,
                                                 nnUNetTrainerCINAdapters_50epochs,
                                                 nnUNetTrainerCINAdapters_100epochs,
                                                 nnUNetTrainerCINAdapters_250epochs)
