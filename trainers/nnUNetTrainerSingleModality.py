"""nnUNetTrainerSingleModality_<MODALITY>[_<N>epochs] (nnunet_cin.training.baselines), made on demand when nnU-Net's
nUNet_extTrainer search asks this module for the name."""
from nnunet_cin.training.baselines import nnUNetTrainerSingleModality, single_modality_class, single_modality_lookup

__getattr__ = single_modality_lookup
