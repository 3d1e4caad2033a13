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

    The threshold-dependent fields are ``None`` when no threshold was given.
    """

    auc: float
    ap: float
    tpr_at_1fpr: float
    tpr_at_5fpr: float
    threshold: float | None
    accuracy: float | None
    balanced_accuracy: float | None
    tpr: float | None
    fpr: float | None
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


def detection_metrics(belonging, non_belonging, threshold: float | None = None) -> DetectionMetrics:
    """ROC AUC, average precision and TPR at 1% / 5% FPR; with ``threshold``, also the rates at that rule.

    - AUC and AP come from :func:`sklearn.metrics.roc_auc_score` and
      :func:`sklearn.metrics.average_precision_score` on ``-score`` with belonging as the positive class.
    - TPR at FPR ``f`` is the highest TPR among the ROC points (every distinct threshold) whose FPR is at most
      ``f``: the best operating point that does not exceed that false-positive rate, without interpolation.
    - At ``threshold`` an image belongs iff ``score <= threshold``; ``accuracy = (TP + TN) / (P + N)``,
      ``balanced_accuracy = (TPR + TNR) / 2``.

    Raises:
        ValueError: either set is empty, or has NaN (or infinite) scores; the message says how many.
    """
    b = _scores(belonging, "belonging")
    nb = _scores(non_belonging, "non-belonging")
    y, ranks = _labels_and_ranks(b, nb)
    fpr, tpr, _ = roc_curve(y, ranks, drop_intermediate=False)

    acc = bacc = t_tpr = t_fpr = None
    if threshold is not None:
        threshold = float(threshold)
        if math.isnan(threshold):
            raise ValueError("threshold is NaN")
        predicted = (np.concatenate([b, nb]) <= threshold).astype(int)
        acc = float(accuracy_score(y, predicted))
        bacc = float(balanced_accuracy_score(y, predicted))
        t_tpr = float(np.mean(b <= threshold))
        t_fpr = float(np.mean(nb <= threshold))

    return DetectionMetrics(
        auc=float(roc_auc_score(y, ranks)),
        ap=float(average_precision_score(y, ranks)),
        tpr_at_1fpr=_tpr_at_fpr(fpr, tpr, 0.01),
        tpr_at_5fpr=_tpr_at_fpr(fpr, tpr, 0.05),
        threshold=threshold,
        accuracy=acc,
        balanced_accuracy=bacc,
        tpr=t_tpr,
        fpr=t_fpr,
        n_belonging=int(b.size),
        n_non_belonging=int(nb.size),
    )
