"""nnUNetTrainerCINAlternate (nnunet_cin.training.variants) and its schedules _1epoch ... _250epochs
(nnunet_cin.training.training_length).
Thin on purpose: nnU-Net finds trainers by searching the modules of the nnUNet_extTrainer folder."""
from nnunet_cin.training.variants import nnUNetTrainerCINAlternate
from nnunet_cin.training.training_length import (nnUNetTrainerCINAlternate_1epoch,
                                                 nnUNetTrainerCINAlternate_5epochs,
                                                 nnUNetTrainerCINAlternate_10epochs,
                                                 nnUNetTrainerCINAlternate_20epochs,
                                                 nnUNetTrainerCINAlternate_50epochs,
                                                 nnUNetTrainerCINAlternate_100epochs,
                                                 nnUNetTrainerCINAlternate_250epochs)
