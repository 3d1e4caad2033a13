import numpy as np
import pytest

from latenttracer.metrics import (
    DetectionMetrics,
    calibrate_threshold,
    detection_metrics,
    roc_points,
    split_calibration,
)


def test_perfect_separation():
    m = detection_metrics([0.1, 0.2, 0.3], [1.0, 2.0, 3.0, 4.0])
    assert m.auc == 1.0 and m.ap == 1.0
    assert m.tpr_at_1fpr == 1.0 and m.tpr_at_5fpr == 1.0
    assert (m.n_belonging, m.n_non_belonging) == (3, 4)
    assert m.threshold is None and m.accuracy is None and m.tpr is None


def test_reversed_scores_give_zero_auc():
    m = detection_metrics([5.0, 6.0], [1.0, 2.0, 3.0])
    assert m.auc == 0.0
    assert m.tpr_at_1fpr == 0.0 and m.tpr_at_5fpr == 0.0


def _hand_case():
    # 100 non-belonging scores 1..100: at threshold t, FPR = #(scores <= t) / 100.
    non_belonging = np.arange(1, 101, dtype=float)
    belonging = np.array([0.5] * 10 + [1.5] * 4 + [3.5] * 2 + [5.5] * 2 + [50.0] * 2)
    return belonging, non_belonging


def test_hand_computed_tpr_at_fpr_and_threshold_rates():
    belonging, non_belonging = _hand_case()
    m = detection_metrics(belonging, non_belonging, threshold=2.0)
    # FPR <= 1%: t in [1, 2) lets through one non-belonging score and 14/20 belonging ones.
    assert m.tpr_at_1fpr == pytest.approx(0.7)
    # FPR <= 5%: t in [5.5, 6) lets through 5 non-belonging and 18/20 belonging.
    assert m.tpr_at_5fpr == pytest.approx(0.9)
    # t = 2: TP = 14, FN = 6, FP = 2 (scores 1 and 2, equality counts), TN = 98.
    assert m.tpr == pytest.approx(0.7)
    assert m.fpr == pytest.approx(0.02)
    assert m.accuracy == pytest.approx((14 + 98) / 120)
    assert m.balanced_accuracy == pytest.approx((0.7 + 0.98) / 2)
    assert m.threshold == 2.0
    d = m.as_dict()
    assert d["accuracy"] == m.accuracy and set(d) == set(DetectionMetrics.__dataclass_fields__)


def test_threshold_rule_is_inclusive_for_both_classes():
    m = detection_metrics([1.0, 2.0], [2.0, 3.0], threshold=2.0)
    assert m.tpr == 1.0 and m.fpr == 0.5 and m.accuracy == 0.75


def test_roc_points_thresholds_in_score_units():
    belonging, non_belonging = _hand_case()
    fpr, tpr, thr = roc_points(belonging, non_belonging)
    assert fpr[0] == 0 and tpr[0] == 0 and thr[0] == -np.inf
    assert fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(thr) > 0)  # ascending in score units
    for f, t, th in zip(fpr[1:], tpr[1:], thr[1:]):
        assert np.mean(belonging <= th) == pytest.approx(t)
        assert np.mean(non_belonging <= th) == pytest.approx(f)


def test_calibrate_threshold_order_statistic():
    rng = np.random.default_rng(1)
    scores = rng.permutation(np.arange(1, 101, dtype=float))
    assert calibrate_threshold(scores) == 95.0
    assert calibrate_threshold(scores, 0.5) == 50.0
    assert calibrate_threshold(scores, 1.0) == 100.0
    assert calibrate_threshold(scores, 0.001) == 1.0
    # 0.95 * 500 is 475.00000000000006 in floating point; still the 475th smallest.
    assert calibrate_threshold(np.arange(500.0)) == 474.0


def test_calibrate_threshold_reaches_target_on_own_data():
    scores = np.random.default_rng(0).lognormal(size=333)
    for target in (0.5, 0.9, 0.95, 0.99):
        t = calibrate_threshold(scores, target)
        assert np.mean(scores <= t) >= target
        assert np.mean(scores < t) < target  # and it is the smallest such score
        assert t in scores


def test_calibrate_threshold_errors():
    with pytest.raises(ValueError, match="empty"):
        calibrate_threshold([])
    with pytest.raises(ValueError, match="2 NaN"):
        calibrate_threshold([1.0, np.nan, np.nan])
    for bad in (0.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="target_tpr"):
            calibrate_threshold([1.0, 2.0], bad)


def test_detection_metrics_errors():
    with pytest.raises(ValueError, match="non-belonging scores are empty"):
        detection_metrics([1.0], [])
    with pytest.raises(ValueError, match="1 NaN"):
        detection_metrics([1.0, np.nan], [2.0])
    with pytest.raises(ValueError, match="non-belonging scores contain 2 NaN"):
        detection_metrics([1.0], [np.nan, np.nan, 2.0])


def test_split_calibration_deterministic_disjoint_covering():
    cal, ev = split_calibration(101, 0.5, seed=3)
    cal2, ev2 = split_calibration(101, 0.5, seed=3)
    np.testing.assert_array_equal(cal, cal2)
    np.testing.assert_array_equal(ev, ev2)
    assert len(cal) == 51 and len(ev) == 50
    assert not set(cal) & set(ev)
    np.testing.assert_array_equal(np.sort(np.concatenate([cal, ev])), np.arange(101))
    other, _ = split_calibration(101, 0.5, seed=4)
    assert not np.array_equal(cal, other)
    cal, ev = split_calibration(10, 0.2)
    assert len(cal) == 2 and len(ev) == 8


def test_split_calibration_errors():
    with pytest.raises(ValueError, match="fraction"):
        split_calibration(10, 1.0)
    with pytest.raises(ValueError, match="n must"):
        split_calibration(-1)


def test_calibrated_threshold_end_to_end():
    # Overlapping classes (means 2 sigma apart), so AUC, TPR and FPR are all strictly between 0 and 1; every
    # expected value is computed here by counting, independently of sklearn and of metrics.py.
    rng = np.random.default_rng(0)
    belonging = rng.normal(1.0, 0.1, size=400)
    non_belonging = rng.normal(1.2, 0.1, size=300)
    cal, ev = split_calibration(len(belonging))
    t = calibrate_threshold(belonging[cal])
    ordered = np.sort(belonging[cal])
    assert t == ordered[int(np.ceil(0.95 * len(cal))) - 1]  # the ceil(0.95 n)-th smallest calibration score
    b = belonging[ev]
    m = detection_metrics(b, non_belonging, threshold=t)
    pairs = b[:, None] < non_belonging[None, :]  # belonging scores lower: a correctly ranked pair (no ties here)
    assert m.auc == pytest.approx(pairs.mean(), abs=1e-12)
    assert 0.8 < m.auc < 0.95
    tp, fp = np.sum(b <= t), np.sum(non_belonging <= t)
    assert m.tpr == tp / len(b) and m.fpr == fp / len(non_belonging)
    assert 0.0 < m.fpr < 1.0 and 0.0 < m.tpr < 1.0
    assert m.accuracy == pytest.approx((tp + len(non_belonging) - fp) / (len(b) + len(non_belonging)))
    assert m.balanced_accuracy == pytest.approx((m.tpr + 1 - m.fpr) / 2)
    assert m.n_belonging == len(ev) and m.n_non_belonging == len(non_belonging)


# -- intervals ----------------------------------------------------------------------------------------------------
def test_every_rate_has_an_interval_field():
    fields = set(DetectionMetrics.__dataclass_fields__)
    for rate in ("auc", "ap", "tpr_at_1fpr", "tpr_at_5fpr", "accuracy", "balanced_accuracy", "tpr", "fpr"):
        assert {f"{rate}_lo", f"{rate}_hi"} <= fields


def test_threshold_rates_get_wilson_intervals_of_the_counts():
    from latenttracer.intervals import wilson

    belonging, non_belonging = _hand_case()
    m = detection_metrics(belonging, non_belonging, threshold=2.0)
    # TP = 14 of 20, FP = 2 of 100, TP + TN = 112 of 120 (see the hand case above).
    assert (m.tpr_lo, m.tpr_hi) == pytest.approx(wilson(14, 20))
    assert (m.fpr_lo, m.fpr_hi) == pytest.approx(wilson(2, 100))
    assert (m.accuracy_lo, m.accuracy_hi) == pytest.approx(wilson(112, 120))
    assert m.tpr_lo == pytest.approx(0.4810, abs=1e-4)  # 14/20: Wilson [0.4810, 0.8545]
    assert m.balanced_accuracy_lo < m.balanced_accuracy < m.balanced_accuracy_hi


def test_auc_interval_is_delong_and_never_certain_at_perfect_separation():
    from latenttracer.intervals import auc_delong, wilson

    m = detection_metrics([1, 3, 5], [4, 6])
    assert (m.auc, m.auc_lo, m.auc_hi) == pytest.approx(auc_delong([1, 3, 5], [4, 6]))
    assert m.auc_lo == pytest.approx(0.24078, abs=1e-5)  # hand-computed in tests/test_intervals.py
    perfect = detection_metrics(np.arange(50.0), np.arange(50.0, 100.0))
    assert perfect.auc == 1.0 and perfect.auc_lo == pytest.approx(wilson(50, 50)[0]) and perfect.auc_lo < 0.93


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimate():
    rng = np.random.default_rng(5)
    b, nb = rng.normal(0, 1, 60), rng.normal(1.2, 1, 80)
    m = detection_metrics(b, nb, threshold=0.5)
    again = detection_metrics(b, nb, threshold=0.5)
    other = detection_metrics(b, nb, threshold=0.5, seed=1)
    assert m == again
    assert (m.ap_lo, m.ap_hi) != (other.ap_lo, other.ap_hi)
    for rate in ("ap", "tpr_at_5fpr", "balanced_accuracy"):
        lo, value, hi = getattr(m, f"{rate}_lo"), getattr(m, rate), getattr(m, f"{rate}_hi")
        assert 0.0 <= lo < value < hi <= 1.0, rate
    without = detection_metrics(b, nb, threshold=0.5, intervals=False)
    assert without.auc == m.auc and np.isnan(without.auc_lo) and np.isnan(without.ap_hi)


def test_resampled_stats_match_scikit_learn_with_ties():
    from latenttracer.metrics import resampled_detection_stats

    rng = np.random.default_rng(6)
    for _ in range(100):
        m, n = rng.integers(1, 25, size=2)
        b, nb = np.round(rng.normal(0, 1, m), 1), np.round(rng.normal(0.5, 1, n), 1)  # rounding: ties
        ref = detection_metrics(b, nb, threshold=0.3, intervals=False)
        got = resampled_detection_stats(b[None], nb[None], 0.3)[0]
        assert got == pytest.approx([ref.ap, ref.tpr_at_1fpr, ref.tpr_at_5fpr, ref.balanced_accuracy])


def test_median_ratio_by_hand_and_its_bootstrap_interval():
    from latenttracer.metrics import median_ratio

    # medians 2 and 6: ratio 3; constant classes resample to themselves, so the interval is the point.
    assert median_ratio([2.0, 2.0, 2.0], [6.0, 6.0]) == (3.0, 3.0, 3.0)
    rng = np.random.default_rng(8)
    b, nb = rng.uniform(1, 2, 40), rng.uniform(3, 5, 40)
    ratio, lo, hi = median_ratio(b, nb)
    assert ratio == pytest.approx(np.median(nb) / np.median(b))
    assert lo < ratio < hi and median_ratio(b, nb) == (ratio, lo, hi)  # seeded
    assert np.isnan(median_ratio(b, nb, intervals=False)[1])
    infinite = median_ratio([0.0, 0.0], [1.0])
    assert infinite[0] == np.inf and np.isnan(infinite[1]) and np.isnan(infinite[2])
