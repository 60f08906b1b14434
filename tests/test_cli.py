import os
import subprocess
import sys

import nnunet_cin.trainers
from nnunet_cin.environment import env_exports

OURS = os.path.abspath(nnunet_cin.trainers.__path__[0])


def test_trainer_folder_holds_the_trainers():
    assert os.path.isfile(os.path.join(OURS, "nnUNetTrainerCIN.py"))


def test_env_exports_only_what_is_missing(tmp_path):
    assert env_exports({}) == [f"export nnUNet_extTrainer={OURS}"]
    assert env_exports({"nnUNet_extTrainer": OURS}) == []
    # the user's own trainer folder stays first, ours is appended
    mine = str(tmp_path / "my trainers")
    assert env_exports({"nnUNet_extTrainer": mine}) == [f"export nnUNet_extTrainer='{mine}{os.pathsep}{OURS}'"]
    assert env_exports({"nnUNet_extTrainer": os.pathsep.join([mine, OURS])}) == []
    lines = env_exports({"nnUNet_raw": "/data/raw"}, root=str(tmp_path))
    assert f"export nnUNet_preprocessed={tmp_path / 'nnUNet_preprocessed'}" in lines
    assert f"export nnUNet_results={tmp_path / 'nnUNet_results'}" in lines
    assert not any(line.startswith("export nnUNet_raw=") for line in lines)


def test_env_output_makes_nnunet_find_our_trainer(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    out = subprocess.run(["nnunet-cin", "env"], capture_output=True, text=True, env=env, check=True).stdout
    env["nnUNet_extTrainer"] = out.strip().split("=", 1)[1]
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name\n"
            "print(recursive_find_trainer_class_by_name('nnUNetTrainerCIN_5epochs').__name__)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert found.stdout.strip().endswith("nnUNetTrainerCIN_5epochs"), found.stderr
