"""What nnUNetv2_predict_cin checks before loading a model (nnunet_cin.inference.checks); the end-to-end reproductions
are in test_predict.py."""
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_cin.inference.checks import PredictionInputError, check_input_images, check_output_folder

ONE_CHANNEL = {"0": "image"}


def image(path, array=None, **kw):
    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32) if array is None else array, **kw)
    sitk.WriteImage(img, str(path))
    return str(path)


def raises(fn, *fragments):
    with pytest.raises(PredictionInputError) as e:
        fn()
    for f in fragments:
        assert f in str(e.value), f"{f!r} not in:\n{e.value}"
    return str(e.value)


def test_output_folder_is_not_the_input_folder_nor_inside_it(tmp_path):
    inputs = tmp_path / "imagesTs"
    inputs.mkdir()
    raises(lambda: check_output_folder(str(inputs), [str(inputs)]), "is the input folder", "outside")
    raises(lambda: check_output_folder(str(tmp_path / "imagesTs" / ".." / "imagesTs" / ""), [str(inputs)]),
           "is the input folder")
    (tmp_path / "link").symlink_to(inputs)
    raises(lambda: check_output_folder(str(tmp_path / "link"), [str(inputs)]), "is the input folder")
    raises(lambda: check_output_folder(str(inputs / "pred"), [str(inputs)]), "is inside the input folder")
    check_output_folder(str(tmp_path / "imagesTs_pred"), [str(inputs)])  # a name that only starts alike
    check_output_folder(str(tmp_path / "pred" / "deeper"), [str(inputs)])
    assert sorted(os.listdir(tmp_path)) == ["imagesTs", "link"]  # nothing created or left by the checks


def test_output_folder_is_no_file_and_writable(tmp_path):
    (tmp_path / "afile").write_text("x")
    raises(lambda: check_output_folder(str(tmp_path / "afile"), []), "is an existing file")
    raises(lambda: check_output_folder(str(tmp_path / "afile" / "pred"), []), "afile is a file")
    if sys.platform.startswith("linux"):
        raises(lambda: check_output_folder("/proc/nnunet_cin_pred", []), "cannot write in /proc")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        raises(lambda: check_output_folder(str(locked / "pred"), []), "cannot write in", "locked")
    assert sorted(os.listdir(tmp_path)) == sorted(["afile"] + (["locked"] if os.geteuid() != 0 else []))


def _check_as_nobody(folder) -> str:
    """check_output_folder(folder) in a forked child that has given up root (setuid to nobody, so no capability lets
    it write anywhere): its error message, '' when it passes. A fork, not a new interpreter: nobody may not be able to
    read the test environment's files."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            try:
                check_output_folder(str(folder), [])
                message = ""
            except PredictionInputError as e:
                message = str(e)
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        message = f.read()
    os.waitpid(pid, 0)
    return message


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX users")
def test_output_folder_without_write_permission(tmp_path):
    """A folder the user may not write in (mode 0o555). Root writes anywhere, so as root (CI) the check runs in a
    child process that has dropped to the user nobody, in a folder nobody may enter (pytest's tmp_path is root's,
    0o700)."""
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="nnunet_cin_locked_")) if as_root else tmp_path
    try:
        base.chmod(0o755)
        locked, open_ = base / "locked", base / "open"
        locked.mkdir()
        open_.mkdir()
        locked.chmod(0o555)
        open_.chmod(0o777)
        if as_root:
            assert _check_as_nobody(open_ / "pred") == ""  # the child can run the check: the denial is the mode's
            message = _check_as_nobody(locked / "pred")
        else:
            message = raises(lambda: check_output_folder(str(locked / "pred"), []))
        assert message == (f"-o {locked / 'pred'}: cannot write in {locked} (Permission denied); choose an output "
                           f"folder you can write to")
        assert os.listdir(locked) == [] and os.listdir(open_) == []
    finally:
        if as_root:
            shutil.rmtree(base)


def test_channels_and_dimensions(tmp_path):
    ok = [[image(tmp_path / "ct_1_0000.nii.gz")], [image(tmp_path / "mr_1_0000.nii.gz")]]
    check_input_images(ok, ".nii.gz", ONE_CHANNEL)
    two = {"0": "T1", "1": "T2"}
    check_input_images([[image(tmp_path / "t_1_0000.nii.gz"), image(tmp_path / "t_1_0001.nii.gz")]], ".nii.gz", two)
    # a missing and an extra channel file: every case listed, with the model's channel_names
    extra = [image(tmp_path / f"x_000{i}.nii.gz") for i in range(3)]
    msg = raises(lambda: check_input_images([[str(tmp_path / "ct_1_0000.nii.gz")], extra], ".nii.gz", two,
                                            "M/dataset.json"),
                 "2 input problems", "case ct_1 has the file(s) ct_1_0000.nii.gz,", "case x", "x_0002.nii.gz",
                 "takes 2 channel(s)", "'T2'", "M/dataset.json", "CASE_0000.nii.gz, CASE_0001.nii.gz")
    assert msg.count("\n- ") == 2
    raises(lambda: check_input_images([[str(tmp_path / "t_1_0000.nii.gz"), str(tmp_path / "t_1_0001.nii.gz")]],
                                      ".nii.gz", ONE_CHANNEL), "case t_1", "takes 1 channel(s)")
    # a file list from Python whose file has no channel suffix
    raises(lambda: check_input_images([[image(tmp_path / "plain.nii.gz")]], ".nii.gz", ONE_CHANNEL),
           "case plain has the file(s) plain.nii.gz")
    # a 4D image: nnU-Net's reader would take its 4th dimension as channels
    series = sitk.JoinSeries([sitk.ReadImage(str(tmp_path / "ct_1_0000.nii.gz"))] * 3)
    four = tmp_path / "four" / "ct_2_0000.nii.gz"
    four.parent.mkdir()
    sitk.WriteImage(series, str(four))
    raises(lambda: check_input_images([[str(four)]], ".nii.gz", ONE_CHANNEL), str(four), "4D image",
           "6 x 5 x 4 x 3", "one 3D (or 2D) image per channel")
    # RGB voxels: three values per voxel
    rgb = image(tmp_path / "rgb_0000.nii.gz", np.zeros((4, 5, 6, 3), np.uint8), isVector=True)
    raises(lambda: check_input_images([[rgb]], ".nii.gz", ONE_CHANNEL), "3 values per voxel")
    # not an image at all
    (tmp_path / "junk_0000.nii.gz").write_bytes(b"not an image")
    raises(lambda: check_input_images([[str(tmp_path / "junk_0000.nii.gz")]], ".nii.gz", ONE_CHANNEL),
           "junk_0000.nii.gz cannot be read as an image")
    # all in one message
    raises(lambda: check_input_images([[str(four)], [str(tmp_path / "junk_0000.nii.gz")], [rgb]], ".nii.gz",
                                      ONE_CHANNEL), "3 input problems", "4D image", "cannot be read", "3 values")


def test_truncated_and_corrupt_inputs_are_named_in_one_message(tmp_path):
    """SimpleITK reads a cut-off .nii.gz without a word (zeros where the data is missing): every input file is read
    completely first. All bad files in one message; the complete one is not named."""
    from damaged_files import corrupt_gzip, overstate_slices, truncate_half
    rng = np.random.default_rng(0)
    files = {name: image(tmp_path / f"{name}_0000.nii.gz", rng.normal(size=(40, 50, 60)).astype(np.float32))
             for name in ("ok", "cut", "flipped", "overstated")}
    truncate_half(files["cut"])
    corrupt_gzip(files["flipped"])
    overstate_slices(files["overstated"])
    assert sitk.GetArrayFromImage(sitk.ReadImage(files["cut"])).shape == (40, 50, 60)  # what the check is for
    msg = raises(lambda: check_input_images([[f] for f in files.values()], ".nii.gz", ONE_CHANNEL),
                 "3 input problems", f"{files['cut']} is truncated", f"{files['flipped']} is a corrupt gzip file",
                 f"{files['overstated']} holds", "replace it with a complete copy")
    assert files["ok"] not in msg
    check_input_images([[files["ok"]]], ".nii.gz", ONE_CHANNEL)
