"""nnUNetTrainerCSwinUNETR (nnunet_cin.training.transformer_trainers) and its schedules _1epoch ... _250epochs
(nnunet_cin.training.training_length).
Thin on purpose: nnU-Net finds trainers by searching the modules of the nnUNet_extTrainer folder."""
from nnunet_cin.training.transformer_trainers import nnUNetTrainerCSwinUNETR
from nnunet_cin.training.training_length import (nnUNetTrainerCSwinUNETR_1epoch, nnUNetTrainerCSwinUNETR_5epochs,
                                                 nnUNetTrainerCSwinUNETR_10epochs, nnUNetTrainerCSwinUNETR_20epochs,
                                                 nnUNetTrainerCSwinUNETR_50epochs,
                                                 nnUNetTrainerCSwinUNETR_100epochs,
                                                 nnUNetTrainerCSwinUNETR_250epochs)
