"""nnUNetTrainerJointAlternate (nnunet_cin.training.baselines) and its schedules _1epoch ... _250epochs
(nnunet_cin.training.training_length).
Thin on purpose: nnU-Net finds trainers by searching the modules of the nnUNet_extTrainer folder."""
from nnunet_cin.training.baselines import nnUNetTrainerJointAlternate
from nnunet_cin.training.training_length import (nnUNetTrainerJointAlternate_1epoch,
                                                 nnUNetTrainerJointAlternate_5epochs,
                                                 nnUNetTrainerJointAlternate_10epochs,
                                                 nnUNetTrainerJointAlternate_20epochs,
                                                 nnUNetTrainerJointAlternate_50epochs,
                                                 nnUNetTrainerJointAlternate_100epochs,
                                                 nnUNetTrainerJointAlternate_250epochs)
