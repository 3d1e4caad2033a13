"""A reference AUC computed pair by pair, independently of latenttracer.metrics (shared by the study tests)."""

from __future__ import annotations

import numpy as np


def pairwise_auc(belonging: np.ndarray, non_belonging: np.ndarray) -> float:
    """AUC with lower score = belonging: the fraction of (belonging, non-belonging) pairs in which the belonging
    image scores lower, ties counting half (computed pair by pair, independently of latenttracer.metrics)."""
    pairs = [(b < n) + 0.5 * (b == n) for b in belonging for n in non_belonging]
    return float(np.mean(pairs))
