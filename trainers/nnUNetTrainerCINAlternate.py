"""nnUNetTrainerCINAlternate and its schedules (_1epoch ... _250epochs), from nnunet_cin.training.variants.
Thin on purpose: nnU-Net finds trainers by searching the modules of the nnUNet_extTrainer folder."""
from nnunet_cin.training.variants import nnUNetTrainerCINAlternate
from nnunet_cin.training.schedules import schedule_variants

globals().update(schedule_variants(nnUNetTrainerCINAlternate))
