"""Experiments built from nnU-Net's commands: the demo and the comparison (nnunet-cin demo / compare)."""
