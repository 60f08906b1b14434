"""Prediction outputs: complete or absent (nnunet_cin.inference.outputs), and the check --continue_prediction uses."""
import gzip
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk
from damaged_files import corrupt_gzip, truncate_half
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from nnunet_cin.inference.outputs import (OutputPlansManager, StagingFolders, commit_case, why_unfinished,
                                          why_unreadable)

SEG = np.random.default_rng(0).integers(0, 8, (20, 30, 40)).astype(np.uint8)  # compresses badly: a long stream


def write_nifti(path, array=SEG):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 1.5))
    sitk.WriteImage(image, str(path), True)


def properties():
    return {"sitk_stuff": {"spacing": (0.8, 0.9, 1.5), "origin": (0.0, 0.0, 0.0),
                           "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}, "spacing": [1.5, 0.9, 0.8]}


def test_truncated_and_corrupt_files_are_told_apart_from_complete_ones(tmp_path):
    nii_gz, nii = tmp_path / "a.nii.gz", tmp_path / "b.nii"
    write_nifti(nii_gz), write_nifti(nii)
    npz, pkl = tmp_path / "a.npz", tmp_path / "a.pkl"
    np.savez_compressed(npz, probabilities=np.random.default_rng(0).random((3, 8, 8, 8)).astype(np.float32))
    pkl.write_bytes(pickle.dumps({"spacing": [1, 2, 3], "modality": "CT", "pad": list(range(500))}))
    for f in (nii_gz, nii, npz, pkl):
        assert why_unreadable(str(f)) is None, f
    truncate_half(nii_gz), truncate_half(nii), truncate_half(npz), truncate_half(pkl)
    # what makes the check necessary: SimpleITK reads a truncated NIfTI without complaint, zeros where data is missing
    truncated = sitk.GetArrayFromImage(sitk.ReadImage(str(nii_gz)))
    assert truncated.shape == SEG.shape and (truncated != 0).sum() < 0.75 * (SEG != 0).sum()
    assert "is truncated" in why_unreadable(str(nii_gz))
    assert "header promises" in why_unreadable(str(nii))  # more voxels than the file has
    assert why_unreadable(str(npz)) is not None and why_unreadable(str(pkl)) is not None
    # corrupt (not truncated) files: bytes in the middle of the compressed data flipped
    flipped_nii, flipped_npz = tmp_path / "c.nii.gz", tmp_path / "c.npz"
    write_nifti(flipped_nii)
    np.savez_compressed(flipped_npz, probabilities=np.random.default_rng(0).random((3, 8, 8, 8)).astype(np.float32))
    for f in (flipped_nii, flipped_npz):
        corrupt_gzip(f)  # flips bytes in the middle: for a .npz, inside its compressed member
        assert why_unreadable(str(f)) is not None, f
    # other formats: read by the reader given
    mha = tmp_path / "d.mha"
    sitk.WriteImage(sitk.GetImageFromArray(SEG), str(mha), True)
    assert why_unreadable(str(mha), SimpleITKIO) is None
    truncate_half(mha)
    assert why_unreadable(str(mha), SimpleITKIO) is not None


def test_why_unfinished_names_the_file(tmp_path):
    truncated = str(tmp_path / "ct_0001")
    write_nifti(truncated + ".nii.gz")
    assert why_unfinished(truncated, ".nii.gz", False) is None
    assert why_unfinished(truncated, ".nii.gz", True) == f"{truncated}.npz is missing"
    np.savez_compressed(truncated + ".npz", probabilities=np.zeros((2, 4, 4, 4), np.float32))
    with open(truncated + ".pkl", "wb") as f:
        pickle.dump({"a": 1}, f)
    assert why_unfinished(truncated, ".nii.gz", True) is None
    truncate_half(truncated + ".nii.gz")
    assert why_unfinished(truncated, ".nii.gz", True).startswith(f"{truncated}.nii.gz cannot be read completely")


def test_writer_of_the_plans_leaves_complete_files_only(tmp_path):
    rw = OutputPlansManager({"image_reader_writer": "SimpleITKIO"}, ".nii.gz").image_reader_writer_class()
    assert isinstance(rw, SimpleITKIO)
    # not staged (someone else's iterator): the file alone, through a temporary name
    rw.write_seg(SEG, str(tmp_path / "ct_0001.nii.gz"), properties())
    assert sorted(os.listdir(tmp_path)) == ["ct_0001.nii.gz"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ct_0001.nii.gz"))), SEG)
    # staged by a run, as nnU-Net's export leaves it: probabilities first, the segmentation written last moves all
    staging = StagingFolders()
    staged = staging.stage(str(tmp_path / "mr_0002"))
    assert os.path.dirname(staged) != str(tmp_path) and os.path.basename(staged) == "mr_0002"
    np.savez_compressed(staged + ".npz", probabilities=np.ones((2, 3, 3, 3), np.float32))
    with open(staged + ".pkl", "wb") as f:
        pickle.dump({"modality": "MR"}, f)
    rw.write_seg(SEG, staged + ".nii.gz", properties())
    assert why_unfinished(str(tmp_path / "mr_0002"), ".nii.gz", True) is None
    assert os.listdir(os.path.dirname(staged)) == []
    staging.close()
    assert sorted(os.listdir(tmp_path)) == ["ct_0001.nii.gz", "mr_0002.nii.gz", "mr_0002.npz", "mr_0002.pkl"]


KILLED_WRITE = textwrap.dedent('''
    import os, signal, sys
    import numpy as np
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunet_cin.inference.outputs import complete_file_writer

    class DiesWhileWriting(SimpleITKIO):
        """Writes half of the file, then the process is killed (no cleanup can run)."""
        def write_seg(self, seg, output_fname, properties):
            super().write_seg(seg, output_fname, properties)
            os.truncate(output_fname, os.path.getsize(output_fname) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    seg = np.random.default_rng(0).integers(0, 8, (20, 30, 40)).astype(np.uint8)
    props = {"sitk_stuff": {"spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0),
                            "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}}
    complete_file_writer(DiesWhileWriting, ".nii.gz")().write_seg(seg, sys.argv[1], props)
''')


def test_a_write_killed_halfway_leaves_no_file_that_looks_finished(tmp_path):
    target = tmp_path / "ct_0001.nii.gz"
    r = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(target)], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not target.exists()
    # what is left is inside a hidden staging folder, which nnU-Net's tools (listing the folder's files) never see
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].is_dir() and leftovers[0].name.startswith(".partial-")


def test_a_case_moved_into_place_halfway_counts_as_unfinished(tmp_path, monkeypatch):
    """A kill between moving a case's probabilities and its segmentation: an older segmentation of the case must
    not stay beside the new probabilities as if the case were finished."""
    target = str(tmp_path / "ct_0001")
    write_nifti(target + ".nii.gz", SEG * 0)  # an older, complete prediction
    np.savez_compressed(target + ".npz", probabilities=np.zeros((2, 3, 3, 3), np.float32))
    with open(target + ".pkl", "wb") as f:
        pickle.dump({"old": True}, f)
    staging = StagingFolders()
    staged = staging.stage(target)
    write_nifti(staged + ".nii.gz")
    np.savez_compressed(staged + ".npz", probabilities=np.ones((2, 3, 3, 3), np.float32))
    with open(staged + ".pkl", "wb") as f:
        pickle.dump({"old": False}, f)
    real_replace = os.replace

    def killed_before_the_segmentation(src, dst):
        if dst.endswith(".nii.gz"):
            raise KeyboardInterrupt  # the process ends here
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", killed_before_the_segmentation)
    with pytest.raises(KeyboardInterrupt):
        commit_case(staged + ".nii.gz", ".nii.gz")
    monkeypatch.undo()
    assert why_unfinished(target, ".nii.gz", True) == f"{target}.nii.gz is missing"
    staging.close()


def test_gzip_check_reads_the_whole_stream(tmp_path):
    """A gzip whose data is complete but whose trailer (CRC, length) is cut: still incomplete."""
    f = tmp_path / "e.nii.gz"
    write_nifti(f)
    os.truncate(f, os.path.getsize(f) - 4)
    with pytest.raises(EOFError):
        gzip.decompress(f.read_bytes())
    assert why_unreadable(str(f)) is not None
