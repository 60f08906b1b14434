"""Training: nnUNetTrainerCIN and its baselines, the modality sampler, folds, per-modality reporting, checkpoints."""
