"""What a faster option buys against the authors' full run: verdicts, image-steps, AUC and wall time (study helpers).

An *option* is an inversion config (a faster schedule, early exit, or both) with its own threshold, calibrated on
the same calibration images as the authors' run. Per inspected model and evaluation set it is compared with the
authors' full run (100 steps, threshold at the target TPR of the calibration scores):

* ``agreement``: fraction of evaluation images whose verdict (score <= threshold) equals the authors' full run's;
  ``agreement_schedule``: the same against the option's own schedule run to the end (what early exit alone costs);
* ``image_steps_fraction``: mean scored iterations per image / the authors' step count;
* ``auc``: pooled ROC AUC of the option's scores (own evaluation images vs every other source);
* ``speedup``: wall time of the authors' full run / the option's, timed in one process on the same images
  (:func:`time_inversions`).

Early-exit scores are replayed from full-run trajectories (:func:`latenttracer.early_exit.replay_frame`), which is
what the loop computes (``tests/test_early_exit.py``); the timed runs check it on their images
(``live_mismatches``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch

from latenttracer.autoencoders import Autoencoder
from latenttracer.inversion import InversionConfig, InversionResult, invert
from latenttracer.metrics import detection_metrics

__all__ = ["compare", "pooled_auc", "time_inversions", "timing_subset"]


def pooled_auc(scores: Sequence[float], belonging: Sequence[bool]) -> float:
    """ROC AUC of ``scores`` (lower = belonging) for the ``belonging`` images against all others."""
    s, b = np.asarray(scores, dtype=float), np.asarray(belonging, dtype=bool)
    return float(detection_metrics(s[b], s[~b]).auc)


def compare(*, authors_scores: Sequence[float], authors_threshold: float, schedule_scores: Sequence[float],
            schedule_threshold: float, scores: Sequence[float], steps_run: Sequence[int],
            belonging: Sequence[bool], authors_steps: int) -> dict:
    """One option (its ``scores``, verdict ``score <= schedule_threshold``) against the authors' full run and
    against its own schedule's full run (module docstring)."""
    a = np.asarray(authors_scores, dtype=float) <= float(authors_threshold)
    s = np.asarray(schedule_scores, dtype=float) <= float(schedule_threshold)
    o = np.asarray(scores, dtype=float) <= float(schedule_threshold)
    return {"agreement": float(np.mean(o == a)), "agreement_schedule": float(np.mean(o == s)),
            "image_steps_fraction": float(np.mean(steps_run)) / float(authors_steps),
            "tpr": float(np.mean(o[np.asarray(belonging, dtype=bool)])),
            "fpr": float(np.mean(o[~np.asarray(belonging, dtype=bool)])),
            "auc": pooled_auc(scores, belonging)}


def timing_subset(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``size`` of ``range(n)``, seeded, in order (all of them when ``size >= n``)."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:size])


def time_inversions(ae: Autoencoder, images: torch.Tensor,
                    configs: Mapping[str, InversionConfig]) -> dict[str, tuple[float, list[InversionResult]]]:
    """Wall seconds and results of inverting ``images`` with each config, in one batch each, one after the other
    in this process (a one-step warm-up first, so the first timing pays no start-up cost)."""
    first = next(iter(configs.values()))
    invert(ae, images[:1], replace(first, steps=1, early_exit=False, exit_ratios=None))
    out = {}
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        results = _one_batch(ae, images, cfg)
        out[name] = (time.perf_counter() - t0, results)
    return out


def _one_batch(ae: Autoencoder, images: torch.Tensor, cfg: InversionConfig) -> list[InversionResult]:
    return invert(ae, images, replace(cfg, batch_size=max(1, images.shape[0]), record_trajectory=False,
                                      record_latent=False))
