"""Synthetic two-modality whole-heart volumes: small, fast, deterministic stand-ins for MM-WHS used by tests and
the demo.

A case is a pair of SimpleITK images (image, label) sharing one geometry. The anatomy is seven structures placed
roughly as in a heart (labels as in LABELS): the LV cavity inside a myocardium shell, the RV beside it, both atria
above, the aorta and pulmonary artery as tubes leaving upwards. The whole heart fills about a quarter of the volume
and the smallest structure still a few hundred voxels of a 32^3 grid, so a small network learns it in minutes. Each
seed jitters positions and sizes, and picks spacing (CT finer than MR), origin and an axis-aligned direction matrix
(permuted and/or flipped axes), so that headers differ the way real scans do. The direction changes where the heart
lies physically, not the voxel layout nnU-Net trains on (it does not reorient).

Appearance depends on the modality name:
- "CT": Hounsfield-like values: air -1000, soft tissue -100..+50, myocardium ~100, contrast-filled blood 250..350,
  a smooth additive drift of up to 60 HU inside the body, Gaussian noise (sd 20); stored as int16.
- anything else: MR-like positive intensities (float32), a smooth multiplicative bias field (about x0.7 to x1.5) and
  Rician-like noise. "MR" (bright-blood): myocardium darker than the surrounding tissue, blood brightest. "T2"
  (T2-like, dark-blood): blood darkest, myocardium brightest, tissue in between. Any other name gets its own table
  derived from the name, so a further modality is distinguishable.

Two variants (`variant=`):
- "basic" (default, unchanged since the demo's numbers were measured): the anatomy is drawn in voxel space, so a CT
  heart (finer spacing) is physically smaller than an MR heart of the same `shape`, and after nnU-Net resamples to
  one spacing the modalities differ in size, not only in appearance. Appearance is fixed per modality.
- "realistic" (harder; for comparisons that must not saturate): `shape` is the field of view in mm and the grid has
  round(shape / spacing) voxels per axis, so both modalities hold one physical heart and come out about the same size
  after resampling. On top: each structure moved and resized on its own (+-15%), the wall thickness and a rotation
  about z (+-15 deg) drawn per case; per-case contrast (CT +-30 HU per region; MR-like x0.8..1.25 per region and a
  global gain x0.5..2), noise level (CT sd 10..40 HU; MR-like 2..8% of the brightest mean) and blur (Gaussian,
  sd 0.4..0.9 voxel: partial volume at the borders); MR-like bias field about x0.5..2.
- "thorax" (the realistic variant inside a chest): the heart of "realistic" surrounded by what a cardiac scan holds
  around it: epicardial fat in a shell around the heart, both lungs filling the rest of the chest, a chest wall of
  muscle and a spine. CT in Hounsfield units as scanners give them (fat about -100, lung about -850, air -1000,
  muscle about +40, bone about +600, each +-30 HU per case) and less partial volume than "realistic" (blur sd
  0.3..0.6 voxel: a finer scan of the same heart), so the labelled heart spans only part of the intensity range; MR-like: fat as bright as blood (bSSFP), lung nearly black, muscle and marrow in between. This is where
  nnU-Net's CT normalization (clipped to the labelled foreground's 0.5-99.5 percentiles) loses the fat and lung
  contrast around the heart.

Array shapes are numpy order (z, y, x); spacing, origin and direction are SimpleITK order (x, y, z).
"""
import itertools
import json
import zlib
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt, gaussian_filter

LABELS = {"background": 0, "MYO": 1, "LA": 2, "LV": 3, "RA": 4, "RV": 5, "AA": 6, "PA": 7}
MMWHS_LABEL_VALUES = {"MYO": 205, "LA": 420, "LV": 500, "RA": 550, "RV": 600, "AA": 820, "PA": 850}

STRUCTURES = [name for name in LABELS if name != "background"]

# Mean intensity per region: "air" outside the body, "tissue" inside it, then the structures.
CT_INTENSITIES = {"air": -1000.0, "tissue": -20.0, "MYO": 100.0, "LA": 310.0, "LV": 320.0, "RA": 250.0,
                  "RV": 260.0, "AA": 350.0, "PA": 270.0}
MR_INTENSITIES = {"air": 8.0, "tissue": 220.0, "MYO": 90.0, "LA": 430.0, "LV": 520.0, "RA": 450.0, "RV": 480.0,
                  "AA": 560.0, "PA": 500.0}
# T2-like dark-blood MR. Margins wide enough that the realistic variant's x0.8..1.25 per region keeps the ordering
# blood < tissue < myocardium.
T2_INTENSITIES = {"air": 8.0, "tissue": 260.0, "MYO": 480.0, "LA": 90.0, "LV": 70.0, "RA": 110.0, "RV": 100.0,
                  "AA": 60.0, "PA": 120.0}
FIXED_INTENSITIES = {"CT": CT_INTENSITIES, "MR": MR_INTENSITIES, "T2": T2_INTENSITIES}
# The thorax variant's surroundings ("tissue" is then the chest wall's muscle). MR-like tables: bSSFP-like fat as
# bright as blood, lung nearly as dark as air.
THORAX_INTENSITIES = {
    "CT": {"tissue": 40.0, "fat": -100.0, "lung": -850.0, "bone": 600.0},
    "MR": {"tissue": 220.0, "fat": 470.0, "lung": 30.0, "bone": 260.0},
    "T2": {"tissue": 260.0, "fat": 430.0, "lung": 25.0, "bone": 220.0},
}

VARIANTS = ("basic", "realistic", "thorax")

# Axis-aligned orientations: every permutation of the axes, every combination of flips.
_DIRECTIONS = [tuple(np.array([[signs[c] * (perm[c] == r) for c in range(3)] for r in range(3)], float).ravel())
               for perm in itertools.permutations(range(3))
               for signs in itertools.product((1.0, -1.0), repeat=3)]


def _name_code(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def modality_intensities(modality: str) -> Dict[str, float]:
    """Mean intensity per region for a modality name (see module docstring)."""
    if modality in FIXED_INTENSITIES:
        return dict(FIXED_INTENSITIES[modality])
    rng = np.random.default_rng(_name_code(modality))
    values = rng.permutation(np.linspace(60.0, 600.0, len(STRUCTURES) + 1))  # tissue and structures
    return {"air": 8.0, "tissue": float(values[0]), **{s: float(v) for s, v in zip(STRUCTURES, values[1:])}}


def thorax_intensities(modality: str) -> Dict[str, float]:
    """Mean intensity per region of the thorax variant: the structures as `modality_intensities`, the surroundings
    from THORAX_INTENSITIES (other names: fat near the brightest structure, lung near air)."""
    means = modality_intensities(modality)
    if modality in THORAX_INTENSITIES:
        return {**means, **THORAX_INTENSITIES[modality]}
    brightest = max(means[s] for s in STRUCTURES)
    return {**means, "fat": 0.85 * brightest, "lung": 0.05 * brightest, "bone": 0.9 * means["tissue"]}


def _thorax_regions(label: np.ndarray, body: np.ndarray, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Masks of the chest around the heart (label 0 only): an epicardial fat shell 0.1..0.18 (in units of half the
    field of view) around the heart, a chest wall and a spine at the back, the lungs filling the rest of the body."""
    shape = label.shape
    z, y, x = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij")
    heart = label > 0
    distance = distance_transform_edt(~heart, sampling=[2.0 / max(n - 1, 1) for n in shape])
    outside = body & ~heart
    fat = outside & (distance <= rng.uniform(0.1, 0.18))
    wall = outside & ~fat & ((y / 0.82) ** 2 + (x / 0.85) ** 2 > 1)
    spine = outside & ~fat & (((y - 0.7) / 0.14) ** 2 + (x / 0.16) ** 2 <= 1)
    lung = outside & ~fat & ~wall & ~spine
    return {"fat": fat, "tissue": wall, "bone": spine, "lung": lung}


def _anatomy(shape: Sequence[int], rng: np.random.Generator, realistic: bool = False
             ) -> Tuple[np.ndarray, np.ndarray]:
    """Label map (uint8, values 0..7) and body mask on a grid of `shape` (z, y, x). `realistic`: a rotation about z and
    every structure moved and resized on its own (the basic variant draws nothing more, so its cases stay the same)."""
    z, y, x = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij")
    shift = rng.uniform(-0.06, 0.06, size=3)
    z, y, x = z - shift[0], y - shift[1], x - shift[2]
    scale = rng.uniform(0.9, 1.1)
    if realistic:
        angle = np.deg2rad(rng.uniform(-15.0, 15.0))
        y, x = np.cos(angle) * y - np.sin(angle) * x, np.sin(angle) * y + np.cos(angle) * x

    def jitter(center, radii):
        if not realistic:
            return center, radii
        return (np.asarray(center) + rng.uniform(-0.075, 0.075, 3), np.asarray(radii) * rng.uniform(0.85, 1.15, 3))

    def ellipsoid(center, radii, move=True):
        if move:
            center, radii = jitter(center, radii)
        r = np.asarray(radii) * scale
        return (((z - center[0]) / r[0]) ** 2 + ((y - center[1]) / r[1]) ** 2 + ((x - center[2]) / r[2]) ** 2) <= 1

    def tube(y0, x0, z_from, z_to, radius):
        (y0, x0, _), (radius, _, _) = jitter((y0, x0, 0.0), (radius,) * 3)
        return (((y - y0) ** 2 + (x - x0) ** 2) <= (radius * scale) ** 2) & (z >= z_from) & (z <= z_to)

    # Sizes are fractions of the field of view, large enough that a 32^3 volume holds every structure with a few
    # hundred to a couple of thousand voxels (the whole heart covers about a third of the volume).
    lv_center, lv_radii = jitter((-0.15, 0.18, 0.22), (0.5, 0.32, 0.32))  # one move for the LV and its wall
    wall = rng.uniform(0.1, 0.2) if realistic else 0.15
    masks = {  # painted in this order, later ones on top
        "RV": ellipsoid((-0.2, -0.22, -0.35), (0.45, 0.3, 0.38)),
        "RA": ellipsoid((0.45, -0.3, -0.45), (0.32, 0.3, 0.3)),
        "LA": ellipsoid((0.5, 0.38, 0.3), (0.3, 0.3, 0.32)),
        "PA": tube(-0.55, -0.05, 0.05, 0.98, 0.17),
        "AA": tube(-0.05, 0.02, 0.25, 0.98, 0.18),
        "MYO": ellipsoid(lv_center, [r + wall for r in lv_radii], move=False),
        "LV": ellipsoid(lv_center, lv_radii, move=False),
    }
    label = np.zeros(shape, np.uint8)
    for name, mask in masks.items():
        label[mask] = LABELS[name]
    body = (y / 0.95) ** 2 + (x / 0.98) ** 2 <= 1
    return label, body


def _smooth_field(shape: Sequence[int], rng: np.random.Generator, order: int = 2) -> np.ndarray:
    """A smooth random field (low-order polynomial in z, y, x), zero mean, roughly unit amplitude."""
    z, y, x = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij")
    field = np.zeros(shape, np.float32)
    for i, j, k in itertools.product(range(order + 1), repeat=3):
        if 0 < i + j + k <= order:
            field += rng.normal() * z ** i * y ** j * x ** k
    return field / max(float(np.abs(field).max()), 1e-6)


def _draw_spacing(modality: str, rng: np.random.Generator) -> Tuple[float, float, float]:
    """(x, y, z) in mm: CT finer than the others."""
    if modality == "CT":
        return (rng.uniform(0.6, 0.9),) * 2 + (rng.uniform(0.7, 1.1),)
    return (rng.uniform(1.0, 1.4),) * 2 + (rng.uniform(1.2, 1.8),)


def _vary_contrast(means: Dict[str, float], modality: str, rng: np.random.Generator) -> Dict[str, float]:
    """The realistic variant's per-case contrast: CT +-30 HU per region (air stays); MR-like x0.8..1.25 per region
    (air stays) times a global gain x0.5..2."""
    if modality == "CT":
        return {k: v if k == "air" else v + rng.uniform(-30.0, 30.0) for k, v in means.items()}
    gain = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    return {k: v * gain * (1.0 if k == "air" else rng.uniform(0.8, 1.25)) for k, v in means.items()}


def generate_case(modality: str, seed: int, shape=(32, 32, 32), spacing=None,
                  variant: str = "basic") -> Tuple[sitk.Image, sitk.Image]:
    """(image, label) of one synthetic case. Label values 0..7 (LABELS); both images share spacing, origin and
    direction. `spacing` (x, y, z) in mm, drawn per case when None (CT finer than MR). `shape` (z, y, x): the grid
    for variant "basic"; the field of view in mm for "realistic", whose grid is round(shape / spacing) voxels
    (at least 8) per axis. See the module docstring for the variants."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown synthetic data variant {variant!r}: use one of {', '.join(VARIANTS)}")
    thorax = variant == "thorax"
    realistic = variant in ("realistic", "thorax")
    shape = tuple(int(n) for n in shape)
    rng = np.random.default_rng([int(seed), _name_code(modality)])
    if realistic:  # one physical heart: the spacing sets the grid
        spacing = spacing if spacing is not None else _draw_spacing(modality, rng)
        shape = tuple(max(8, int(round(n / s))) for n, s in zip(shape, tuple(spacing)[::-1]))
    label, body = _anatomy(shape, rng, realistic)

    means = thorax_intensities(modality) if thorax else modality_intensities(modality)
    if realistic:
        means = _vary_contrast(means, modality, rng)
    image = np.where(body, means["tissue"], means["air"]).astype(np.float32)
    if thorax:
        for name, mask in _thorax_regions(label, body, rng).items():
            image[mask] = means[name]
    for name in STRUCTURES:
        image[label == LABELS[name]] = means[name]
    if realistic:  # partial volume at the borders (thorax: a finer scan of the same heart, less of it)
        image = gaussian_filter(image, rng.uniform(0.3, 0.6) if thorax else rng.uniform(0.4, 0.9))
    if modality == "CT":
        if thorax:  # a mild scanner drift; the chest holds values from air to bone, nothing is clipped
            image += np.where(body, 20.0 * _smooth_field(shape, rng), 0.0)
        else:
            image += np.where(body, 60.0 * _smooth_field(shape, rng), 0.0)  # tissue between -100 and +50 or so
            image[label == 0] = np.clip(image[label == 0], -1000.0, 50.0)
        image += rng.normal(0.0, rng.uniform(10.0, 40.0) if realistic else 20.0, shape)
        image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    else:  # multiplicative bias field, about x0.7..x1.5 (realistic: x0.5..x2)
        image *= np.exp((0.7 if realistic else 0.4) * _smooth_field(shape, rng))
        sigma = (rng.uniform(0.02, 0.08) if realistic else 0.04) * max(means.values())
        image = np.hypot(image + rng.normal(0.0, sigma, shape), rng.normal(0.0, sigma, shape)).astype(np.float32)
    if not realistic:  # drawn here, after the noise, even when given: the basic variant's cases stay as they were
        drawn = _draw_spacing(modality, rng)
        spacing = spacing if spacing is not None else drawn

    spacing = tuple(float(s) for s in spacing)
    direction = _DIRECTIONS[int(rng.integers(len(_DIRECTIONS)))]
    origin = tuple(float(o) for o in rng.uniform(-150.0, 150.0, size=3))
    image_sitk, label_sitk = sitk.GetImageFromArray(image), sitk.GetImageFromArray(label)
    for im in (image_sitk, label_sitk):
        im.SetSpacing(spacing)
        im.SetOrigin(origin)
        im.SetDirection(direction)
    return image_sitk, label_sitk


def _case_seed(seed: int, modality: str, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), _name_code(modality), int(index)]).generate_state(1)[0])


def write_nnunet_dataset(raw_root, dataset_id: int = 999, name: str = "SyntheticHeart",
                         cases_per_modality: Optional[Mapping[str, int]] = None, shape=(32, 32, 32), seed: int = 0,
                         test_cases_per_modality: int = 0, variant: str = "basic") -> Path:
    """An nnU-Net v2 raw dataset raw_root/DatasetXXX_name with imagesTr/labelsTr (and imagesTs/labelsTs when
    test_cases_per_modality > 0). Case ids f"{modality.lower()}_{i:04d}" (test cases continue the numbering);
    dataset.json carries the modality keys "modalities" and "modality_patterns", its description names the variant
    (see generate_case). Returns the dataset folder."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown synthetic data variant {variant!r}: use one of {', '.join(VARIANTS)}")
    cases_per_modality = dict(cases_per_modality if cases_per_modality is not None else {"CT": 4, "MR": 4})
    folder = Path(raw_root) / f"Dataset{int(dataset_id):03d}_{name}"
    parts = [("imagesTr", "labelsTr", 0, None)]
    if test_cases_per_modality > 0:
        parts.append(("imagesTs", "labelsTs", None, test_cases_per_modality))
    for images_dir, labels_dir, _, _ in parts:
        (folder / images_dir).mkdir(parents=True, exist_ok=True)
        (folder / labels_dir).mkdir(parents=True, exist_ok=True)
    for modality, n_train in cases_per_modality.items():
        for images_dir, labels_dir, _, n_test in parts:
            first = 0 if n_test is None else n_train
            for i in range(first, first + (n_train if n_test is None else n_test)):
                case = f"{modality.lower()}_{i:04d}"
                image, label = generate_case(modality, _case_seed(seed, modality, i), shape, variant=variant)
                sitk.WriteImage(image, str(folder / images_dir / f"{case}_0000.nii.gz"))
                sitk.WriteImage(label, str(folder / labels_dir / f"{case}.nii.gz"))
    dataset_json = {
        "channel_names": {"0": "image"},
        "labels": dict(LABELS),
        "numTraining": int(sum(cases_per_modality.values())),
        "file_ending": ".nii.gz",
        "name": name,
        "description": f"Synthetic whole-heart data, variant \"{variant}\", generated by "
                       "nnunet_cin.dataset_conversion.synthetic",
        "modalities": list(cases_per_modality),
        "modality_patterns": {m: f"^{m.lower()}_" for m in cases_per_modality},
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=4))
    return folder


def _to_mmwhs_values(label: sitk.Image) -> sitk.Image:
    lut = np.zeros(len(LABELS), np.uint16)
    for name, value in MMWHS_LABEL_VALUES.items():
        lut[LABELS[name]] = value
    out = sitk.GetImageFromArray(lut[sitk.GetArrayViewFromImage(label)])
    out.CopyInformation(label)
    return out


def write_mmwhs_layout(folder, n_ct: int = 2, n_mr: int = 2, shape=(32, 32, 32), seed: int = 0,
                       plant_421_in: Optional[str] = None, invalid_value_in: Optional[Tuple[str, int]] = None,
                       with_test: bool = False) -> Path:
    """A folder in the official MM-WHS 2017 layout: ct_train/ct_train_1001_image.nii.gz + _label.nii.gz,
    mr_train/mr_train_1001_..., label values 205..850 (MMWHS_LABEL_VALUES).

    plant_421_in: a case name (e.g. "mr_train_1002") whose label gets a few stray 421 voxels inside the left atrium,
    like the real mr_train_1010. invalid_value_in: (case name, value) plants an unexpected value in that label.
    with_test: also ct_test/ct_test_2001_image.nii.gz ... and mr_test/... (as many as the training cases), without
    labels. Returns the folder."""
    folder = Path(folder)
    planted = {c for c in (plant_421_in, invalid_value_in[0] if invalid_value_in else None) if c}
    written = set()
    for modality, n in (("CT", n_ct), ("MR", n_mr)):
        prefix = modality.lower()
        for part, first, with_label in (("train", 1001, True), ("test", 2001, False)):
            if part == "test" and not with_test:
                continue
            (folder / f"{prefix}_{part}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                case = f"{prefix}_{part}_{first + i}"
                image, label = generate_case(modality, _case_seed(seed, f"mmwhs_{prefix}_{part}", i), shape)
                sitk.WriteImage(image, str(folder / f"{prefix}_{part}" / f"{case}_image.nii.gz"))
                if not with_label:
                    continue
                label = _to_mmwhs_values(label)
                array = sitk.GetArrayFromImage(label)
                if case == plant_421_in:
                    la = np.flatnonzero(array == MMWHS_LABEL_VALUES["LA"])
                    array.flat[la[: max(1, min(5, la.size // 4))]] = 421
                if invalid_value_in and case == invalid_value_in[0]:
                    if not 0 <= invalid_value_in[1] <= np.iinfo(array.dtype).max:
                        array = array.astype(np.int32)
                    array.flat[np.flatnonzero(array == 0)[:3]] = invalid_value_in[1]
                out = sitk.GetImageFromArray(array)
                out.CopyInformation(label)
                sitk.WriteImage(out, str(folder / f"{prefix}_{part}" / f"{case}_label.nii.gz"))
                written.add(case)
    missing = planted - written
    if missing:
        raise ValueError(f"no labelled case named {sorted(missing)} in this layout")
    return folder
