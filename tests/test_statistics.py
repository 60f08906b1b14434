"""nnunet_cin.evaluation.statistics against hand-computed values (tiny arrays) and against scipy."""
import math

import numpy as np
import pytest
from scipy import stats

from nnunet_cin.evaluation.statistics import (BETTER, NO_DIFFERENCE, WORSE, bootstrap_ci, compare_paired, mean_ci,
                                              verdict, wilcoxon_p)

T_975_DF2 = 4.302652729911275  # Student-t 97.5% quantile, 2 degrees of freedom (printed tables: 4.303)


def test_mean_ci_hand_computed_and_against_scipy():
    # [1, 2, 3]: mean 2, sample sd 1, standard error 1/sqrt(3): 2 -+ 4.3027 / sqrt(3) = [-0.4841, 4.4841]
    ci = mean_ci([1.0, 2.0, 3.0])
    assert (ci.n, ci.mean) == (3, 2.0)
    assert ci.low == pytest.approx(2 - T_975_DF2 / math.sqrt(3)) and ci.low == pytest.approx(-0.48414, abs=1e-5)
    assert ci.high == pytest.approx(2 + T_975_DF2 / math.sqrt(3))
    # NaN / None values (Dice of a structure absent from reference and prediction) are left out
    assert mean_ci([1.0, float("nan"), 2.0, None, 3.0]) == ci
    # against scipy on other data and another confidence level
    x = np.random.default_rng(0).beta(5, 2, size=17)
    low, high = stats.t.interval(0.9, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    ci = mean_ci(x, confidence=0.9)
    assert ci.low == pytest.approx(low) and ci.high == pytest.approx(high)
    # undefined intervals
    assert mean_ci([0.7]) == type(ci)(1, 0.7, None, None)
    assert mean_ci([]) == type(ci)(0, None, None, None)


def test_bootstrap_ci_exact_small_cases():
    # constant values: every resample has the same mean
    ci = bootstrap_ci([0.5, 0.5, 0.5])
    assert (ci.low, ci.high) == (0.5, 0.5)
    # n = 3: the resample "all the smallest value" has probability 1/27 = 3.7% > 2.5%, likewise the largest, so the
    # 95% percentile interval is [min, max] exactly
    ci = bootstrap_ci([0.0, 0.3, 1.0])
    assert (ci.n, ci.low, ci.high) == (3, 0.0, 1.0) and ci.mean == pytest.approx(1.3 / 3)
    # n = 4: those resamples have probability 1/256 < 2.5%: the interval lies strictly inside [min, max]
    ci = bootstrap_ci([0.0, 0.2, 0.6, 1.0])
    assert 0.0 < ci.low < 0.45 < ci.high < 1.0
    # seeded: the same report twice
    assert bootstrap_ci([0.1, 0.4, 0.2, 0.9, 0.5]) == bootstrap_ci([0.1, 0.4, 0.2, 0.9, 0.5])
    assert bootstrap_ci([0.3]).low is None


def test_bootstrap_ci_against_scipy():
    x = np.random.default_rng(3).beta(5, 2, size=15)
    ours = bootstrap_ci(x, resamples=50000)
    ref = stats.bootstrap((x,), np.mean, method="percentile", n_resamples=50000, random_state=1).confidence_interval
    se = x.std(ddof=1) / math.sqrt(len(x))
    # two Monte Carlo estimates of the same quantiles: equal up to a small fraction of the standard error
    assert ours.low == pytest.approx(ref.low, abs=0.05 * se) and ours.high == pytest.approx(ref.high, abs=0.05 * se)


def test_wilcoxon_hand_computed_and_against_scipy():
    # six positive differences: only 1 of the 2^6 sign patterns is as extreme on each side: p = 2/64
    assert wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == pytest.approx(2 / 64)
    # [1, -2, 3]: ranks 1, 2, 3, W+ = 4, W- = 2. Of the 8 equally likely sign patterns, W- <= 2 in 3 (W- = 0, 1, 2)
    # and W+ <= 2 in 3: p = 6/8
    assert wilcoxon_p([1.0, -2.0, 3.0]) == pytest.approx(0.75)
    # five positive differences cannot reach p < 0.05: p = 2/32
    assert wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0  # nothing to rank
    assert wilcoxon_p([]) is None
    d = np.random.default_rng(1).normal(0.02, 0.05, size=30)
    assert wilcoxon_p(d) == pytest.approx(stats.wilcoxon(d).pvalue)


def test_wilcoxon_with_zeros_and_ties_hand_computed_and_against_scipy():
    # zeros are dropped (Wilcoxon's method): [0.5, 0.5, -1, 2, 2, 2], |d| ranks 1.5, 1.5, 3, 5, 5, 5 (ties share their
    # mean rank), W- = 3. With ties the signed-rank table does not apply; every one of the 2^6 sign patterns is
    # counted: W+ <= 3 for {}, {1.5}, {1.5'}, {1.5, 1.5'}, {3}, and W- <= 3 for as many: p = 10/64
    d = [0.0, 0.5, 0.5, -1.0, 2.0, 2.0, 2.0]
    assert wilcoxon_p(d) == pytest.approx(10 / 64)
    assert wilcoxon_p(d) == pytest.approx(stats.wilcoxon(d, zero_method="wilcox").pvalue)
    # 14 nonzero differences with ties: the normal approximation with the tie correction. |d|: six 1s (ranks 1-6,
    # mean 3.5), four 2s (7-10, 8.5), four 3s (11-14, 12.5); W- = 2 * 3.5 + 8.5 = 15.5. Mean 14 * 15 / 4 = 52.5,
    # variance 14 * 15 * 29 / 24 - ((6^3 - 6) + 2 * (4^3 - 4)) / 48 = 253.75 - 6.875 = 246.875:
    # z = (15.5 - 52.5) / 15.7123 = -2.3549, p = 2 * Phi(-2.3549) = 0.018530
    d = [0.0, 0.0] + [1.0] * 4 + [-1.0] * 2 + [2.0] * 3 + [-2.0] + [3.0] * 4
    assert wilcoxon_p(d) == pytest.approx(0.018530, abs=1e-6)
    assert wilcoxon_p(d) == pytest.approx(2 * stats.norm.cdf((15.5 - 52.5) / math.sqrt(246.875)))
    assert wilcoxon_p(d) == pytest.approx(stats.wilcoxon(d, zero_method="wilcox").pvalue)


def test_verdict_rule():
    assert verdict(0.01, 0.05, 0.01) == BETTER
    assert verdict(-0.05, -0.01, 0.01) == WORSE
    assert verdict(-0.01, 0.05, 0.01) == NO_DIFFERENCE  # interval includes 0
    assert verdict(0.01, 0.05, 0.06) == NO_DIFFERENCE  # test does not reject
    assert verdict(0.01, 0.05, 0.05) == NO_DIFFERENCE  # p must be below alpha
    assert verdict(None, None, 0.01) == NO_DIFFERENCE and verdict(0.01, 0.05, None) == NO_DIFFERENCE


def test_compare_paired():
    ref = [0.3] * 6
    better = compare_paired([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], ref)
    assert better.n == 6 and better.difference == pytest.approx(0.35)
    assert better.mean == pytest.approx(0.65) and better.reference_mean == pytest.approx(0.3)
    assert better.p == pytest.approx(2 / 64) and better.low > 0 and better.verdict == BETTER
    worse = compare_paired(ref, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert worse.difference == pytest.approx(-0.35) and worse.verdict == WORSE
    # five cases, all better: the interval excludes 0, but the test cannot reject
    five = compare_paired([0.9, 0.8, 0.7, 0.6, 0.5], [0.3] * 5)
    assert five.low > 0 and five.p == pytest.approx(2 / 32) and five.verdict == NO_DIFFERENCE
    # a pair with a missing value on either side is left out
    partial = compare_paired([0.9, float("nan"), 0.7, None], [0.5, 0.5, float("nan"), 0.6])
    assert partial.n == 1 and partial.difference == pytest.approx(0.4) and partial.low is None
    assert compare_paired([], []).verdict == NO_DIFFERENCE
    with pytest.raises(ValueError, match="differ in length"):
        compare_paired([0.1, 0.2], [0.1])


def test_compare_paired_uses_the_pairing():
    """Cases that differ a lot in difficulty (reference Dice 0.5-0.95) and a method better on every one by 0.01-0.03:
    the paired interval of the mean difference excludes 0; intervals that ignore the pairing (the difference of two
    independent bootstraps, a two-sample t interval) are about ten times wider and include it."""
    rng = np.random.default_rng(7)
    reference = rng.uniform(0.5, 0.95, size=10)
    differences = rng.uniform(0.01, 0.03, size=10)
    result = compare_paired(reference + differences, reference)
    assert result.difference == pytest.approx(differences.mean())
    assert 0.01 <= result.low < differences.mean() < result.high <= 0.03
    assert result.p == pytest.approx(2 / 2 ** 10) and result.verdict == BETTER
    # unpaired: the same data, resampled per method independently
    rng = np.random.default_rng(0)
    draws = lambda x: x[rng.integers(0, len(x), size=(10000, len(x)))].mean(axis=1)  # noqa: E731
    unpaired_low, unpaired_high = np.quantile(draws(reference + differences) - draws(reference), [0.025, 0.975])
    assert unpaired_low < 0 < unpaired_high and unpaired_high - unpaired_low > 5 * (result.high - result.low)
    t_interval = stats.ttest_ind(reference + differences, reference).confidence_interval()
    assert t_interval.low < 0 < t_interval.high
