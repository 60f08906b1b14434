"""Evaluation: nnU-Net's metrics per case, summarised per modality and structure (nnUNetv2_evaluate_cin)."""
