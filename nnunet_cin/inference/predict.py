"""The old home of inference, kept so that `nnunet_cin.inference.predict` still imports what it used to hold.

Inference now lives in three modules, one job each: nnunet_cin.inference.predictor (nnUNetPredictorCIN, the predictor
Python users call), nnunet_cin.inference.command (nnUNetv2_predict_cin and nnUNetv2_predict_cin_from_modelfolder)
and nnunet_cin.inference.signals (SIGTERM ends a run with its workers). Import from those.
"""
import sys

from nnunet_cin.inference.command import predict_entry_point, predict_from_modelfolder_entry_point
from nnunet_cin.inference.predictor import check_model_folder, nnUNetPredictorCIN
from nnunet_cin.inference.signals import sigterm_ends_run

_sigterm_ends_run = sigterm_ends_run  # its name before the split (scripts in tests/test_predict.py import it)

__all__ = ["nnUNetPredictorCIN", "check_model_folder", "predict_entry_point", "predict_from_modelfolder_entry_point",
           "sigterm_ends_run", "_sigterm_ends_run"]

if __name__ == '__main__':
    predict_entry_point(sys.argv[1:])
