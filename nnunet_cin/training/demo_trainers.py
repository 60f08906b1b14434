"""Schedules for `nnunet-cin demo`: a conditional model that learns the synthetic hearts in minutes on 2 CPU cores."""
from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN


class nnUNetTrainerCINDemo(nnUNetTrainerCIN):
    """30 epochs of 20 iterations (nnU-Net: 1000 x 250): enough for the synthetic data, minutes on a CPU."""
    schedule_epochs, schedule_iterations, schedule_val_iterations = 30, 20, 4


class nnUNetTrainerCINDemoQuick(nnUNetTrainerCINDemo):
    """The demo's plumbing only (tests, smoke runs): 2 epochs of 2 iterations; learns nothing."""
    schedule_epochs, schedule_iterations, schedule_val_iterations = 2, 2, 1
