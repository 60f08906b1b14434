"""What compare's end-to-end tests share (test_compare_arms_end_to_end.py, test_compare_seeds_end_to_end.py, one file
each so that pytest-xdist runs them at the same time): the command, the user's short test trainers, their fixture."""
import os
import subprocess
import sys

import pytest

COMPARE = [sys.executable, "-m", "nnunet_cin.experiments.compare"]


def run_compare(*args, ok=True, env=None):
    result = subprocess.run([*COMPARE, *args], capture_output=True, text=True, env=env or dict(os.environ))
    if ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# ---------------------------------------------------------------------------------------------------------------------
# end to end: real nnUNetv2_plan_and_preprocess(_cin) / nnUNetv2_train subprocesses on tiny data

# The user's own short schedules, from their folder on nnUNet_extTrainer, for every trainer the tests use:
# "{trainer}Tiny" one epoch of one iteration, "{trainer}Three" three. No test-time mirroring. checkpoint_latest.pth:
# our trainers' own schedule (nnunet_cin.training.resume: a tenth of the schedule, here every epoch), nnU-Net's
# save_every untouched. TEST_STOP_AFTER_EPOCH=N kills the training (SIGKILL, as a crash or a scheduler would) right
# after epoch N's checkpoint is written.
TEST_TRAINERS = '''
import os
import signal

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunet_cin.training.baselines import nnUNetTrainerSingleModality_CT, nnUNetTrainerSingleModality_MR
from nnunet_cin.training.cin_trainer import nnUNetTrainerCIN
from nnunet_cin.trainers.nnUNetTrainerJoint import nnUNetTrainerJoint


class Short:
    epochs = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = 1
        self.num_val_iterations_per_epoch = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None

    def on_epoch_end(self):
        super().on_epoch_end()  # our trainers' schedule writes checkpoint_latest.pth (every epoch of 3), then counts it
        stop = os.environ.get("TEST_STOP_AFTER_EPOCH")
        if stop is not None and self.current_epoch == int(stop) + 1:
            os.kill(os.getpid(), signal.SIGKILL)


class Three(Short):
    epochs = 3


class nnUNetTrainerTiny(Short, nnUNetTrainer): pass
class nnUNetTrainerCINTiny(Short, nnUNetTrainerCIN): pass
class nnUNetTrainerJointTiny(Short, nnUNetTrainerJoint): pass
class nnUNetTrainerSingleModality_CTTiny(Short, nnUNetTrainerSingleModality_CT): pass
class nnUNetTrainerSingleModality_MRTiny(Short, nnUNetTrainerSingleModality_MR): pass
class nnUNetTrainerCINThree(Three, nnUNetTrainerCIN): pass
class nnUNetTrainerJointThree(Three, nnUNetTrainerJoint): pass
'''


@pytest.fixture
def test_trainers(nnunet_env, tmp_path, monkeypatch):
    folder = tmp_path / "my_trainers"
    folder.mkdir()
    (folder / "compare_test_trainers.py").write_text(TEST_TRAINERS)
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([str(folder), os.environ["nnUNet_extTrainer"]]))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    monkeypatch.delenv("nnUNet_cin_seed", raising=False)
    monkeypatch.delenv("TEST_STOP_AFTER_EPOCH", raising=False)
    return nnunet_env


def epochs_in(log_text):
    return [int(line.split("Epoch ")[1]) for line in log_text.splitlines() if ": Epoch " in line and
            line.split("Epoch ")[1].strip().isdigit()]
