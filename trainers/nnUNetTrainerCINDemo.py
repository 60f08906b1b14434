"""The demo's trainers (nnunet_cin.training.demo_trainers), where nnU-Net's nnUNet_extTrainer search finds them."""
from nnunet_cin.training.demo_trainers import nnUNetTrainerCINDemo, nnUNetTrainerCINDemoQuick
