"""The unconditioned reference of nnUNetTrainerCSwinUNETR: the same Swin-UNETR with LayerNorm before every
transformer sub-layer, in patch merging and on the hidden states (and instance norm in every conv block), trained
with the same data pipeline (mixed-modality batches, folds, per-modality reporting) and the same recipe, without
conditioning: the paper's joint-training Swin baseline."""
from nnunet_cin.trainers.nnUNetTrainerCIN import add_schedules
from nnunet_cin.trainers.nnUNetTrainerCSwinUNETR import nnUNetTrainerCSwinUNETR


class nnUNetTrainerSwinUNETRJoint(nnUNetTrainerCSwinUNETR):
    conditioned = False


add_schedules(nnUNetTrainerSwinUNETRJoint, globals())
