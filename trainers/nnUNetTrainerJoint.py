"""Joint-training baseline: nnUNetTrainerCIN's data pipeline (mixed-modality batches, same shares, same folds and
per-modality reporting) with a plain nnU-Net network: no conditioning."""
from nnunet_cin.trainers.nnUNetTrainerCIN import add_schedules, nnUNetTrainerCIN


class nnUNetTrainerJoint(nnUNetTrainerCIN):
    conditioned = False


add_schedules(nnUNetTrainerJoint, globals())
