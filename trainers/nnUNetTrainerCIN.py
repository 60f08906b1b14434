"""nnUNetTrainerCIN (nnunet_cin.training.cin_trainer) and its schedules _1epoch ... _250epochs
(nnunet_cin.training.training_length).
Thin on purpose: nnU-Net finds trainers by searching the modules of the nnUNet_extTrainer folder."""
from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN
from nnunet_cin.training.training_length import (nnUNetTrainerCIN_1epoch, nnUNetTrainerCIN_5epochs,
                                                 nnUNetTrainerCIN_10epochs, nnUNetTrainerCIN_20epochs,
                                                 nnUNetTrainerCIN_50epochs, nnUNetTrainerCIN_100epochs,
                                                 nnUNetTrainerCIN_250epochs)
