"""The paper's baselines, with nnUNetTrainerCIN's data pipeline (folds, per-modality reporting) and a plain network:

- nnUNetTrainerJoint: all modalities, mixed-modality batches (same shares as nnUNetTrainerCIN), no conditioning.
- nnUNetTrainerJointAlternate: all modalities, one modality per batch in turn (the paper's joint training).
- nnUNetTrainerSingleModality_<MODALITY> (_CT, _MR, _T2 here; their schedules in training_length): that modality's
  cases of the fold only (validation too), in its own results folder; fine-tune on another modality with nnU-Net's
  `-pretrained_weights`. Another modality name is one line in a module of your own trainer folder (on
  nnUNet_extTrainer, before ours):

      from nnunet_cin.training.baselines import nnUNetTrainerSingleModality
      class nnUNetTrainerSingleModality_PET(nnUNetTrainerSingleModality): single_modality = "PET"
"""
import torch

from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN


class nnUNetTrainerJoint(nnUNetTrainerCIN):
    conditioned = False


class nnUNetTrainerJointAlternate(nnUNetTrainerJoint):
    modality_sampling = "alternate"


class nnUNetTrainerSingleModality(nnUNetTrainerCIN):
    """Base class; train `nnUNetTrainerSingleModality_<MODALITY>` (a subclass that sets `single_modality`)."""
    conditioned = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        if self.single_modality is None:
            raise RuntimeError("name the modality in the trainer: -tr nnUNetTrainerSingleModality_<MODALITY>, "
                               "e.g. nnUNetTrainerSingleModality_CT (for another name, subclass "
                               "nnUNetTrainerSingleModality with single_modality = \"NAME\": "
                               "nnunet_cin.training.baselines)")
        super().__init__(plans, configuration, fold, dataset_json, device)


class nnUNetTrainerSingleModality_CT(nnUNetTrainerSingleModality):
    single_modality = "CT"


class nnUNetTrainerSingleModality_MR(nnUNetTrainerSingleModality):
    single_modality = "MR"


class nnUNetTrainerSingleModality_T2(nnUNetTrainerSingleModality):
    single_modality = "T2"
