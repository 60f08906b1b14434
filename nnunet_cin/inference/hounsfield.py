"""Is this image in Hounsfield units? What physics says about a CT, whatever the scanner, anatomy or hospital.

CT intensities are calibrated: air is -1000 HU, water 0, soft tissue and unenhanced blood 0..80, fat about -100, and a
CT in HU holds nothing much below -1024 (scanners pad the area outside the reconstruction circle with one value far
below it, e.g. -2048 or -3024: such a padding plateau is left out). MR intensities are arbitrary and usually
non-negative. `hu_evidence` says one of:

- "hu": air near -1000 (at least AIR_SHARE of the voxels within -1100..-900) and soft tissue near 0 (at least
  TISSUE_SHARE within -200..200), nothing below -1124: a CT in HU, of any scanner and anatomy;
- "not_hu": physically impossible for a CT in HU: values far below -1024; all intensities within a range narrower than
  fat-to-soft-tissue (a CT rescaled to [0, 1]); or no voxel clearly below 0 (no air, lung or fat) while a background
  plateau lies near 0 (below 100) with tissue far brighter (a CT stored with a +1024 offset, (x + 1024) / 4; and
  every MR); or its air plateau (the darkest 5 % of voxels within a few units) lying between -800 and -200, not at
  -1000 (a CT whose slope was applied twice or not at all, e.g. x 0.5);
  A crop without air counts as "hu" when at least FAT_SHARE of it lies clearly below 0 (fat, lung: an MR is not
  negative) with soft tissue near 0 on CROP_TISSUE_SHARE;
- "unknown": neither (a CT cropped tightly to the heart: no air, little fat). The learned signatures decide there.

`off_hu_transforms`: the common ways a CT leaves HU on export (stored without its DICOM rescale intercept: +1024; a
slope applied twice: x 0.5; (x + 1024) / 4); for an image "not_hu" the inverse transforms that bring it back into HU
are named in the message (and the signatures of the undone image asked whether it then looks like a training CT).

Which modalities need HU (`needs_hu`): those normalized by absolute values, i.e. nnU-Net's CTNormalization, noNorm,
and any scheme whose class name starts with "CT" (a CT window + z-score scheme registered later); `hu_modalities`
reads them from the plans (nnunet_cin.plans.CINPlans)."""
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

MAX_SAMPLES = 2 ** 16
NOT_MEASURED = "not measured"
AIR = (-1100.0, -900.0)
TISSUE = (-200.0, 200.0)
AIR_SHARE = 0.01
TISSUE_SHARE = 0.05
LOWEST = -1124.0         # below -1024 (the lowest HU) by more than noise
NARROWEST_SPAN = 100.0   # fat (-100) to soft tissue (40): any CT of a body spans more
PLATEAU_SPAN = 60.0      # the darkest 5 % of voxels within this: a plateau (air / background)
CLEARLY_NEGATIVE = -50.0
NEGATIVE_SHARE = 0.005
FAT_SHARE = 0.05          # a crop without air: fat / lung below -50 on at least this share ...
CROP_TISSUE_SHARE = 0.2   # ... and soft tissue near 0 on this share


def needs_hu(scheme: Optional[str]) -> bool:
    """Whether a modality normalized with `scheme` (a normalization class name) depends on absolute CT values: the
    one place that decides it. CTNormalization and any "CT..." scheme, and noNorm (values kept as they are)."""
    return bool(scheme) and (scheme.startswith("CT") or scheme == "NoNormalization" or scheme == "noNorm")


def hu_modalities(plans: dict) -> List[str]:
    """The modalities of `plans` whose normalization needs HU (CINPlans.normalization_schemes; plain nnU-Net plans:
    none known)."""
    from nnunet_cin.plans import CINPlans
    return [m for m, scheme in (CINPlans(plans).normalization_schemes or {}).items() if needs_hu(scheme)]


@dataclass(frozen=True)
class HUEvidence:
    verdict: str            # "hu", "not_hu" or "unknown"
    reason: str             # in words, with the numbers
    undo: Optional[str] = None  # not_hu: the off-HU transform whose inverse puts the image in HU, if one does


def sample(image: np.ndarray) -> np.ndarray:
    """Sorted finite float32 values of channel 0 on a fixed stride (at most MAX_SAMPLES), as the signatures sample."""
    arr = image[0] if image.ndim == 4 else image
    stride = max(1, math.ceil((arr.size / MAX_SAMPLES) ** (1.0 / arr.ndim)))
    v = np.asarray(arr[(slice(None, None, stride),) * arr.ndim], dtype=np.float32).ravel()
    v = v[np.isfinite(v)]
    return np.sort(v)


def _share(v: np.ndarray, lo: float, hi: float) -> float:
    return float(np.searchsorted(v, hi, side="right") - np.searchsorted(v, lo, side="left")) / v.size


def _q(v: np.ndarray, p: float) -> float:
    return float(v[min(v.size - 1, int(round(p / 100.0 * (v.size - 1))))])


def _without_padding(v: np.ndarray) -> np.ndarray:
    """The sorted sample without a scanner's padding plateau: the minimum, below -1024, repeated on >= 0.5 %."""
    if v.size and v[0] < -1024 and np.searchsorted(v, v[0], side="right") >= 0.005 * v.size:
        return v[np.searchsorted(v, v[0], side="right"):]
    return v


OFF_HU: Dict[str, Callable[[np.ndarray], np.ndarray]] = {  # how the image was stored -> back to HU
    "stored with a +1024 offset (no rescale intercept applied)": lambda v: v - 1024.0,
    "scaled by 0.5 (rescale slope applied twice)": lambda v: v * 2.0,
    "stored as (HU + 1024) / 4": lambda v: v * 4.0 - 1024.0,
}


def _evidence(v: np.ndarray) -> HUEvidence:
    v = _without_padding(v)
    if v.size == 0:
        return HUEvidence("unknown", "no finite intensity")
    lo, hi = _q(v, 0.5), _q(v, 99.5)
    if lo < LOWEST:
        return HUEvidence("not_hu", f"0.5 % of its voxels lie below {lo:.0f}, far below -1024 (air, the lowest HU)")
    if hi - lo < NARROWEST_SPAN:
        return HUEvidence("not_hu", f"99 % of its intensities lie within {lo:.3g}..{hi:.3g}, a narrower range than "
                                    f"fat (-100 HU) to soft tissue (+40 HU)")
    air, tissue = _share(v, *AIR), _share(v, *TISSUE)
    if air >= AIR_SHARE and tissue >= TISSUE_SHARE:
        return HUEvidence("hu", f"air at -1000 ({air:.0%} of voxels within -1100..-900) and soft tissue near 0 "
                                f"({tissue:.0%} within -200..200)")
    q1, q5 = _q(v, 1), _q(v, 5)
    plateau = q5 - q1 <= PLATEAU_SPAN
    negative = float(np.searchsorted(v, CLEARLY_NEGATIVE)) / v.size
    if negative < NEGATIVE_SHARE and plateau and q1 < 100 and _q(v, 99) - q1 > 100:
        return HUEvidence("not_hu", f"no voxel clearly below 0 ({negative:.1%} below -50: no air, lung or fat) and its "
                                    f"background lies at {q1:.0f}..{q5:.0f}, with tissue up to {_q(v, 99):.0f}: air "
                                    f"is at -1000 in HU")
    if plateau and -800 < q1 < -200:
        return HUEvidence("not_hu", f"its darkest 5 % of voxels (air) lie at {q1:.0f}..{q5:.0f}; air is at -1000 HU")
    if negative >= FAT_SHARE and tissue >= CROP_TISSUE_SHARE:
        return HUEvidence("hu", f"no air, but fat or lung below 0 HU ({negative:.0%} of voxels below -50, none below "
                                f"-1124) and soft tissue near 0 ({tissue:.0%} within -200..200): a cropped CT")
    return HUEvidence("unknown", f"no air at -1000 ({air:.1%} of voxels within -1100..-900) and nothing physically "
                                 f"impossible for a CT in HU (e.g. a CT cropped to the heart)")


def hu_evidence(image: np.ndarray) -> HUEvidence:
    """What physics says about an image ((c, z, y, x): channel 0; or (z, y, x)): see the module docstring. For a
    "not_hu" image, `undo` names a common off-HU storage whose inverse turns it into an image "hu"."""
    v = sample(image)
    e = _evidence(v)
    if e.verdict != "not_hu":
        return e
    for name, back in OFF_HU.items():
        if _evidence(np.sort(back(v))).verdict == "hu":
            return HUEvidence(e.verdict, e.reason, name)
    return e


def undone(image: np.ndarray, transform: str) -> np.ndarray:
    """The image (a float32 copy) with an off-HU storage of OFF_HU undone."""
    return OFF_HU[transform](np.asarray(image, dtype=np.float32))


def describe(e: HUEvidence) -> str:
    out = {"hu": "in HU", "not_hu": "not in HU", "unknown": "HU undecided"}[e.verdict]
    return out + (f" (perhaps {e.undo})" if e.undo else "")


def names(seq: Sequence[str]) -> str:
    return ", ".join(seq)
