"""nnUNetTrainerCINAdapters (nnunet_cin.training.variants) and its schedules, written out so that `-tr NAME`, grep and
an IDE find each one. nnU-Net finds trainers by searching the modules of the nnUNet_extTrainer folder."""
from nnunet_cin.training.variants import nnUNetTrainerCINAdapters


class nnUNetTrainerCINAdapters_1epoch(nnUNetTrainerCINAdapters):
    schedule_epochs = 1


class nnUNetTrainerCINAdapters_5epochs(nnUNetTrainerCINAdapters):
    schedule_epochs = 5


class nnUNetTrainerCINAdapters_10epochs(nnUNetTrainerCINAdapters):
    schedule_epochs = 10


class nnUNetTrainerCINAdapters_20epochs(nnUNetTrainerCINAdapters):
    schedule_epochs = 20


class nnUNetTrainerCINAdapters_50epochs(nnUNetTrainerCINAdapters):
    schedule_epochs = 50


class nnUNetTrainerCINAdapters_100epochs(nnUNetTrainerCINAdapters):
    schedule_epochs = 100


class nnUNetTrainerCINAdapters_250epochs(nnUNetTrainerCINAdapters):
    schedule_epochs = 250
