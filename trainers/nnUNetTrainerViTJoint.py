"""The unconditioned reference of nnUNetTrainerCViT: the same UNETR with LayerNorm before every transformer sub-layer
(and instance norm in every conv block), trained with the same data pipeline (mixed-modality batches, folds,
per-modality reporting) and the same recipe, without conditioning: the paper's joint-training ViT baseline."""
from nnunet_cin.trainers.nnUNetTrainerCIN import add_schedules
from nnunet_cin.trainers.nnUNetTrainerCViT import nnUNetTrainerCViT


class nnUNetTrainerViTJoint(nnUNetTrainerCViT):
    conditioned = False


add_schedules(nnUNetTrainerViTJoint, globals())
