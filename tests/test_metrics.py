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
