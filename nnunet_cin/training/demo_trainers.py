"""Schedules for `nnunet-cin demo`: a conditional model that learns the synthetic hearts in minutes on 2 CPU cores."""
import torch

from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN


class nnUNetTrainerCINDemo(nnUNetTrainerCIN):
    """30 epochs of 20 iterations (nnU-Net: 1000 x 250): enough for the synthetic data, minutes on a CPU."""
    demo_epochs, demo_iterations, demo_val_iterations = 30, 20, 4

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.demo_epochs
        self.num_iterations_per_epoch = self.demo_iterations
        self.num_val_iterations_per_epoch = self.demo_val_iterations


class nnUNetTrainerCINDemoQuick(nnUNetTrainerCINDemo):
    """The demo's plumbing only (tests, smoke runs): 2 epochs of 2 iterations; learns nothing."""
    demo_epochs, demo_iterations, demo_val_iterations = 2, 2, 1
