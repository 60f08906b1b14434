"""nnUNetTrainerCViT (nnunet_cin.training.transformer_trainers) and its schedules _1epoch ... _250epochs
(nnunet_cin.training.training_length).
Thin on purpose: nnU-Net finds trainers by searching the modules of the nnUNet_extTrainer folder."""
from nnunet_cin.training.transformer_trainers import nnUNetTrainerCViT
from nnunet_cin.training.training_length import (nnUNetTrainerCViT_1epoch, nnUNetTrainerCViT_5epochs,
                                                 nnUNetTrainerCViT_10epochs, nnUNetTrainerCViT_20epochs,
                                                 nnUNetTrainerCViT_50epochs, nnUNetTrainerCViT_100epochs,
                                                 nnUNetTrainerCViT_250epochs)
