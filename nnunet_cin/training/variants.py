"""Variants of the conditional model, one option changed each (arms of `nnunet-cin compare`):

- nnUNetTrainerCINAllNorms: CIN in every instance norm of the U-Net, the decoder's too (the method conditions the
  encoder only); `scope="all"` of nnunet_cin.networks.unet.make_conditional, recorded in the plans as the
  architecture's `cin_scope`.
- nnUNetTrainerCINAlternate: conditional, but each batch holds one modality in turn (the joint-training baseline's
  schedule, nnunet_cin.training.sampling) instead of mixed batches.
"""
from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN


class nnUNetTrainerCINAllNorms(nnUNetTrainerCIN):
    cin_scope = "all"


class nnUNetTrainerCINAlternate(nnUNetTrainerCIN):
    modality_sampling = "alternate"
