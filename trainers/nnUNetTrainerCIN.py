"""nnUNetTrainerCIN and its schedules (_1epoch ... _250epochs), from nnunet_cin.training.cin_trainer.
Thin on purpose: nnU-Net finds trainers by searching the modules of the nnUNet_extTrainer folder."""
from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN
from nnunet_cin.training.schedules import schedule_variants

globals().update(schedule_variants(nnUNetTrainerCIN))
