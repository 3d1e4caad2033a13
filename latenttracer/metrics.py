"""Detection metrics and threshold calibration, on top of scikit-learn.

Conventions, used everywhere in this module:

- A score is a reconstruction loss, so a **lower score means more belonging**.
- Belonging images are the **positive** class.
- The decision rule is: an image belongs iff ``score <= threshold``. The authors' ``detection.py`` counted
  true positives with ``<=`` but false positives with ``<`` (belonging ``<= τ``, non-belonging ``< τ``); we use
  ``<=`` for both, so one rule gives both rates. The two differ only for non-belonging scores exactly equal
  to the threshold.

scikit-learn ranks "higher is more positive", so every call passes ``-score``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "DetectionMetrics",
    "CALIBRATIONS",
    "calibrate_threshold",
    "detection_metrics",
    "kde_threshold",
    "median_ratio",
    "resampled_detection_stats",
    "roc_points",
    "split_calibration",
]


def _scores(values, name: str) -> np.ndarray:
    """``values`` as a non-empty 1-D float array of finite numbers, or a ValueError saying what is wrong."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} scores are empty")
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(np.isinf(arr).sum())
    if n_nan or n_inf:
        raise ValueError(
            f"{name} scores contain {n_nan} NaN and {n_inf} infinite value(s) out of {arr.size}; "
            "drop failed rows before computing metrics"
        )
    return arr


CALIBRATIONS = ("quantile", "kde")
"""How a method turns its calibration (belonging) scores into a threshold; see :func:`calibrate_threshold`."""

KDE_GRID_POINTS = 10_000


def calibrate_threshold(belonging_scores, target_tpr: float = 0.95, rule: str = "quantile") -> float:
    """A threshold from scores of images known to belong, so that about ``target_tpr`` of them pass.

    ``rule="quantile"`` (LatentTracer's rule, the default): the smallest score ``t`` among ``belonging_scores``
    with ``mean(scores <= t) >= target_tpr``, i.e. the ``ceil(target_tpr * n)``-th smallest score. Calibrate on
    belonging scores held out from the evaluation (see :func:`split_calibration`); on its own data the rule then
    gives a TPR of at least ``target_tpr`` by construction. The authors' first detection script took the
    sorted score at index ``-int(0.05 * n)``, one order statistic higher than this rule whenever ``0.05 * n``
    is a whole number (TPR 476/500 instead of 475/500).

    ``rule="kde"`` (AEDR's rule): the ``target_tpr`` quantile of a Gaussian KDE fitted to the scores; see
    :func:`kde_threshold` (``alpha = 1 - target_tpr``).

    Raises:
        ValueError: empty input, NaN (or infinite) scores, ``target_tpr`` outside ``(0, 1]`` (``(0, 1)`` for
            ``kde``), or an unknown ``rule``.
    """
    if rule not in CALIBRATIONS:
        raise ValueError(f"calibration rule {rule!r} is not one of {list(CALIBRATIONS)}")
    if not 0.0 < float(target_tpr) <= 1.0:  # also rejects NaN
        raise ValueError(f"target_tpr must be in (0, 1], got {target_tpr!r}")
    if rule == "kde":
        return kde_threshold(belonging_scores, alpha=1.0 - float(target_tpr))
    scores = np.sort(_scores(belonging_scores, "belonging"))
    n = scores.size
    # Rounding guards against products like 0.95 * 500 = 475.00000000000006 asking for one score too many.
    k = max(1, math.ceil(round(float(target_tpr) * n, 9)))
    return float(scores[k - 1])


def kde_threshold(belonging_scores, alpha: float = 0.05, grid_points: int = KDE_GRID_POINTS) -> float:
    """AEDR's threshold: the ``1 - alpha`` quantile of a Gaussian KDE of the belonging scores.

    :class:`scipy.stats.gaussian_kde` (Scott's bandwidth) is fitted to the scores and evaluated on
    ``grid_points`` evenly spaced points from ``min - s`` to ``max + s`` (``s``: the sample standard deviation,
    ``ddof=1``); the density's cumulative sum, divided by its last value, is the CDF, and the threshold is where
    it reaches ``1 - alpha`` (linear interpolation between grid points), as in AEDR's ``cal_threshold.py``.

    Raises:
        ValueError: fewer than two distinct scores (no KDE can be fitted), NaN scores, ``alpha`` not in (0, 1).
    """
    from scipy.stats import gaussian_kde

    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r} (a KDE threshold needs target_tpr < 1)")
    values = _scores(belonging_scores, "belonging")
    if np.unique(values).size < 2:
        raise ValueError(f"a KDE threshold needs at least two distinct belonging scores, got {values.size} "
                         f"score(s) with {np.unique(values).size} distinct value(s)")
    sigma = float(np.std(values, ddof=1))
    kde = gaussian_kde(values)
    grid = np.linspace(values.min() - sigma, values.max() + sigma, int(grid_points))
    cdf = np.cumsum(kde(grid))
    cdf = cdf / cdf[-1]
    return float(np.interp(1.0 - float(alpha), cdf, grid))


def split_calibration(n: int, fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..n-1`` at random, deterministically, into (calibration, evaluation).

    The calibration split holds ``round(fraction * n)`` indices (halves round up); both splits are sorted,
    disjoint and together cover every index. The same ``(n, fraction, seed)`` always gives the same split.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    k = math.floor(fraction * n + 0.5)
    perm = np.random.default_rng(seed).permutation(int(n))
    return np.sort(perm[:k]), np.sort(perm[k:])


@dataclass
class DetectionMetrics:
    """Detection quality of one inspected model; see :func:`detection_metrics`.

    Every rate ``x`` comes with its 95% interval ``x_lo, x_hi`` (NaN when intervals were not asked for).
    The threshold-dependent fields are ``None`` when no threshold was given.
    """

    auc: float
    auc_lo: float
    auc_hi: float
    ap: float
    ap_lo: float
    ap_hi: float
    tpr_at_1fpr: float
    tpr_at_1fpr_lo: float
    tpr_at_1fpr_hi: float
    tpr_at_5fpr: float
    tpr_at_5fpr_lo: float
    tpr_at_5fpr_hi: float
    threshold: float | None
    accuracy: float | None
    accuracy_lo: float | None
    accuracy_hi: float | None
    balanced_accuracy: float | None
    balanced_accuracy_lo: float | None
    balanced_accuracy_hi: float | None
    tpr: float | None
    tpr_lo: float | None
    tpr_hi: float | None
    fpr: float | None
    fpr_lo: float | None
    fpr_hi: float | None
    n_belonging: int
    n_non_belonging: int

    def as_dict(self) -> dict:
        return asdict(self)


def _labels_and_ranks(belonging: np.ndarray, non_belonging: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.concatenate([np.ones(belonging.size, dtype=int), np.zeros(non_belonging.size, dtype=int)])
    return y, -np.concatenate([belonging, non_belonging])


def roc_points(belonging, non_belonging) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The full ROC curve: ``(fpr, tpr, thresholds)`` with thresholds in score units (``score <= t``).

    No point is dropped. The first point is ``(0, 0)`` at threshold ``-inf`` (nothing belongs).
    """
    b = _scores(belonging, "belonging")
    nb = _scores(non_belonging, "non-belonging")
    y, ranks = _labels_and_ranks(b, nb)
    fpr, tpr, thresholds = roc_curve(y, ranks, drop_intermediate=False)
    return fpr, tpr, -thresholds


def _tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """The highest TPR over ROC points whose FPR is at most ``max_fpr`` (no interpolation)."""
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def resampled_detection_stats(belonging: np.ndarray, non_belonging: np.ndarray,
                              threshold: float | None = None) -> np.ndarray:
    """AP, TPR at 1% FPR, TPR at 5% FPR (and, with ``threshold``, balanced accuracy) of many score sets at once.

    ``belonging``: ``(r, m)``, ``non_belonging``: ``(r, n)``, one set per row (bootstrap resamples). Returns an
    ``(r, 3)`` (or ``(r, 4)``) array with the same definitions as :func:`detection_metrics` (tied scores form one
    ROC / precision-recall point), computed with one sort per row instead of one scikit-learn call per set.
    """
    b = np.atleast_2d(np.asarray(belonging, dtype=np.float64))
    nb = np.atleast_2d(np.asarray(non_belonging, dtype=np.float64))
    r, m = b.shape
    n = nb.shape[1]
    scores = np.concatenate([b, nb], axis=1)
    labels = np.concatenate([np.ones(m), np.zeros(n)])
    order = np.argsort(scores, axis=1, kind="stable")  # most belonging first
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    sorted_labels = labels[order]
    tp = np.cumsum(sorted_labels, axis=1)
    fp = np.arange(1, m + n + 1) - tp
    # A threshold sits after the last of a run of tied scores: only those positions are ROC / PR points.
    last = np.ones_like(sorted_labels, dtype=bool)
    last[:, :-1] = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    position = np.broadcast_to(np.arange(m + n), (r, m + n))
    run_end = np.minimum.accumulate(np.where(last, position, m + n)[:, ::-1], axis=1)[:, ::-1]
    precision_at_run_end = np.take_along_axis(tp, run_end, axis=1) / (run_end + 1)
    # AP = sum over thresholds of (recall step) x precision = mean over positives of the precision where they enter.
    ap = (sorted_labels * precision_at_run_end).sum(axis=1) / m
    out = [ap]
    for max_fpr in (0.01, 0.05):
        ok = last & (fp / n <= max_fpr + 1e-12)
        out.append(np.where(ok, tp / m, 0.0).max(axis=1))
    if threshold is not None:
        out.append(0.5 * ((b <= threshold).mean(axis=1) + (nb > threshold).mean(axis=1)))
    return np.stack(out, axis=1)


def median_ratio(belonging, non_belonging, *, intervals: bool = True, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """``(ratio, lo, hi)``: ``median(non_belonging) / median(belonging)`` and its seeded stratified-bootstrap
    interval (:func:`latenttracer.intervals.stratified_bootstrap`; NaN bounds with ``intervals=False``).

    A ratio near 1 means the two classes' losses collapse onto one level (AEDR's observation); a belonging
    median of 0 gives ``inf`` (with NaN bounds).
    """
    from latenttracer.intervals import stratified_bootstrap

    b = _scores(belonging, "belonging")
    nb = _scores(non_belonging, "non-belonging")

    def stat(rb: np.ndarray, rnb: np.ndarray) -> np.ndarray:
        mb = np.median(rb, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(mb > 0, np.median(rnb, axis=1) / np.where(mb > 0, mb, 1.0), np.inf)

    ratio = float(stat(b[None], nb[None])[0])
    if not intervals or not math.isfinite(ratio):  # no interval around an infinite ratio
        return ratio, float("nan"), float("nan")
    lo, hi = stratified_bootstrap(stat, b, nb, n_boot=n_boot, seed=seed, level=level, vectorized=True)
    return ratio, lo, hi


def detection_metrics(belonging, non_belonging, threshold: float | None = None, *, intervals: bool = True,
                      n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> DetectionMetrics:
    """ROC AUC, average precision and TPR at 1% / 5% FPR; with ``threshold``, also the rates at that rule.
    Each with its ``level`` (95%) interval (:mod:`latenttracer.intervals`).

    - AUC and AP come from :func:`sklearn.metrics.roc_auc_score` and
      :func:`sklearn.metrics.average_precision_score` on ``-score`` with belonging as the positive class.
    - TPR at FPR ``f`` is the highest TPR among the ROC points (every distinct threshold) whose FPR is at most
      ``f``: the best operating point that does not exceed that false-positive rate, without interpolation.
    - At ``threshold`` an image belongs iff ``score <= threshold``; ``accuracy = (TP + TN) / (P + N)``,
      ``balanced_accuracy = (TPR + TNR) / 2``.

    Intervals (``intervals=False`` leaves them NaN, for callers that only need a point estimate):

    - AUC: DeLong, with a conservative fallback at AUC 0 or 1 (:func:`latenttracer.intervals.auc_interval`).
    - AP, TPR at 1% / 5% FPR and balanced accuracy: the seeded stratified percentile bootstrap over images
      (``n_boot`` resamples, ``seed``; :func:`latenttracer.intervals.stratified_bootstrap`). The operating point
      is re-chosen in every resample. For a TPR at a low FPR on few non-belonging images the percentile
      interval can sit beside the point estimate rather than around it: read it with ``n_non_belonging``.
    - Accuracy, TPR and FPR at ``threshold``: Wilson intervals of the counts (``TP + TN`` of ``P + N``, ``TP``
      of ``P``, ``FP`` of ``N``). The threshold comes from held-out calibration images, so given it the counts
      are binomial.

    Raises:
        ValueError: either set is empty, or has NaN (or infinite) scores; the message says how many.
    """
    from latenttracer.intervals import auc_delong, stratified_bootstrap, wilson

    b = _scores(belonging, "belonging")
    nb = _scores(non_belonging, "non-belonging")
    y, ranks = _labels_and_ranks(b, nb)
    fpr, tpr, _ = roc_curve(y, ranks, drop_intermediate=False)
    nan = float("nan")

    acc = bacc = t_tpr = t_fpr = None
    acc_ci = bacc_ci = tpr_ci = fpr_ci = (None, None)
    if threshold is not None:
        threshold = float(threshold)
        if math.isnan(threshold):
            raise ValueError("threshold is NaN")
        predicted = (np.concatenate([b, nb]) <= threshold).astype(int)
        acc = float(accuracy_score(y, predicted))
        bacc = float(balanced_accuracy_score(y, predicted))
        tp, fp = int(np.sum(b <= threshold)), int(np.sum(nb <= threshold))
        t_tpr = tp / b.size
        t_fpr = fp / nb.size
        if intervals:
            acc_ci = wilson(tp + nb.size - fp, b.size + nb.size, level)
            tpr_ci = wilson(tp, b.size, level)
            fpr_ci = wilson(fp, nb.size, level)
        else:
            acc_ci = bacc_ci = tpr_ci = fpr_ci = (nan, nan)

    auc = float(roc_auc_score(y, ranks))
    if intervals:
        _, *auc_ci = auc_delong(b, nb, level)
        lo, hi = stratified_bootstrap(lambda rb, rnb: resampled_detection_stats(rb, rnb, threshold), b, nb,
                                      n_boot=n_boot, seed=seed, level=level, vectorized=True)
        boot = list(zip(lo.tolist(), hi.tolist()))
        if threshold is not None:
            bacc_ci = boot[3]
    else:
        auc_ci = (nan, nan)
        boot = [(nan, nan)] * 3

    return DetectionMetrics(
        auc=auc, auc_lo=auc_ci[0], auc_hi=auc_ci[1],
        ap=float(average_precision_score(y, ranks)), ap_lo=boot[0][0], ap_hi=boot[0][1],
        tpr_at_1fpr=_tpr_at_fpr(fpr, tpr, 0.01), tpr_at_1fpr_lo=boot[1][0], tpr_at_1fpr_hi=boot[1][1],
        tpr_at_5fpr=_tpr_at_fpr(fpr, tpr, 0.05), tpr_at_5fpr_lo=boot[2][0], tpr_at_5fpr_hi=boot[2][1],
        threshold=threshold,
        accuracy=acc, accuracy_lo=acc_ci[0], accuracy_hi=acc_ci[1],
        balanced_accuracy=bacc, balanced_accuracy_lo=bacc_ci[0], balanced_accuracy_hi=bacc_ci[1],
        tpr=t_tpr, tpr_lo=tpr_ci[0], tpr_hi=tpr_ci[1],
        fpr=t_fpr, fpr_lo=fpr_ci[0], fpr_hi=fpr_ci[1],
        n_belonging=int(b.size),
        n_non_belonging=int(nb.size),
    )
