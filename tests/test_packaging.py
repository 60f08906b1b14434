import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_carries_trainers_and_entry_points(tmp_path):
    """A non-editable install must find our trainers inside the package (nnUNet_extTrainer points there)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, cwd=tmp_path)
    wheel, = tmp_path.glob("nnunet_cin-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (REPO / "trainers").glob("*.py"):
        assert f"nnunet_cin/trainers/{module.name}" in names
    assert "nnunet_cin/cin.py" in names
    entry_points = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for command in ("nnunet-cin", "nnUNetv2_plan_and_preprocess_cin", "nnUNetv2_predict_cin", "nnUNetv2_evaluate_cin",
                    "nnUNetv2_convert_mmwhs"):
        assert f"{command} =" in entry_points
