"""The real and realistic test sets of the modality check (tests/test_modality_check.py, benchmarks/
bench_modality_check_real.py): real CT and MR volumes (tests/data/real_scans, see its README) and realistic
variants of generated cases, each with the modality it truly is and whether it is a CT stored off Hounsfield units.

A case: (name, modality, in_hu, image (1, z, y, x) float32, spacing (z, y, x)). `modality` is "CT" or "MR" (what it
is); `in_hu` False for a CT that is not in HU (its right answer: refused or named whatever -m says)."""
from pathlib import Path
from typing import Iterator, List, NamedTuple, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_cin.dataset_conversion.synthetic import generate_case

REAL = Path(__file__).resolve().parent / "data" / "real_scans"
REAL_FILES = {"head_ct_invesalius": "CT", "head_mr_t1_colin27": "MR", "brain_mr_t1_inia19_macaque": "MR"}


class Case(NamedTuple):
    name: str
    modality: str
    in_hu: bool
    image: np.ndarray
    spacing: Tuple[float, ...]


def _array(image: sitk.Image):
    return sitk.GetArrayFromImage(image)[None].astype(np.float32), tuple(image.GetSpacing()[::-1])


def _bias(a: np.ndarray, strength: float, seed: int) -> np.ndarray:
    """A smooth multiplicative bias field, about x exp(+-strength)."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in a.shape[1:]], indexing="ij")
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1, 1, 3)
    return a * np.exp(strength * (c[0] * z + c[1] * y + c[2] * x) / 1.7)


def _central(a: np.ndarray, keep: float) -> np.ndarray:
    """The central part of the field of view, `keep` of each axis."""
    sl = [slice(None)] + [slice(int(n * (1 - keep) / 2), int(n * (1 - keep) / 2) + max(4, int(n * keep)))
                          for n in a.shape[1:]]
    return a[tuple(sl)]


def real_cases() -> List[Case]:
    out = []
    for name, modality in REAL_FILES.items():
        a, sp = _array(sitk.ReadImage(str(REAL / f"{name}.nii.gz")))
        out.append(Case(name, modality, True, a, sp))
        if modality == "CT":  # inside the skull: little air
            out.append(Case(name + "_inner_crop", modality, True, _central(a, 0.45), sp))
        else:
            out.append(Case(name + "_0_4095", modality, True, a / a.max() * 4095, sp))
            out.append(Case(name + "_0_1", modality, True, a / a.max(), sp))
    return out


def realistic_cases(seeds=(300, 301, 302)) -> Iterator[Case]:
    """Variants of generated hearts ("realistic" generator variant: per-case contrast, noise, blur, spacing)."""
    for seed in seeds:
        rng = np.random.default_rng(seed)
        ct, sp = _array(generate_case("CT", seed, (120, 120, 120), variant="realistic")[0])
        mr, spm = _array(generate_case("MR", seed, (120, 120, 120), variant="realistic")[0])
        yield Case(f"ct{seed}", "CT", True, ct, sp)
        yield Case(f"ct{seed}_noise", "CT", True, ct + rng.normal(0, 40, ct.shape).astype(np.float32), sp)
        yield Case(f"ct{seed}_contrast_plus100", "CT", True, np.where(ct > 150, ct + 100, ct), sp)
        yield Case(f"ct{seed}_fov_70pct", "CT", True, _central(ct, 0.7), sp)
        yield Case(f"ct{seed}_offset_1024_uint16", "CT", False, np.clip(ct + 1024, 0, 65535), sp)
        yield Case(f"ct{seed}_x0.5", "CT", False, ct * 0.5, sp)
        yield Case(f"ct{seed}_plus1024_div4", "CT", False, (ct + 1024) / 4, sp)
        yield Case(f"ct{seed}_rescaled_0_1", "CT", False, (ct - ct.min()) / (ct.max() - ct.min()), sp)
        yield Case(f"mr{seed}", "MR", True, mr, spm)
        yield Case(f"mr{seed}_bias", "MR", True, _bias(mr, 0.8, seed), spm)
        yield Case(f"mr{seed}_noise", "MR", True, np.abs(mr + rng.normal(0, 0.05 * mr.max(), mr.shape)), spm)
        yield Case(f"mr{seed}_fov_70pct", "MR", True, _central(mr, 0.7), spm)
        yield Case(f"mr{seed}_0_4095", "MR", True, mr / mr.max() * 4095, spm)
        yield Case(f"mr{seed}_0_1", "MR", True, mr / mr.max(), spm)
