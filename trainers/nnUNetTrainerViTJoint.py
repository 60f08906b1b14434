"""nnUNetTrainerViTJoint (nnunet_cin.training.transformer_trainers) and its schedules _1epoch ... _250epochs
(nnunet_cin.training.training_length).
Thin on purpose: nnU-Net finds trainers by searching the modules of the nnUNet_extTrainer folder."""
from nnunet_cin.training.transformer_trainers import nnUNetTrainerViTJoint
from nnunet_cin.training.training_length import (nnUNetTrainerViTJoint_1epoch, nnUNetTrainerViTJoint_5epochs,
                                                 nnUNetTrainerViTJoint_10epochs, nnUNetTrainerViTJoint_20epochs,
                                                 nnUNetTrainerViTJoint_50epochs, nnUNetTrainerViTJoint_100epochs,
                                                 nnUNetTrainerViTJoint_250epochs)
