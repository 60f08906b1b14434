"""nnUNetTrainerSingleModality_CT, _MR, _T2 (nnunet_cin.training.baselines) and their schedules _1epoch ...
_250epochs (nnunet_cin.training.training_length); another modality name: see nnunet_cin.training.baselines.
Thin on purpose: nnU-Net finds trainers by searching the modules of the nnUNet_extTrainer folder."""
from nnunet_cin.training.baselines import (nnUNetTrainerSingleModality, nnUNetTrainerSingleModality_CT,
                                           nnUNetTrainerSingleModality_MR, nnUNetTrainerSingleModality_T2)
from nnunet_cin.training.training_length import (nnUNetTrainerSingleModality_CT_1epoch,
                                                 nnUNetTrainerSingleModality_CT_5epochs,
                                                 nnUNetTrainerSingleModality_CT_10epochs,
                                                 nnUNetTrainerSingleModality_CT_20epochs,
                                                 nnUNetTrainerSingleModality_CT_50epochs,
                                                 nnUNetTrainerSingleModality_CT_100epochs,
                                                 nnUNetTrainerSingleModality_CT_250epochs,
                                                 nnUNetTrainerSingleModality_MR_1epoch,
                                                 nnUNetTrainerSingleModality_MR_5epochs,
                                                 nnUNetTrainerSingleModality_MR_10epochs,
                                                 nnUNetTrainerSingleModality_MR_20epochs,
                                                 nnUNetTrainerSingleModality_MR_50epochs,
                                                 nnUNetTrainerSingleModality_MR_100epochs,
                                                 nnUNetTrainerSingleModality_MR_250epochs,
                                                 nnUNetTrainerSingleModality_T2_1epoch,
                                                 nnUNetTrainerSingleModality_T2_5epochs,
                                                 nnUNetTrainerSingleModality_T2_10epochs,
                                                 nnUNetTrainerSingleModality_T2_20epochs,
                                                 nnUNetTrainerSingleModality_T2_50epochs,
                                                 nnUNetTrainerSingleModality_T2_100epochs,
                                                 nnUNetTrainerSingleModality_T2_250epochs)
