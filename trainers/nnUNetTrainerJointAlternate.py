"""Joint training with alternating batches (the paper's joint-training baseline): plain network, each batch holds
one modality, modalities take turns."""
from nnunet_cin.trainers.nnUNetTrainerCIN import add_schedules
from nnunet_cin.trainers.nnUNetTrainerJoint import nnUNetTrainerJoint


class nnUNetTrainerJointAlternate(nnUNetTrainerJoint):
    modality_sampling = "alternate"


add_schedules(nnUNetTrainerJointAlternate, globals())
