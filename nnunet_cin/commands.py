"""The console scripts of setup.py. Each runs its command with `quiet_imports` (nnunet_cin.environment), so that
what dependencies print about themselves while they are imported does not come before the command's own output."""
import importlib

from nnunet_cin.environment import quiet_imports


def _run(module: str, function: str):
    with quiet_imports():
        return getattr(importlib.import_module(module), function)()


def nnunet_cin():
    return _run("nnunet_cin.cli", "main")


def plan_and_preprocess():
    return _run("nnunet_cin.planning.plan_and_preprocess", "main")


def _predict(function: str):
    from nnunet_cin.inference.orphans import forks_end_with_this_process_from_now
    forks_end_with_this_process_from_now()  # the process is the command: its forks end with it, also after the run
    return _run("nnunet_cin.inference.command", function)


def predict():
    return _predict("predict_entry_point")


def predict_from_modelfolder():
    return _predict("predict_from_modelfolder_entry_point")


def evaluate():
    return _run("nnunet_cin.evaluation.evaluate", "main")


def convert_mmwhs():
    return _run("nnunet_cin.dataset_conversion.mmwhs", "main")
