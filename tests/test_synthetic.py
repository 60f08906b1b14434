"""The synthetic two-modality heart generator: determinism, labels, geometry variety, CT vs MR vs T2 appearance, the
basic variant pinned, the realistic variant's properties, the nnU-Net dataset it writes and the MM-WHS layout
option."""
import hashlib
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import binary_dilation, binary_erosion

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
    t1 = synthetic.modality_intensities("T1")
    assert t1 == synthetic.modality_intensities("T1") and t1 != synthetic.MR_INTENSITIES
    assert t1 != synthetic.modality_intensities("PET") and set(t1) == set(synthetic.MR_INTENSITIES)
    assert synthetic.modality_intensities("T2") == synthetic.T2_INTENSITIES  # a fixed table, not the name's hash


@pytest.mark.parametrize("variant", ["basic", "realistic"])  # thorax: lung around the heart (test_normalization)
def test_t2_is_dark_blood_bright_myocardium(variant):
    """T2-like: every blood pool darker than the tissue around the heart, which is darker than the myocardium (the
    reverse of CT and MR, where blood is brightest); MR-like positive float values."""
    for seed in range(4):
        img, lab = arrays(synthetic.generate_case("T2", seed, (24, 24, 24), variant=variant))
        assert img.dtype == np.float32 and img.min() >= 0
        mean = {s: img[lab == synthetic.LABELS[s]].mean() for s in STRUCTURES}
        tissue = np.median(img[(lab == 0) & (img > np.percentile(img, 25))])  # inside the body, not air
        assert max(mean[s] for s in STRUCTURES if s != "MYO") < tissue < mean["MYO"], (seed, mean, tissue)


# The basic variant as generated before the realistic variant existed (demo numbers and many tests rely on it):
# sha256 of label bytes + geometry (+ image bytes for int16 CT), and for float MR-like images the mean, sd and three
# voxels (exact float bits may differ between CPUs: numpy's SIMD exp/hypot).
BASIC_PINNED = {
    ("CT", 0, (32, 32, 32)): ("8d43d399c37ed00b", -283.6340637207031, 494.3959100652265, (-1008.0, 312.0, -26.0)),
    ("MR", 0, (32, 32, 32)): ("a5df7013bcebed3c", 175.96408028788665, 127.36024912154369,
                              (47.38541793823242, 480.45721435546875, 211.20004272460938)),
    ("CT", 7, (20, 24, 28)): ("b64abbaee03c3b45", -298.1667410714286, 492.93741432806553, (-1024.0, 268.0, -18.0)),
    ("MR", 5, (24, 24, 24)): ("1c1b6ff86740532a", 175.70302460542493, 136.1538594711569,
                              (35.13713073730469, 548.0610961914062, 198.12744140625)),
    ("PET", 1, (16, 16, 16)): ("18382cf8511404aa", 317.6229429543746, 236.60162860697008,
                               (13.583151817321777, 355.3421325683594, 253.04437255859375)),
}


def basic_fingerprint(modality, seed, shape):
    image, label = synthetic.generate_case(modality, seed, shape)
    img, lab = arrays((image, label))
    digest = hashlib.sha256(lab.tobytes())
    digest.update(repr((image.GetSpacing(), image.GetOrigin(), image.GetDirection(), img.dtype.str, img.shape)).encode())
    if img.dtype.kind == "i":
        digest.update(img.tobytes())
    voxels = tuple(float(img[i]) for i in [(0, 0, 0), (shape[0] // 2,) * 3, (3, shape[1] - 5, 7)])
    return digest.hexdigest()[:16], float(img.astype(np.float64).mean()), float(img.astype(np.float64).std()), voxels


@pytest.mark.parametrize("case", list(BASIC_PINNED), ids=lambda c: f"{c[0]}-{c[1]}")
def test_basic_variant_unchanged(case):
    digest, mean, sd, voxels = basic_fingerprint(*case)
    expected = BASIC_PINNED[case]
    assert digest == expected[0]
    np.testing.assert_allclose((mean, sd, *voxels), (*expected[1:3], *expected[3]), rtol=1e-5)
    explicit = arrays(synthetic.generate_case(*case, variant="basic"))
    assert all(np.array_equal(a, b) for a, b in zip(explicit, arrays(synthetic.generate_case(*case))))


def physical_heart(case):
    """Volume (mm^3) and bounding-box extent (mm, z y x) of all labels."""
    lab = sitk.GetArrayFromImage(case[1])
    spacing = np.array(case[1].GetSpacing())[::-1]
    inside = np.argwhere(lab > 0)
    return (lab > 0).sum() * spacing.prod(), (inside.max(0) - inside.min(0) + 1) * spacing


def test_realistic_ct_and_mr_hearts_have_one_physical_size():
    """The realistic variant draws one physical heart (the grid follows the spacing), so CT (finer spacing, more
    voxels) and MR hearts agree in mm; the basic variant's CT hearts are about 3x smaller in volume."""
    def median_heart(modality, variant):
        hearts = [physical_heart(synthetic.generate_case(modality, s, (24, 24, 24), variant=variant))
                  for s in range(6)]
        return np.median([v for v, _ in hearts]), np.median([e for _, e in hearts], axis=0)

    (ct_volume, ct_extent), (mr_volume, mr_extent) = median_heart("CT", "realistic"), median_heart("MR", "realistic")
    assert 0.8 < ct_volume / mr_volume < 1.25 and np.all(np.abs(ct_extent / mr_extent - 1) < 0.15)
    assert median_heart("CT", "basic")[0] / median_heart("MR", "basic")[0] < 0.5
    ct, mr = (synthetic.generate_case(m, 0, (24, 24, 24), variant="realistic")[0] for m in ("CT", "MR"))
    assert np.prod(ct.GetSize()) > 2 * np.prod(mr.GetSize())  # the same field of view in more, finer voxels
    # an explicit spacing: the grid is the field of view (shape, mm) over the spacing
    explicit = synthetic.generate_case("MR", 0, shape=(20, 24, 28), spacing=(0.5, 0.6, 2.0), variant="realistic")[0]
    assert explicit.GetSize() == (56, 40, 10) and explicit.GetSpacing() == (0.5, 0.6, 2.0)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_realistic_every_structure_present_and_large_enough(modality):
    for seed in range(8):
        image, label = synthetic.generate_case(modality, seed, (24, 24, 24), variant="realistic")
        lab = sitk.GetArrayFromImage(label)
        mm3 = np.bincount(lab.ravel(), minlength=8)[1:] * np.prod(label.GetSpacing())
        # at the smallest field of view used in tests, every structure still about 40 voxels at nnU-Net's ~1 mm
        assert mm3.min() >= 40, (seed, mm3)
        for get in ("GetSpacing", "GetOrigin", "GetDirection", "GetSize"):
            assert getattr(image, get)() == getattr(label, get)()


@pytest.mark.parametrize("modality", ["CT", "MR", "T2"])
def test_realistic_contrast_varies_between_cases(modality):
    """Per-case contrast, measured where the variant's other draws (blur, noise level, bias field) hardly reach: CT,
    the HU difference between the LV blood pool and the myocardium (cores: one voxel eroded, medians); MR-like, the
    overall brightness of the heart (log of the median: the global gain). The basic variant's appearance is fixed
    per modality. Every case is still deterministic per seed."""
    def spread(variant):
        values = []
        for seed in range(8):
            img, lab = arrays(synthetic.generate_case(modality, seed, (24, 24, 24), variant=variant))
            if modality == "CT":
                core = {s: np.median(img[binary_erosion(lab == synthetic.LABELS[s])]) for s in ("LV", "MYO")}
                values.append(core["LV"] - core["MYO"])
            else:
                values.append(np.log(np.median(img[lab > 0])))
        return np.std(values)

    # uniform +-30 HU on each of two regions: sd about 24 HU; gain log-uniform over x0.5..2: sd about 0.4
    low, high = (8.0, 15.0) if modality == "CT" else (0.1, 0.25)
    assert spread("basic") < low < high < spread("realistic")
    a, b, c = (arrays(synthetic.generate_case(modality, s, (24, 24, 24), variant="realistic")) for s in (3, 3, 4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1]) and not np.array_equal(a[0], c[0])


def test_realistic_keeps_the_modalities_contrast_ordering():
    """Per-case contrast never swaps the orderings that define CT and MR: blood above myocardium in every case;
    myocardium above the tissue around it in CT, below it in MR. The MR comparison is over the median case: the thin
    MR wall (1-2 voxels at this size) blurred into the blood pool beside it can make one case's myocardium as bright
    as its surroundings."""
    for modality in ("CT", "MR"):
        myo_minus_tissue = []
        for seed in range(8):
            img, lab = arrays(synthetic.generate_case(modality, seed, (24, 24, 24), variant="realistic"))
            img = img.astype(np.float64)
            mean = {s: img[lab == synthetic.LABELS[s]].mean() for s in STRUCTURES}
            assert all(mean[s] > mean["MYO"] for s in ("LV", "LA", "AA")), (modality, seed, mean)
            around = binary_dilation(lab == synthetic.LABELS["MYO"], iterations=3) & (lab == 0)
            around &= img > np.percentile(img, 25)  # the body, not air
            myo_minus_tissue.append(np.median(img[lab == synthetic.LABELS["MYO"]]) - np.median(img[around]))
        if modality == "CT":
            assert min(myo_minus_tissue) > 0, myo_minus_tissue
        else:
            assert np.median(myo_minus_tissue) < 0, myo_minus_tissue


def test_unknown_variant_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="'hard'.*basic, realistic"):
        synthetic.generate_case("CT", 0, variant="hard")
    with pytest.raises(ValueError, match="'hard'"):
        synthetic.write_nnunet_dataset(tmp_path, cases_per_modality={"CT": 1}, shape=(8, 8, 8), variant="hard")
    assert list(tmp_path.iterdir()) == []


def test_write_nnunet_dataset(tmp_path):
    folder = synthetic.write_nnunet_dataset(tmp_path, dataset_id=7, name="Tiny", cases_per_modality={"CT": 2, "MR": 1},
                                            shape=(16, 16, 16), seed=1, test_cases_per_modality=1)
    assert folder == tmp_path / "Dataset007_Tiny"
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["labels"] == synthetic.LABELS and dj["numTraining"] == 3 and dj["file_ending"] == ".nii.gz"
    assert dj["channel_names"] == {"0": "image"}
    assert dj["modalities"] == ["CT", "MR"] and dj["modality_patterns"] == {"CT": "^ct_", "MR": "^mr_"}
    assert '"basic"' in dj["description"]
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
    # the realistic variant: recorded in the description, files are generate_case(..., variant="realistic")
    realistic = synthetic.write_nnunet_dataset(tmp_path / "realistic", dataset_id=7, name="Tiny",
                                               cases_per_modality={"CT": 1, "MR": 1}, shape=(16, 16, 16), seed=1,
                                               variant="realistic")
    assert '"realistic"' in json.loads((realistic / "dataset.json").read_text())["description"]
    image, label = synthetic.generate_case("MR", synthetic._case_seed(1, "MR", 0), (16, 16, 16), variant="realistic")
    written = sitk.ReadImage(str(realistic / "imagesTr/mr_0000_0000.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(image))
    assert written.GetSpacing() == pytest.approx(image.GetSpacing())


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
