"""Fingerprint, experiment planning and the nnUNetv2_plan_and_preprocess_cin command, per modality."""
