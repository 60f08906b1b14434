"""The synthetic two-modality heart generator: determinism, labels, geometry variety, CT vs MR appearance, the
nnU-Net dataset it writes and the MM-WHS layout option."""
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_cin.dataset_conversion import synthetic

STRUCTURES = ["MYO", "LA", "LV", "RA", "RV", "AA", "PA"]


def arrays(case):
    image, label = case
    return sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_same_seed_same_case_other_seed_other_case(modality):
    a_img, a_lab = arrays(synthetic.generate_case(modality, 3))
    b_img, b_lab = arrays(synthetic.generate_case(modality, 3))
    c_img, c_lab = arrays(synthetic.generate_case(modality, 4))
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_lab, c_lab)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_seven_structures_large_enough_to_learn(modality):
    for seed in range(3):
        image, label = synthetic.generate_case(modality, seed, shape=(32, 32, 32))
        lab = sitk.GetArrayFromImage(label)
        assert lab.shape == (32, 32, 32) and lab.dtype == np.uint8
        assert set(np.unique(lab)) == set(range(8))
        counts = np.bincount(lab.ravel(), minlength=8)
        # every structure holds at least ~0.5% of the volume, the heart as a whole 10-50%
        assert counts[1:].min() >= 0.005 * lab.size, counts
        assert 0.1 * lab.size < counts[1:].sum() < 0.5 * lab.size, counts
        # image and label share one geometry
        for get in ("GetSpacing", "GetOrigin", "GetDirection", "GetSize"):
            assert getattr(image, get)() == getattr(label, get)()
    assert synthetic.LABELS == {"background": 0, **{s: i for i, s in enumerate(STRUCTURES, 1)}}


def test_myocardium_surrounds_left_ventricle():
    lab = sitk.GetArrayFromImage(synthetic.generate_case("CT", 0)[1])
    lv = np.argwhere(lab == synthetic.LABELS["LV"])
    # going outwards from the LV along each axis the first non-LV voxel is myocardium
    center = lv.mean(0).round().astype(int)
    for axis in range(3):
        for step in (1, -1):
            p = center.copy()
            while lab[tuple(p)] == synthetic.LABELS["LV"]:
                p[axis] += step
            assert lab[tuple(p)] == synthetic.LABELS["MYO"]


def test_geometry_varies_between_cases_and_modalities():
    cases = {(m, s): synthetic.generate_case(m, s)[0] for m in ("CT", "MR") for s in range(8)}
    directions = {im.GetDirection() for im in cases.values()}
    origins = {im.GetOrigin() for im in cases.values()}
    assert len(directions) >= 4 and len(origins) == len(cases)
    for im in cases.values():  # orthonormal, axis-aligned direction matrices
        d = np.array(im.GetDirection()).reshape(3, 3)
        assert np.allclose(d @ d.T, np.eye(3)) and set(np.abs(d).ravel()) == {0.0, 1.0}
    ct_spacing = [np.prod(cases["CT", s].GetSpacing()) for s in range(8)]
    mr_spacing = [np.prod(cases["MR", s].GetSpacing()) for s in range(8)]
    assert max(ct_spacing) < min(mr_spacing)  # CT voxels finer than MR voxels
    assert len(set(ct_spacing)) == 8
    explicit = synthetic.generate_case("MR", 0, shape=(20, 24, 28), spacing=(0.5, 0.6, 2.0))[0]
    assert explicit.GetSize() == (28, 24, 20) and explicit.GetSpacing() == (0.5, 0.6, 2.0)


def test_ct_and_mr_appearance_differ():
    ct_img, ct_lab = arrays(synthetic.generate_case("CT", 0))
    mr_img, mr_lab = arrays(synthetic.generate_case("MR", 0))
    assert ct_img.dtype == np.int16 and mr_img.dtype == np.float32
    # CT: air at about -1000 HU, blood pools bright and above myocardium; MR: positive, myocardium darker than the
    # tissue around it (the contrast ordering differs between the modalities)
    assert ct_img.min() <= -900 and mr_img.min() >= 0

    def mean(img, lab, name):
        return img[lab == synthetic.LABELS[name]].mean()

    assert mean(ct_img, ct_lab, "MYO") > np.median(ct_img[ct_lab == 0])
    assert mean(mr_img, mr_lab, "MYO") < np.median(mr_img[mr_lab == 0])
    for img, lab in ((ct_img, ct_lab), (mr_img, mr_lab)):
        assert all(mean(img, lab, s) > mean(img, lab, "MYO") + 100 for s in ("LV", "LA", "AA"))
    # noise: CT additive Gaussian of a fixed level; MR has a smooth bias field on top, so a homogeneous structure
    # (LV blood pool) varies more in MR, relative to its mean
    ct_lv, mr_lv = ct_img[ct_lab == 3].astype(float), mr_img[mr_lab == 3]
    assert 10 < ct_lv.std() < 40
    assert mr_lv.std() / mr_lv.mean() > 0.02


def test_mr_has_a_bias_field():
    """The mean tissue brightness of the eight octants of an MR volume differs by a factor well above what noise
    gives (the noise alone averages out over thousands of voxels)."""
    def octant_spread(seed):
        img, lab = arrays(synthetic.generate_case("MR", seed))
        tissue = (lab == 0) & (img > np.percentile(img, 25))
        means = []
        for z, y, x in np.ndindex(2, 2, 2):
            block = (slice(16 * z, 16 * z + 16), slice(16 * y, 16 * y + 16), slice(16 * x, 16 * x + 16))
            if tissue[block].sum() > 100:
                means.append(img[block][tissue[block]].mean())
        return max(means) / min(means)
    assert np.mean([octant_spread(s) for s in range(4)]) > 1.1


def test_other_modality_names_get_their_own_appearance():
    t2 = synthetic.modality_intensities("T2")
    assert t2 == synthetic.modality_intensities("T2") and t2 != synthetic.MR_INTENSITIES
    assert set(t2) == set(synthetic.MR_INTENSITIES)


def test_write_nnunet_dataset(tmp_path):
    folder = synthetic.write_nnunet_dataset(tmp_path, dataset_id=7, name="Tiny", cases_per_modality={"CT": 2, "MR": 1},
                                            shape=(16, 16, 16), seed=1, test_cases_per_modality=1)
    assert folder == tmp_path / "Dataset007_Tiny"
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["labels"] == synthetic.LABELS and dj["numTraining"] == 3 and dj["file_ending"] == ".nii.gz"
    assert dj["channel_names"] == {"0": "image"}
    assert dj["modalities"] == ["CT", "MR"] and dj["modality_patterns"] == {"CT": "^ct_", "MR": "^mr_"}
    names = lambda sub: sorted(p.name for p in (folder / sub).iterdir())  # noqa: E731
    assert names("imagesTr") == ["ct_0000_0000.nii.gz", "ct_0001_0000.nii.gz", "mr_0000_0000.nii.gz"]
    assert names("labelsTr") == ["ct_0000.nii.gz", "ct_0001.nii.gz", "mr_0000.nii.gz"]
    assert names("imagesTs") == ["ct_0002_0000.nii.gz", "mr_0001_0000.nii.gz"]
    assert names("labelsTs") == ["ct_0002.nii.gz", "mr_0001.nii.gz"]
    for case in ("ct_0000", "mr_0000"):
        pattern = [m for m, p in dj["modality_patterns"].items() if re.search(p, case)]
        assert pattern == [case[:2].upper()]
    # same seed, same files; another seed, other data
    again = synthetic.write_nnunet_dataset(tmp_path / "again", dataset_id=7, name="Tiny",
                                           cases_per_modality={"CT": 2, "MR": 1}, shape=(16, 16, 16), seed=1)
    other = synthetic.write_nnunet_dataset(tmp_path / "other", dataset_id=7, name="Tiny",
                                           cases_per_modality={"CT": 2, "MR": 1}, shape=(16, 16, 16), seed=2)
    read = lambda f: sitk.GetArrayFromImage(sitk.ReadImage(str(f)))  # noqa: E731
    assert np.array_equal(read(folder / "imagesTr/mr_0000_0000.nii.gz"), read(again / "imagesTr/mr_0000_0000.nii.gz"))
    assert not np.array_equal(read(folder / "imagesTr/mr_0000_0000.nii.gz"),
                              read(other / "imagesTr/mr_0000_0000.nii.gz"))


def test_mmwhs_layout(tmp_path):
    folder = synthetic.write_mmwhs_layout(tmp_path / "mmwhs", n_ct=2, n_mr=2, shape=(16, 16, 16), seed=0,
                                          plant_421_in="mr_train_1002", invalid_value_in=("ct_train_1001", 333),
                                          with_test=True)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    expected = [f"{m}_train/{m}_train_{n}_{kind}.nii.gz" for m in ("ct", "mr") for n in (1001, 1002)
                for kind in ("image", "label")]
    expected += [f"{m}_test/{m}_test_{n}_image.nii.gz" for m in ("ct", "mr") for n in (2001, 2002)]
    assert files == sorted(expected)
    mmwhs_values = {0, 205, 420, 500, 550, 600, 820, 850}
    values = {f: set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f))))) for f in expected
              if f.endswith("label.nii.gz")}
    assert values["ct_train/ct_train_1002_label.nii.gz"] == mmwhs_values
    assert values["mr_train/mr_train_1001_label.nii.gz"] == mmwhs_values
    assert values["mr_train/mr_train_1002_label.nii.gz"] == mmwhs_values | {421}
    assert values["ct_train/ct_train_1001_label.nii.gz"] == mmwhs_values | {333}
    # the 421 voxels sit where the left atrium is in the generated case
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "mr_train/mr_train_1002_label.nii.gz")))
    assert 1 <= (lab == 421).sum() <= 5
    with pytest.raises(ValueError, match="mr_train_1009"):
        synthetic.write_mmwhs_layout(tmp_path / "bad", n_ct=1, n_mr=1, shape=(8, 8, 8), plant_421_in="mr_train_1009")
