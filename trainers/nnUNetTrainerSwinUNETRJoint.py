"""nnUNetTrainerSwinUNETRJoint (nnunet_cin.training.transformer_trainers) and its schedules _1epoch ... _250epochs
(nnunet_cin.training.training_length).
Thin on purpose: nnU-Net finds trainers by searching the modules of the nnUNet_extTrainer folder."""
from nnunet_cin.training.transformer_trainers import nnUNetTrainerSwinUNETRJoint
from nnunet_cin.training.training_length import (nnUNetTrainerSwinUNETRJoint_1epoch,
                                                 nnUNetTrainerSwinUNETRJoint_5epochs,
                                                 nnUNetTrainerSwinUNETRJoint_10epochs,
                                                 nnUNetTrainerSwinUNETRJoint_20epochs,
                                                 nnUNetTrainerSwinUNETRJoint_50epochs,
                                                 nnUNetTrainerSwinUNETRJoint_100epochs,
                                                 nnUNetTrainerSwinUNETRJoint_250epochs)
