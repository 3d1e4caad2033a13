"""Tests for latenttracer.intervals: hand-computed cases, a published reference, seeding and coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, norm
from sklearn.metrics import roc_auc_score

from latenttracer.intervals import (
    AUC_FALLBACK,
    auc_delong,
    auc_difference,
    auc_interval,
    delong_variance,
    fmt_ci,
    stratified_bootstrap,
    wilson,
    z_value,
)

Z95 = 1.959963984540054


def test_z_value():
    assert z_value(0.95) == pytest.approx(Z95, abs=1e-12)
    assert z_value(0.90) == pytest.approx(1.6448536269514722, abs=1e-12)
    for bad in (0.0, 1.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="confidence level"):
            z_value(bad)


# --- Wilson -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "k, n, lo, hi",
    [
        # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score, no continuity
        # correction). 81/263 and 15/148 are verified independently below against scipy's binomtest.
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombe_1998(k, n, lo, hi):
    got = wilson(k, n)
    assert got[0] == pytest.approx(lo, abs=5e-5)
    assert got[1] == pytest.approx(hi, abs=5e-5)


def test_wilson_by_hand_for_a_perfect_score():
    # At k = n the lower bound reduces to n / (n + z^2): 50 / (50 + 3.8415) = 0.92865.
    lo, hi = wilson(50, 50)
    assert lo == pytest.approx(50 / (50 + Z95**2), abs=1e-12)
    assert hi == 1.0
    lo0, hi0 = wilson(0, 50)
    assert lo0 == 0.0 and hi0 == pytest.approx(1 - 50 / (50 + Z95**2), abs=1e-12)


def test_wilson_agrees_with_an_independent_implementation():
    for n in (1, 2, 7, 30, 263):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
            assert wilson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-10)
    ref90 = binomtest(81, 263).proportion_ci(confidence_level=0.90, method="wilson")
    assert wilson(81, 263, level=0.90) == pytest.approx((ref90.low, ref90.high), abs=1e-10)


@pytest.mark.parametrize("k, n", [(1, 0), (-1, 5), (6, 5), (float("nan"), 5)])
def test_wilson_rejects_bad_counts(k, n):
    with pytest.raises(ValueError, match="wilson"):
        wilson(k, n)


def test_wilson_coverage_is_near_nominal():
    rng = np.random.default_rng(1)
    n, p = 40, 0.3
    ks = rng.binomial(n, p, size=2000)
    covered = np.mean([lo <= p <= hi for lo, hi in (wilson(k, n) for k in ks)])
    assert 0.92 <= covered <= 0.98


# --- DeLong -------------------------------------------------------------------------------------------------

def test_delong_three_versus_two_by_hand():
    # Lower score = belonging. belonging b = [1, 3, 5], non-belonging nb = [4, 6].
    # Pairs (b < nb): (1,4) (1,6) (3,4) (3,6) (5,6) yes, (5,4) no  ->  AUC = 5/6.
    # Placements of b (share of nb above it): 1 -> 1, 3 -> 1, 5 -> 1/2; sample variance S10 = 1/12.
    # Placements of nb (share of b below it): 4 -> 2/3, 6 -> 1;        sample variance S01 = 1/18.
    # var = S10/3 + S01/2 = 1/36 + 1/36 = 1/18;  DeLong: 5/6 -/+ 1.96 * sqrt(1/18) = [0.3714, 1.2953].
    auc, var = delong_variance([1, 3, 5], [4, 6])
    assert auc == pytest.approx(5 / 6, abs=1e-12)
    assert var == pytest.approx(1 / 18, abs=1e-12)
    # DeLong's interval leaves [0, 1], so it is joined with the Wilson interval of 5/6 * 2 out of n_eff = 2:
    # p = 5/6, n = 2: (p + z^2/4 -/+ z sqrt(p(1-p)/2 + z^2/16)) / (1 + z^2/2) = [0.24078, 0.98747].
    res = auc_interval([1, 3, 5], [4, 6])
    assert res.method == AUC_FALLBACK
    assert res.lo == pytest.approx(0.24078, abs=1e-5)
    assert res.lo == pytest.approx(min(5 / 6 - Z95 * math.sqrt(1 / 18), wilson(5 / 3, 2)[0]), abs=1e-12)
    assert res.hi == 1.0
    assert auc_delong([1, 3, 5], [4, 6]) == pytest.approx((5 / 6, res.lo, 1.0))


def test_delong_with_a_tie_by_hand():
    # b = [1, 2, 3], nb = [2, 4]. Pairs: (1,2) 1, (1,4) 1, (2,2) 1/2, (2,4) 1, (3,2) 0, (3,4) 1 -> AUC = 4.5/6.
    # Placements of b: 1 -> 1, 2 -> (1/2 + 1)/2 = 3/4, 3 -> 1/2; S10 = 1/16.
    # Placements of nb: 2 -> (1 + 1/2 + 0)/3 = 1/2, 4 -> 1;       S01 = 1/8.
    # var = (1/16)/3 + (1/8)/2 = 1/12; DeLong 0.75 -/+ 1.96 * 0.288675 = [0.18421, 1.31579], which leaves [0, 1];
    # Wilson of 1.5 out of 2 is [0.19787, 0.97334], so the union is [0.18421, 1].
    auc, var = delong_variance([1, 2, 3], [2, 4])
    assert auc == pytest.approx(0.75, abs=1e-12)
    assert var == pytest.approx(1 / 12, abs=1e-12)
    _, lo, hi = auc_delong([1, 2, 3], [2, 4])
    assert lo == pytest.approx(0.18421, abs=1e-5) and hi == 1.0


def test_delong_inside_the_unit_interval_is_plain_delong():
    rng = np.random.default_rng(9)
    b, nb = rng.normal(0, 1, 50), rng.normal(0.5, 1, 50)
    res = auc_interval(b, nb)
    auc, var = delong_variance(b, nb)
    assert res.method == "delong"
    assert (res.lo, res.hi) == pytest.approx((auc - Z95 * math.sqrt(var), auc + Z95 * math.sqrt(var)), abs=1e-12)
    assert 0.0 < res.lo < res.auc < res.hi < 1.0


def test_near_one_the_interval_is_not_narrower_than_the_conservative_bound():
    # 50 vs 50 with a single misordered pair: AUC = 1 - 1/2500. Plain DeLong would give about [0.999, 1.00].
    b = np.r_[np.arange(49.0), 49.5]
    nb = np.r_[49.0, np.arange(50.0, 99.0)]
    res = auc_interval(b, nb)
    assert res.auc == pytest.approx(1 - 1 / 2500)
    assert res.method == AUC_FALLBACK
    assert res.lo == pytest.approx(wilson(res.auc * 50, 50)[0]) and res.lo < 0.93
    assert res.hi == 1.0


def _brute_force_delong(b, nb):
    """O(m n) placement values straight from the definition, independent of the midrank form."""
    psi = (b[:, None] < nb[None, :]).astype(float) + 0.5 * (b[:, None] == nb[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), v10.var(ddof=1) / b.size + v01.var(ddof=1) / nb.size


def test_delong_midrank_form_matches_the_definition_and_sklearn():
    rng = np.random.default_rng(0)
    for m, n in ((5, 7), (30, 12), (50, 50)):
        b = np.round(rng.normal(0.0, 1.0, m), 1)  # rounding makes ties
        nb = np.round(rng.normal(0.8, 1.0, n), 1)
        auc, var = delong_variance(b, nb)
        ref_auc, ref_var = _brute_force_delong(b, nb)
        assert auc == pytest.approx(ref_auc, abs=1e-12)
        assert var == pytest.approx(ref_var, abs=1e-12)
        labels = np.r_[np.ones(m), np.zeros(n)]
        assert auc == pytest.approx(roc_auc_score(labels, -np.r_[b, nb]), abs=1e-12)


def test_delong_direction_lower_score_belongs():
    auc, _, _ = auc_delong([0.1, 0.2, 0.3, 0.5], [0.4, 0.6, 0.7])
    assert auc == pytest.approx(11 / 12)
    auc_swapped, _, _ = auc_delong([0.4, 0.6, 0.7], [0.1, 0.2, 0.3, 0.5])
    assert auc_swapped == pytest.approx(1 / 12)


def test_perfect_separation_falls_back_to_a_conservative_interval():
    b, nb = np.arange(50.0), np.arange(50.0, 100.0)
    res = auc_interval(b, nb)
    assert res.method == AUC_FALLBACK
    assert res.auc == 1.0
    assert (res.lo, res.hi) == pytest.approx(wilson(50, 50))
    assert res.lo == pytest.approx(0.9287, abs=1e-4)  # never [1.00, 1.00]
    # The smaller class sets the effective n: 2 vs 40 is as weak as 2 vs 2.
    assert auc_interval([0.0, 1.0], np.arange(2.0, 42.0)).lo == pytest.approx(wilson(2, 2)[0])
    # AUC 0 mirrors AUC 1.
    zero = auc_interval(nb, b)
    assert zero.auc == 0.0 and zero.lo == 0.0
    assert zero.hi == pytest.approx(1 - res.lo)


def test_all_tied_scores_give_a_wide_interval_around_one_half():
    res = auc_interval(np.ones(10), np.ones(10))
    assert res.auc == 0.5 and res.method == AUC_FALLBACK
    assert (res.lo, res.hi) == pytest.approx(wilson(5, 10))


def test_delong_coverage_near_one_is_not_below_nominal():
    # True AUC 0.99 at 50 vs 50: plain DeLong covers about 0.80 of the time (see auc_interval's docstring).
    rng = np.random.default_rng(3)
    true_auc = 0.99
    shift = math.sqrt(2) * norm.ppf(true_auc)
    hits = [lo <= true_auc <= hi for lo, hi in
            (auc_delong(rng.normal(0, 1, 50), rng.normal(shift, 1, 50))[1:] for _ in range(200))]
    assert np.mean(hits) >= 0.95


@pytest.mark.slow
def test_auc_coverage_table():
    """The coverage figures quoted in auc_interval's docstring (1000 binormal studies per case, seed 0)."""
    rng = np.random.default_rng(0)
    quoted = {(50, 50, 0.99): 1.00, (12, 12, 0.99): 1.00, (50, 50, 0.75): 0.94, (50, 300, 0.97): 0.89}
    for (m, n, true_auc), expected in quoted.items():
        shift = math.sqrt(2) * norm.ppf(true_auc)
        hits = [lo <= true_auc <= hi for lo, hi in
                (auc_delong(rng.normal(0, 1, m), rng.normal(shift, 1, n))[1:] for _ in range(1000))]
        assert np.mean(hits) == pytest.approx(expected, abs=0.02), (m, n, true_auc)


def test_delong_coverage_is_near_nominal():
    # Belonging ~ N(0, 1), non-belonging ~ N(1, 1): true AUC = Phi(1 / sqrt 2) = 0.7602.
    rng = np.random.default_rng(2)
    true_auc = norm.cdf(1 / math.sqrt(2))
    hits = []
    for _ in range(400):
        _, lo, hi = auc_delong(rng.normal(0, 1, 40), rng.normal(1, 1, 40))
        hits.append(lo <= true_auc <= hi)
    assert 0.91 <= np.mean(hits) <= 0.98


def test_paired_auc_difference_by_hand():
    # Same 3 belonging / 2 non-belonging images under two scores.
    # Score a: b = [1, 3, 5], nb = [4, 6]: placements v10 = [1, 1, 1/2], v01 = [2/3, 1], AUC 5/6.
    # Score b: b = [1, 5, 3], nb = [6, 4]: placements v10 = [1, 1/2, 1], v01 = [1, 2/3], AUC 5/6.
    # Differences of placements: v10 [0, 1/2, -1/2] (sample variance 1/4), v01 [-1/3, 1/3] (sample variance 2/9);
    # var = (1/4)/3 + (2/9)/2 = 1/12 + 1/9 = 7/36; diff 0 -/+ 1.96 * sqrt(7/36) = -/+ 0.86427.
    diff, lo, hi = auc_difference([1, 3, 5], [4, 6], [1, 5, 3], [6, 4])
    assert diff == pytest.approx(0.0, abs=1e-12)
    assert hi == pytest.approx(Z95 * math.sqrt(7 / 36), abs=1e-12) and lo == pytest.approx(-hi)


def test_paired_difference_is_narrower_than_two_intervals_and_resolves_a_real_gap():
    rng = np.random.default_rng(11)
    b_base, nb_base = rng.normal(0, 1, 60), rng.normal(0.4, 1, 60)
    # score a: the baseline plus a signal, so the two scores are correlated image by image
    b_a, nb_a = b_base - 0.2 * rng.random(60), nb_base + 1.0 + 0.2 * rng.random(60)
    diff, lo, hi = auc_difference(b_a, nb_a, b_base, nb_base)
    (auc_a, lo_a, hi_a), (auc_b, lo_b, hi_b) = auc_delong(b_a, nb_a), auc_delong(b_base, nb_base)
    assert diff == pytest.approx(auc_a - auc_b)
    assert lo > 0  # resolved
    assert hi - lo < (hi_a - lo_a) + (hi_b - lo_b)
    same = auc_difference(b_base, nb_base, b_base, nb_base)
    assert same == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same images"):
        auc_difference(b_a, nb_a, b_base[:-1], nb_base)


def test_auc_rejects_empty_or_nan_scores():
    with pytest.raises(ValueError, match="belonging scores are empty"):
        auc_delong([], [1.0])
    with pytest.raises(ValueError, match="non-belonging scores contain 1 NaN"):
        auc_delong([1.0], [float("nan"), 2.0])


# --- stratified bootstrap -----------------------------------------------------------------------------------

def _median_ratio(b, nb):
    return float(np.median(nb) / np.median(b))


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(3)
    b, nb = rng.uniform(1, 2, 30), rng.uniform(2, 4, 20)
    first = stratified_bootstrap(_median_ratio, b, nb, n_boot=300, seed=7)
    assert stratified_bootstrap(_median_ratio, b, nb, n_boot=300, seed=7) == first
    assert stratified_bootstrap(_median_ratio, b, nb, n_boot=300, seed=8) != first
    assert first[0] < _median_ratio(b, nb) < first[1]


def test_bootstrap_keeps_each_class_separate():
    seen = []

    def stat(b, nb):
        seen.append((b.size, nb.size, set(b) <= {1.0, 2.0}, set(nb) <= {10.0, 20.0, 30.0}))
        return float(nb.mean() - b.mean())

    stratified_bootstrap(stat, [1.0, 2.0], [10.0, 20.0, 30.0], n_boot=50)
    assert len(seen) == 50
    assert all(s == (2, 3, True, True) for s in seen)


def test_bootstrap_by_hand_on_constant_classes():
    # Every resample of constant classes gives the same statistic, so the interval is that point.
    assert stratified_bootstrap(_median_ratio, [2.0] * 5, [3.0] * 4, n_boot=20) == (1.5, 1.5)


def test_bootstrap_coverage_is_near_nominal():
    rng = np.random.default_rng(4)
    hits = []
    for i in range(200):
        b, nb = rng.normal(0, 1, 40), rng.normal(0.5, 1, 40)
        lo, hi = stratified_bootstrap(lambda x, y: float(y.mean() - x.mean()), b, nb, n_boot=200, seed=i)
        hits.append(lo <= 0.5 <= hi)
    assert 0.88 <= np.mean(hits) <= 0.99


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="needs both classes"):
        stratified_bootstrap(_median_ratio, [], [1.0])
    with pytest.raises(ValueError, match="n_boot"):
        stratified_bootstrap(_median_ratio, [1.0], [1.0], n_boot=1)
    with pytest.raises(ValueError, match="NaN on"):
        stratified_bootstrap(lambda b, nb: float("nan"), [1.0, 2.0], [3.0], n_boot=10)


# --- formatting ---------------------------------------------------------------------------------------------

def test_fmt_ci():
    assert fmt_ci(0.9444, 0.8012, 1.0) == "0.944 [0.80, 1.00]"
    assert fmt_ci(0.5833, 0.2502, 0.9166) == "0.583 [0.25, 0.92]"
    assert fmt_ci(0.5, 0.25, 0.75, digits=2) == "0.50 [0.2, 0.8]"
    assert fmt_ci(0.5, float("nan"), 0.75) == "0.500"
    assert fmt_ci(None, 0.1, 0.2) == ""
    assert fmt_ci(float("nan"), 0.1, 0.2) == ""
