"""Confidence intervals and paired tests for per-case metrics (e.g. Dice), with the unit of analysis being the case.

- `mean_ci`: mean and two-sided Student-t interval, mean ± t(1 - alpha/2, n - 1) * s / sqrt(n) (s: sample standard
  deviation, ddof=1). Exact for normal data and close for n of about 20 and more; with few cases it is wide, as it
  should be.
- `bootstrap_ci`: percentile bootstrap of the mean (resampling cases with replacement), seeded so that a report is
  reproducible. Used for paired differences, whose distribution (bounded, often skewed) the bootstrap does not need
  to assume.
- `wilcoxon_p`: two-sided Wilcoxon signed-rank test of paired differences (scipy's; zero differences are dropped as
  in Wilcoxon's original method, ties share their mean rank; the exact distribution up to 50 differences without
  ties, with ties or zeros every sign pattern counted up to 13 nonzero differences (scipy 1.15+), beyond that the
  normal approximation with the tie correction).
- `compare_paired`: the difference of two methods on the same cases, with both, and a verdict:
  "better" when the bootstrap interval of the mean difference lies above 0 and the Wilcoxon test rejects at
  `alpha`, "worse" when the interval lies below 0 and the test rejects, else "no detectable difference". Requiring
  both keeps a verdict from resting on one assumption; note that with fewer than 6 pairs the two-sided exact test
  cannot reach p < 0.05, so such a comparison never gets a "better"/"worse".
"""
import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

CONFIDENCE = 0.95
ALPHA = 0.05  # of the paired test, = 1 - CONFIDENCE
BOOTSTRAP_RESAMPLES = 10000
BOOTSTRAP_SEED = 0
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"


def _finite(values: Sequence[float]) -> np.ndarray:
    x = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return x[np.isfinite(x)]


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval (low/high None when it is undefined: fewer than two values)."""
    n: int
    mean: Optional[float]
    low: Optional[float]
    high: Optional[float]


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean of the finite values and its two-sided Student-t confidence interval."""
    from scipy.stats import t

    x = _finite(values)
    n = len(x)
    if n == 0:
        return Interval(0, None, None, None)
    mean = float(x.mean())
    if n == 1:
        return Interval(1, mean, None, None)
    half = float(t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(n, mean, mean - half, mean + half)


def bootstrap_ci(values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> Interval:
    """Mean of the finite values and its percentile-bootstrap confidence interval: the (1 - confidence) / 2 and
    (1 + confidence) / 2 quantiles of the means of `resamples` samples of n values drawn with replacement."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Interval(0, None, None, None)
    if n == 1:
        return Interval(1, float(x[0]), None, None)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)  # bounded memory for large n
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(n, float(x.mean()), float(low), float(high))


def wilcoxon_p(differences: Sequence[float]) -> Optional[float]:
    """Two-sided p-value of the Wilcoxon signed-rank test that the differences are centred on 0. 1.0 when every
    difference is 0 (nothing to rank), None without differences."""
    from scipy.stats import wilcoxon

    d = _finite(differences)
    if len(d) == 0:
        return None
    if not np.any(d != 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about ties/small samples; the p-value is what it is
        return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def verdict(low: Optional[float], high: Optional[float], p: Optional[float], alpha: float = ALPHA) -> str:
    """"better" / "worse" when the interval excludes 0 on that side and p < alpha, else "no detectable difference"."""
    if low is None or high is None or p is None or not p < alpha:
        return NO_DIFFERENCE
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    return NO_DIFFERENCE


@dataclass(frozen=True)
class PairedComparison:
    n: int  # pairs with both values finite
    mean: Optional[float]  # of the method, over those pairs
    reference_mean: Optional[float]
    difference: Optional[float]  # mean of (method - reference)
    low: Optional[float]  # bootstrap interval of the mean difference
    high: Optional[float]
    p: Optional[float]  # Wilcoxon signed-rank, two-sided
    verdict: str


def compare_paired(values: Sequence[float], reference: Sequence[float], confidence: float = CONFIDENCE,
                   resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> PairedComparison:
    """A method against a reference on the same cases (values[i] and reference[i] belong to one case); pairs with a
    missing or NaN value on either side are left out."""
    a = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    b = np.asarray([np.nan if v is None else v for v in reference], dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in length: {len(a)} vs {len(b)}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) == 0:
        return PairedComparison(0, None, None, None, None, None, None, NO_DIFFERENCE)
    ci = bootstrap_ci(a - b, confidence, resamples, seed)
    p = wilcoxon_p(a - b)
    return PairedComparison(len(a), float(a.mean()), float(b.mean()), ci.mean, ci.low, ci.high, p,
                            verdict(ci.low, ci.high, p, round(1 - confidence, 10)))
