"""nnUNetTrainerJoint (nnunet_cin.training.baselines) and its schedules _1epoch ... _250epochs
(nnunet_cin.training.training_length).
Thin on purpose: nnU-Net finds trainers by searching the modules of the nnUNet_extTrainer folder."""
from nnunet_cin.training.baselines import nnUNetTrainerJoint
from nnunet_cin.training.training_length import (nnUNetTrainerJoint_1epoch, nnUNetTrainerJoint_5epochs,
                                                 nnUNetTrainerJoint_10epochs, nnUNetTrainerJoint_20epochs,
                                                 nnUNetTrainerJoint_50epochs, nnUNetTrainerJoint_100epochs,
                                                 nnUNetTrainerJoint_250epochs)
