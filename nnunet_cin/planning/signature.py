"""Modality signatures: what each modality's training images look like as a whole, and which one a new image matches.

Case features (`case_features`, channel 0 of a (c, z, y, x) image as the reader returns it, on a fixed-stride
subsample of at most MAX_SAMPLES voxels; deterministic; one sort, well under 1 % of the time it takes to read the
image from disk):

- `a_qNN` absolute whole-image quantiles (1 ... 99 %). Scored only for modalities whose absolute intensity scale the
  model depends on (`scale_matters`: CT normalization clips with the dataset's statistics, noNorm keeps the values);
  after a per-image normalization (z-score, rescale to [0, 1]) an intensity factor is harmless and they are left out.
- `r_qNN` quantiles divided by the magnitude of the 99 % quantile: the histogram's shape, invariant to a
  multiplicative scale but not to a shift (a CT rescaled to [0, 1] loses its air at -3 x q99).
- `cdf_TT` share of voxels below TT x q99: the same histogram seen from the other axis. It moves smoothly with the
  tissue proportions (a quantile jumps from one tissue's intensity to the next), which separates two MR sequences
  that differ only in a few structures.
- `neg` share of negative voxels; `log_sp_min` / `log_sp_max` log of the finest / coarsest spacing (a weak hint).

Signatures (`build_signatures`, a few KB of JSON in the plans): per modality and feature the median and a robust
spread (1.4826 x MAD) over the modality's training cases, floored per feature family (FLOORS) so that a modality
with few or near-identical cases does not make every new case look implausible.

Decision (`match`): z = |x - median| / spread, capped at Z_CAP so that one broken feature cannot dominate.
- Ranking: chi2 = sum of z^2 over the features every modality has; margin = (chi2 of the runner-up - chi2 of the
  best) / 2, a capped Gaussian log-likelihood ratio: features that do not separate two modalities cancel out.
- Plausibility of the best: its RMS z over all its features after dropping the worst TRIM share (a crop that removes
  the air does not disqualify a case) is at most MAX_DISTANCE and, where the scale matters, the bright end
  (SCALE_KEYS: stable under crops, moved by any rescaling) lies within SCALE_Z spreads of training.
- verdict "match" (plausible, margin >= MIN_MARGIN and the trimmed distance ranks the same modality first),
  "ambiguous" (plausible otherwise) or "none" (the closest modality is not plausible, e.g. a CT no longer in HU).
MIN_MARGIN 9 is about one feature 4.2 spreads apart: the features are correlated, so a naive sum overstates the
evidence and the bar is high. The thresholds travel with the signatures, so plans keep the ones they were made with.
"""
import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

VERSION = 1  # of the case features; fingerprints with another version are extracted again
MAX_SAMPLES = 2 ** 16
ABS_Q = (1, 5, 25, 50, 75, 95, 99)
REL_Q = (1, 5, 25, 50, 75, 95, 99.5)  # no 90 %: it jumps between tissue and blood from case to case
CDF_T = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SCALE_KEYS = ("a_q95", "a_q99")
Z_CAP = 6.0
TRIM = 0.15
MAX_DISTANCE = 3.0
SCALE_Z = 4.0
MIN_MARGIN = 9.0
# Spread floors per feature family, in the feature's unit; for "a_" a fraction of the modality's range q99 - q1.
FLOORS = {"a_": 0.02, "r_": 0.03, "cdf_": 0.025, "neg": 0.02, "log_sp": 0.3}
# nnU-Net's normalization schemes that normalize each image by its own statistics: the absolute scale is lost.
SCALE_FREE_SCHEMES = ("ZScoreNormalization", "RescaleTo01Normalization")


def scale_matters(scheme: str) -> bool:
    """Whether a modality normalized with `scheme` (nnU-Net's class name) depends on its absolute intensities.
    Anything but a per-image scheme does: CT, noNorm, rgb_to_0_1 and unknown custom schemes."""
    return scheme not in SCALE_FREE_SCHEMES


def _name(prefix: str, x: float) -> str:
    return prefix + f"{x:g}".replace(".", "p")


def _family(feature: str) -> str:
    return next(prefix for prefix in FLOORS if feature.startswith(prefix))


def case_features(image: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """Features of one image: (c, z, y, x) (channel 0 is used) or (z, y, x); spacing in any axis order (only its min
    and max are used). A fixed stride per axis keeps at most MAX_SAMPLES voxels; the image is not modified."""
    arr = image[0] if image.ndim == 4 else image
    stride = max(1, math.ceil((arr.size / MAX_SAMPLES) ** (1.0 / arr.ndim)))
    v = np.asarray(arr[(slice(None, None, stride),) * arr.ndim], dtype=np.float32).ravel()
    if not np.isfinite(v.sum()):
        v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("the image holds no finite intensity value")
    # np.sort copies (an in-place sort would scramble the caller's image: with stride 1 `v` can be a view); after one
    # sort every quantile is an index and every share a binary search
    v = np.sort(v)
    n = v.size

    def q(p):  # percentile by nearest rank
        return float(v[min(n - 1, int(round(p / 100.0 * (n - 1))))])

    scale = max(abs(q(99)), 1e-6)  # guards an all-zero image
    feats = {_name("a_q", p): q(p) for p in ABS_Q}
    feats.update({_name("r_q", p): q(p) / scale for p in REL_Q})
    feats.update({_name("cdf_", t): float(np.searchsorted(v, t * scale)) / n for t in CDF_T})
    feats["neg"] = float(np.searchsorted(v, 0.0)) / n
    sp = [float(s) for s in spacing]
    feats["log_sp_min"], feats["log_sp_max"] = math.log(min(sp)), math.log(max(sp))
    return feats


def build_signatures(features_by_modality: Mapping[str, List[Mapping[str, float]]],
                     absolute_modalities: Iterable[str]) -> dict:
    """JSON-ready signatures from the training cases' features. absolute_modalities: the modalities whose absolute
    intensities matter (their normalization scheme `scale_matters`); their a_ features are scored."""
    absolute = set(absolute_modalities)
    out = {"version": VERSION, "z_cap": Z_CAP, "trim": TRIM, "max_distance": MAX_DISTANCE, "scale_z": SCALE_Z,
           "min_margin": MIN_MARGIN, "modalities": {}}
    for modality, cases in features_by_modality.items():
        if not cases:
            raise ValueError(f"modality {modality!r} has no training case to learn its signature from")
        names = [k for k in cases[0] if modality in absolute or not k.startswith("a_")]
        table = np.array([[float(c[k]) for k in names] for c in cases], dtype=np.float64)
        center = np.median(table, axis=0)
        mad = 1.4826 * np.median(np.abs(table - center), axis=0)
        abs_range = float(np.median([c["a_q99"] - c["a_q1"] for c in cases]))
        floors = np.array([FLOORS["a_"] * max(abs_range, 1e-6) if k.startswith("a_") else FLOORS[_family(k)]
                           for k in names])
        out["modalities"][modality] = {
            "n_cases": len(cases),
            "absolute": modality in absolute,
            "center": {k: round(float(x), 6) for k, x in zip(names, center)},
            "spread": {k: round(float(x), 6) for k, x in zip(names, np.maximum(mad, floors))},
        }
    return out


@dataclass(frozen=True)
class Match:
    """What `match` concluded about one image."""
    verdict: str                    # "match", "ambiguous" or "none"
    best: Optional[str]             # the matched modality (verdict "match" only)
    candidate: str                  # the closest modality, whatever the verdict
    second: Optional[str]           # the runner-up (None with a single modality)
    margin: float                   # log-likelihood margin of candidate over second (inf with a single modality)
    scores: Dict[str, float]        # trimmed RMS distance to each modality
    chi2: Dict[str, float]          # ranking statistic per modality
    plausible: Dict[str, bool]      # whether the image could be a case of each modality


def _z(signature: Mapping, features: Mapping[str, float], z_cap: float) -> Dict[str, float]:
    return {k: min(abs(float(features[k]) - c) / signature["spread"][k], z_cap)
            for k, c in signature["center"].items()}


def match(signatures: Mapping, features: Mapping[str, float]) -> Match:
    """The modality among `signatures` (from `build_signatures`) that an image with these `case_features` matches."""
    p = {k: signatures.get(k, default) for k, default in (("z_cap", Z_CAP), ("trim", TRIM),
                                                          ("max_distance", MAX_DISTANCE), ("scale_z", SCALE_Z),
                                                          ("min_margin", MIN_MARGIN))}
    zs = {m: _z(s, features, p["z_cap"]) for m, s in signatures["modalities"].items()}
    common = set.intersection(*(set(z) for z in zs.values()))
    chi2 = {m: float(sum(z[k] ** 2 for k in common)) for m, z in zs.items()}
    scores, plausible = {}, {}
    for m, z in zs.items():
        sq = np.sort(np.square(list(z.values())))
        scores[m] = float(np.sqrt(np.mean(sq[: max(1, int(math.ceil(len(sq) * (1 - p["trim"]))))])))
        scale_ok = all(z[k] <= p["scale_z"] for k in SCALE_KEYS if k in z)
        plausible[m] = scores[m] <= p["max_distance"] and scale_ok
    ranked = sorted(chi2, key=chi2.get)
    best, second = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    margin = (chi2[second] - chi2[best]) / 2 if second else math.inf
    if not plausible[best]:
        verdict = "none"
    elif margin < p["min_margin"] or min(scores, key=scores.get) != best:
        verdict = "ambiguous"  # small likelihood margin, or the trimmed fit prefers another modality
    else:
        verdict = "match"
    return Match(verdict=verdict, best=best if verdict == "match" else None, candidate=best, second=second,
                 margin=round(margin, 3) if second else margin, scores={m: round(s, 3) for m, s in scores.items()},
                 chi2={m: round(c, 2) for m, c in chi2.items()}, plausible=plausible)
