"""nnunet-cin add-modality: a trained conditional model gains a modality (new CIN rows, trained from a few labelled
cases or adapted from unlabelled images) while every other parameter stays as it was, so the model's modalities keep
exactly the predictions they had.

inputs (what is asked, checked before anything is written), analysis (the new modality's normalization, statistics
and signature; the extended plans and dataset.json), preprocessing, rows (the new rows: initial values, the freezing,
the check that nothing else changed), trainer (the model's trainer, training the new rows), command (the whole run and
the command line).
"""
