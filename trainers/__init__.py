"""The folder nnU-Net's nnUNet_extTrainer points at (installed as nnunet_cin.trainers): one thin module per trainer
family, re-exporting the classes defined in nnunet_cin.training (`nnunet-cin env` prints the export line)."""
