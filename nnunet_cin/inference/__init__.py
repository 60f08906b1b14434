"""Inference: nnUNetv2_predict_cin (command), the predictor (predictor), what decides each case's modality
(decisions, modality_check, hounsfield), preprocessing per modality (preprocessing), checks of inputs and outputs
(checks), complete outputs (outputs), and ending a run with its workers (signals, orphans). Kept import-light: spawned
preprocessing and export workers import nnunet_cin.inference.preprocessing and .outputs."""
