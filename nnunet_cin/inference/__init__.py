"""Inference: nnUNetv2_predict_cin and the predictor. Kept import-light: spawned preprocessing workers import
nunet_cin.inference.preprocessing."""
