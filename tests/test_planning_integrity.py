"""nnUNetv2_plan_and_preprocess_cin stops before writing anything on broken raw files: cut-off or corrupt files with
--verify_dataset_integrity (nnU-Net's own check reads them as zeros and passes), a label on another grid than its
image always (a numpy broadcast traceback in nnU-Net's fingerprint extraction otherwise)."""
import hashlib

import numpy as np
import pytest
import SimpleITK as sitk

from damaged_files import corrupt_gzip, overstate_slices, truncate_half
from nnunet_cin.dataset_conversion.synthetic import write_nnunet_dataset
from nnunet_cin.io_checks import check_raw_dataset, grid_problems
from nnunet_cin.planning.plan_and_preprocess import main

SHAPE = (12, 12, 16)


def tree_hash(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def raw(nnunet_env):
    return write_nnunet_dataset(nnunet_env.raw, 990, cases_per_modality={"CT": 3, "MR": 3}, shape=SHAPE,
                                test_cases_per_modality=1)


def plan(*extra):
    return main(["-d", "990", "-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar", *extra])


def problem_lines(err):
    return [line.strip() for line in err.splitlines() if line.startswith("  ")]


def test_intact_dataset_passes_both_checks(raw):
    check_raw_dataset(str(raw), completely=False)
    check_raw_dataset(str(raw), completely=True, num_workers=2)


def test_verify_dataset_integrity_names_every_damaged_file(raw, nnunet_env, capsys):
    damaged = {
        raw / "imagesTr" / "ct_0001_0000.nii.gz": (truncate_half, "is truncated"),
        raw / "labelsTr" / "mr_0000.nii.gz": (truncate_half, "is truncated"),
        raw / "imagesTr" / "mr_0002_0000.nii.gz": (corrupt_gzip, "is a corrupt gzip file"),
        raw / "labelsTr" / "ct_0002.nii.gz": (overstate_slices, "but its header promises"),
        raw / "imagesTs" / "mr_0003_0000.nii.gz": (truncate_half, "is truncated"),
    }
    for path, (damage, _) in damaged.items():
        damage(path)
    before = tree_hash(raw)
    assert plan("--verify_dataset_integrity") == 2
    err = capsys.readouterr().err
    lines = problem_lines(err)
    for path, (_, reason) in damaged.items():
        assert any(line.startswith(f"{path}: ") and reason in line for line in lines), (path, err)
    # each file once: the grids of cases with a broken file are not compared (their headers cannot be trusted)
    assert len(lines) == len(damaged)
    assert "nothing was written" in err
    assert list(nnunet_env.preprocessed.iterdir()) == [] and tree_hash(raw) == before


def test_label_of_another_shape_is_named_without_verify_flag(raw, nnunet_env, capsys):
    label = sitk.ReadImage(str(raw / "labelsTr" / "ct_0000.nii.gz"))
    small = sitk.GetImageFromArray(sitk.GetArrayFromImage(label)[:, :, :-4])
    small.SetSpacing(label.GetSpacing())
    sitk.WriteImage(small, str(raw / "labelsTr" / "ct_0000.nii.gz"))
    coarse = sitk.ReadImage(str(raw / "labelsTr" / "mr_0001.nii.gz"))
    coarse.SetSpacing([2 * s for s in coarse.GetSpacing()])
    sitk.WriteImage(coarse, str(raw / "labelsTr" / "mr_0001.nii.gz"))
    before = tree_hash(raw)
    assert plan() == 2
    lines = problem_lines(capsys.readouterr().err)
    x, y, z = SHAPE[::-1]
    assert lines[0] == (f"ct_0000: label {raw / 'labelsTr' / 'ct_0000.nii.gz'} has size ({x - 4}, {y}, {z}), its "
                        f"image ct_0000_0000.nii.gz ({x}, {y}, {z}) (x, y, z)")
    assert lines[1].startswith(f"mr_0001: label {raw / 'labelsTr' / 'mr_0001.nii.gz'} has spacing (")
    assert len(lines) == 2
    assert list(nnunet_env.preprocessed.iterdir()) == [] and tree_hash(raw) == before


def test_grid_problems_of_multichannel_cases(tmp_path):
    def write(name, shape_zyx, spacing=(1.0, 1.0, 1.0), components=1):
        array = np.zeros(shape_zyx + ((components,) if components > 1 else ()), np.uint8)
        img = sitk.GetImageFromArray(array, isVector=components > 1)
        img.SetSpacing(spacing)
        sitk.WriteImage(img, str(tmp_path / name))
        return str(tmp_path / name)

    a, b = write("c_0000.nii.gz", (4, 5, 6)), write("c_0001.nii.gz", (4, 5, 6))
    assert grid_problems("c", [a, b], write("c.nii.gz", (4, 5, 6))) == []
    other = write("c_0002.nii.gz", (4, 5, 7))
    assert grid_problems("c", [a, other], write("d.nii.gz", (4, 5, 6), (1.0, 1.0, 1.5))) == [
        f"c: image {other} has size (7, 5, 4), its image c_0000.nii.gz (6, 5, 4) (x, y, z)",
        f"c: label {tmp_path / 'd.nii.gz'} has spacing (1.0, 1.0, 1.5), its image c_0000.nii.gz (1.0, 1.0, 1.0)"]
    vector = write("v.nii.gz", (4, 5, 6), components=3)
    assert grid_problems("c", [a], vector) == [f"c: label {vector} has 3 components per voxel; a label map holds "
                                               f"one value per voxel"]
    assert grid_problems("c", [a], str(tmp_path / "missing.nii.gz")) == \
        [f"c: {tmp_path / 'missing.nii.gz'} does not exist"]
