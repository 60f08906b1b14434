"""nnunet_cin.io_checks: complete files pass in every NIfTI flavour, each kind of damage is named. The sizes a header
promises are computed here by hand (352-byte NIfTI-1 / 544-byte NIfTI-2 header block + voxels x bytes per voxel)."""
import gzip
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from damaged_files import corrupt_gzip, overstate_slices, truncate_half
from nnunet_cin.io_checks import check_files_complete, incomplete_reason

SHAPE_ZYX = (9, 10, 11)


def sitk_file(tmp_path, name, dtype=np.int16):
    array = np.random.default_rng(0).integers(0, 100, SHAPE_ZYX).astype(dtype)
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


@pytest.mark.parametrize("name", ["a.nii.gz", "a.nii"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_complete_sitk_files_pass(tmp_path, name, dtype):
    assert incomplete_reason(sitk_file(tmp_path, name, dtype)) is None


@pytest.mark.parametrize("header_class", [nib.Nifti1Header, nib.Nifti2Header])
@pytest.mark.parametrize("endianness", ["<", ">"])
def test_nifti1_nifti2_both_byte_orders(tmp_path, header_class, endianness):
    image_class = nib.Nifti1Image if header_class is nib.Nifti1Header else nib.Nifti2Image
    header = header_class(endianness=endianness)
    header.set_data_dtype(np.int16)
    data = np.arange(np.prod(SHAPE_ZYX), dtype=np.int16).reshape(SHAPE_ZYX)
    for name in ("b.nii.gz", "b.nii"):
        path = tmp_path / name
        nib.save(image_class(data, np.eye(4), header=header), str(path))
        assert nib.load(str(path)).header.endianness == endianness
        assert incomplete_reason(path) is None
        promised = (352 if header_class is nib.Nifti1Header else 544) + data.size * 2
        if name == "b.nii":
            assert os.path.getsize(path) == promised  # the hand computation is right for a complete file
        os.truncate(path, os.path.getsize(path) - 1)
        reason = incomplete_reason(path)
        if name == "b.nii":
            assert reason == (f"holds {promised - 1} bytes of NIfTI data but its header promises {promised} (the "
                              f"file was cut off or the header's dimensions are wrong)")
        else:
            assert reason.startswith("is truncated")


def test_each_damage_is_named(tmp_path):
    truncated = sitk_file(tmp_path, "truncated.nii.gz")
    truncate_half(truncated)
    # what makes the check necessary: SimpleITK reads the cut-off file without a word, zeros for the rest
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(truncated))).shape == SHAPE_ZYX
    assert incomplete_reason(truncated) == \
        "is truncated (the gzip stream ends before its end marker: the file was cut off)"

    plain = sitk_file(tmp_path, "truncated.nii")
    truncate_half(plain)
    promised = 352 + int(np.prod(SHAPE_ZYX)) * 2
    assert f"holds {promised // 2} bytes of NIfTI data but its header promises {promised}" in incomplete_reason(plain)

    corrupt = sitk_file(tmp_path, "corrupt.nii.gz")
    corrupt_gzip(corrupt)
    assert incomplete_reason(corrupt).startswith("is a corrupt gzip file")

    overstated = sitk_file(tmp_path, "overstated.nii.gz")
    assert overstate_slices(overstated) == (11, 10, 18)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(overstated))).shape == (18, 10, 11)  # zeros for 9 slices
    assert incomplete_reason(overstated) == (
        f"holds {promised} bytes of NIfTI data but its header promises {352 + 11 * 10 * 18 * 2} (the file was cut off "
        f"or the header's dimensions are wrong)")

    appended = sitk_file(tmp_path, "appended.nii.gz")
    with open(appended, "ab") as f:
        f.write(b"not gzip at all")
    assert "followed by bytes that are not gzip data" in incomplete_reason(appended)

    not_nifti = tmp_path / "text.nii.gz"
    with gzip.open(not_nifti, "wb") as f:
        f.write(b"hello, world" * 100)
    assert incomplete_reason(not_nifti) == \
        "has a broken header: not a NIfTI file (the header size field is neither 348 nor 540)"
    assert incomplete_reason(tmp_path / "missing.nii.gz") == "does not exist"


def test_what_is_not_checked_or_tolerated(tmp_path):
    # an uncompressed NIfTI named .nii.gz reads fine everywhere: checked as plain NIfTI
    plain = sitk_file(tmp_path, "plain.nii")
    shutil.copy(plain, tmp_path / "plain_named_gz.nii.gz")
    assert incomplete_reason(tmp_path / "plain_named_gz.nii.gz") is None
    # zero padding after the gzip stream (some tools pad) is ignored by gzip readers
    padded = sitk_file(tmp_path, "padded.nii.gz")
    with open(padded, "ab") as f:
        f.write(b"\0" * 64)
    assert incomplete_reason(padded) is None
    # several gzip members (concatenated .gz files, some parallel compressors): every member is read
    raw = gzip.open(padded).read()
    members = tmp_path / "members.nii.gz"
    members.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(members))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(padded))))
    assert incomplete_reason(members) is None
    members.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:])[:-20])
    assert incomplete_reason(members).startswith("is truncated")
    # other formats are not checked
    (tmp_path / "x.nrrd").write_bytes(b"NRRD0004\n")
    assert incomplete_reason(tmp_path / "x.nrrd") is None


def test_file_larger_than_the_decompression_buffer(tmp_path):
    # 16 MB of voxels in a 16 kB file (an empty label): decompressed in several bounded pieces, every byte counted
    path = tmp_path / "empty_label.nii.gz"
    img = sitk.GetImageFromArray(np.zeros((256, 256, 256), np.uint8))
    sitk.WriteImage(img, str(path), True)
    assert os.path.getsize(path) < 100_000 and incomplete_reason(path) is None
    data = gzip.open(path).read()
    with gzip.open(path, "wb") as f:  # the same header, one voxel less
        f.write(data[:-1])
    assert incomplete_reason(path) == (f"holds {len(data) - 1} bytes of NIfTI data but its header promises "
                                       f"{len(data)} (the file was cut off or the header's dimensions are wrong)")


def test_check_files_complete_lists_only_bad_files(tmp_path):
    good = [sitk_file(tmp_path, f"good{i}.nii.gz") for i in range(5)]
    bad = [sitk_file(tmp_path, f"bad{i}.nii.gz") for i in range(3)]
    for b in bad:
        truncate_half(b)
    found = check_files_complete(good + bad, num_workers=3)
    assert sorted(found) == sorted(str(b) for b in bad)
    assert all(r.startswith("is truncated") for r in found.values())
    assert check_files_complete(good, num_workers=1) == {} and check_files_complete([]) == {}
