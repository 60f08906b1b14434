"""Our console scripts print their own output first: what a dependency says about itself while it is imported (timm's
`torch.jit.interface` FutureWarning) is hidden by the entry points, and only there."""
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
NOISE = "torch.jit.interface"


@pytest.mark.parametrize("command", [["nnUNetv2_predict_cin", "-h"], ["nnunet-cin", "convert-pretrained", "-h"]])
def test_commands_print_no_import_noise(command):
    result = subprocess.run([str(BIN / command[0]), *command[1:]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:") and "Warning" not in result.stderr, result.stderr[-2000:]


def test_the_library_leaves_warning_filters_alone():
    """Importing the library (a user's program) does not hide the warning: the filter is the entry points' own. If
    this fails because timm no longer warns, drop IMPORT_NOISE's entry (nnunet_cin.environment)."""
    result = subprocess.run([sys.executable, "-W", "default", "-c", "import nnunet_cin.training.cin_trainer"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and NOISE in result.stderr, result.stderr[-2000:]


def test_cpu_defaults_fill_only_what_is_missing():
    from nnunet_cin.environment import cpu_defaults

    assert cpu_defaults({}, processes=2, augmentation_workers=0, threads=2) == {
        "nnUNet_compile": "false", "OMP_WAIT_POLICY": "PASSIVE", "nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "0",
        "OMP_NUM_THREADS": "2"}
    mine = {"nnUNet_compile": "true", "nnUNet_def_n_proc": "8", "nnUNet_n_proc_DA": ""}
    assert cpu_defaults(mine, augmentation_workers=1) == {"OMP_WAIT_POLICY": "PASSIVE", "nnUNet_n_proc_DA": "1"}
    assert 1 <= int(cpu_defaults({})["nnUNet_def_n_proc"]) <= 4 and "nnUNet_n_proc_DA" not in cpu_defaults({})
