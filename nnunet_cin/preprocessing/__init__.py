"""Preprocessing: nnU-Net's DefaultPreprocessor with each case normalized by its modality's scheme and statistics."""
