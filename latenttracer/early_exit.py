"""Early-exit bounds: learnt from calibration trajectories, saved, applied to an :class:`InversionConfig`, replayed.

The loop (:mod:`latenttracer.inversion`) stops an image at scored iteration ``k`` when its running minimum is
``<= t`` (belonging; exact) or above ``b_k = margin * ratio_k * t`` (non-belonging). This module learns the
ratios from full-run trajectories of calibration images (images known to belong):

    ratio_k = max over calibration images of  running_min_k / final score      (>= 1; the last one is 1)

A calibration image whose full-run verdict is belonging (score ``s <= t``) has ``running_min_k <= ratio_k * s
<= ratio_k * t <= b_k`` at every step, so the bound never rejects it early (:func:`rejected_early` checks it).
Images not seen in calibration have no such guarantee: ``margin`` (>= 1) buys room for them.

**Early accept** is the mirror image, learnt from images known *not* to belong (other generators' images, real
photos: ``negatives``) and the calibration images the full run rejects. An image leaves as belonging at step
``k`` once its running minimum is ``< max(t, a_k * t / accept_margin)``, where

    a_k = min over those rejected images of  running_min_k / t      (> 1: each ends above t)

so none of them would have been accepted early (:func:`accepted_early` checks it). A bound below ``t`` adds
nothing: the exact exit takes those images first.

**Trend** (``trend`` b > 0, :func:`~latenttracer.inversion.exit_statistic`): both ratios are learnt, and the
bounds applied, on ``s_k = m_k * (m_k / m_floor(k/2)) ** b`` instead of the running minimum ``m_k``: the same
guarantees hold on the images learnt from, and an image that is still falling fast is judged by where it is
heading. The exact exit still compares ``m_k``. The accept bound needs images
the model did not make: its own calibration images alone make it unsafe (they improve long after a negative has
flattened), so :func:`learn_bounds` learns it only when ``negatives`` are given.

    bounds = learn_bounds(calibration_trajectories, target_tpr=0.95)   # threshold at 95% TPR, ratios
    bounds.save("bounds.json"); bounds = ExitBounds.load("bounds.json")
    cfg = bounds.apply(InversionConfig(), margin=1.5)                   # early_exit on, t and ratios set
    score, exit_step, exit = replay(trajectory, cfg)                    # what the loop does, from a full trajectory
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latenttracer import atomic
from latenttracer.inversion import EXIT_CODES, InversionConfig, accept_bounds, exit_bounds, exit_codes, exit_statistic
from latenttracer.metrics import calibrate_threshold

__all__ = ["ExitBounds", "accepted_early", "learn_accept_ratios", "learn_bounds", "learn_ratios", "rejected_early",
           "replay", "replay_frame", "running_min", "statistics"]


def running_min(trajectory: Sequence[float]) -> np.ndarray:
    """The running minimum of a loss trajectory (what the ``min`` strategy scores after each iteration)."""
    return np.minimum.accumulate(np.asarray(trajectory, dtype=float))


def statistics(mins: np.ndarray, trend: float = 0.0) -> np.ndarray:
    """:func:`~latenttracer.inversion.exit_statistic` at every step of stacked running minima (images x steps),
    computed as the loop computes it (float32)."""
    if not trend:
        return np.asarray(mins, dtype=float)
    history = torch.tensor(np.asarray(mins), dtype=torch.float32)
    return torch.stack([exit_statistic(history, k, trend) for k in range(history.shape[1])], 1).double().numpy()


def learn_ratios(trajectories: Sequence[Sequence[float]], threshold: float | None = None,
                 trend: float = 0.0) -> tuple[float, ...]:
    """``ratio_k = max_i running_min_i[k] / final_i`` over full-run trajectories of equal length (>= 1 each; of the
    trend statistic instead with ``trend``, which may be below 1).

    With ``threshold`` (tighter, the default of :func:`learn_bounds`): ``ratio_k = max running_min_i[k] /
    threshold`` over the images a bound at step ``k`` could wrongly reject only: those whose full run is belonging
    (``final <= threshold``) and that are still above the threshold at step ``k`` (once below it, an image has
    left by the exact rule); a step with none gets ratio 1 (bound ``margin * threshold``). Either way no
    calibration image that the full run calls belonging is above ``ratio_k * threshold`` while it is still running.

    A trajectory whose final score is 0 makes its ratios infinite (no bound rejects anything); a non-finite
    value is an error (a failed image has no trajectory to learn from: leave it out). ``trend``: the ratios of the
    trend statistic (module docstring) instead of the running minimum's.
    """
    mins = [running_min(t) for t in trajectories]
    if not mins:
        raise ValueError("early exit: no calibration trajectories to learn bounds from")
    stacked = _stacked(mins, "calibration")
    stat = statistics(stacked, trend)
    final = stacked[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(final > 0, stat / np.where(final > 0, final, 1.0), math.inf)
    if threshold is not None:
        pending = (final <= threshold) & (stacked > threshold)
        highest = np.where(pending, stat / threshold, -math.inf).max(0)
        return tuple(float(r) if r > -math.inf else 1.0 for r in highest)  # none pending: the bound margin * t
    return tuple(float(r) for r in ratios.max(0))


def _stacked(mins: list[np.ndarray], what: str) -> np.ndarray:
    lengths = {m.size for m in mins}
    if len(lengths) != 1:
        raise ValueError(f"early exit: {what} trajectories differ in length ({sorted(lengths)}): learn from "
                         "full runs of one schedule")
    stacked = np.stack(mins)
    if not np.isfinite(stacked).all():
        raise ValueError(f"early exit: a {what} trajectory has a non-finite loss (leave failed images out)")
    return stacked


def learn_accept_ratios(trajectories: Sequence[Sequence[float]], threshold: float,
                        trend: float = 0.0) -> tuple[float, ...]:
    """``a_k = min running_min_i[k] / threshold`` over the full-run trajectories whose final score is above
    ``threshold`` (the rejected ones; others are ignored): the accept bound's ratios (module docstring). Each is
    > 1, so an image below ``a_k * threshold`` at step ``k`` is lower than every rejected image was there.
    ``trend``: of the trend statistic instead (module docstring; a ratio may then be below 1)."""
    if not float(threshold) > 0:
        raise ValueError(f"early accept: needs a positive threshold, got {threshold!r}")
    mins = [running_min(t) for t in trajectories]
    stacked = _stacked(mins, "negative") if mins else np.zeros((0, 0))
    rejected = stacked[stacked[:, -1] > threshold] if stacked.size else stacked
    if not len(rejected):
        raise ValueError("early accept: no image above the threshold to learn the accept bound from (give images "
                         "the model did not make: --negatives, or the other generators' calibration sets)")
    return tuple(float(r) for r in statistics(rejected, trend).min(0) / float(threshold))


@dataclass(frozen=True)
class ExitBounds:
    """A threshold and per-step ratios learnt from calibration; ``apply`` turns them into loop settings."""

    threshold: float
    ratios: tuple[float, ...]
    n_calibration: int = 0
    config_hash: str = ""  # the inversion settings the trajectories came from (a check on load/apply)
    accept_ratios: tuple[float, ...] | None = None  # early accept (module docstring); None: not learnt
    n_negatives: int = 0   # known-negative trajectories the accept ratios were learnt from (besides calibration)
    trend: float = 0.0     # the statistic both ratios are of (module docstring); applied with them

    def bounds(self, margin: float = 1.0) -> np.ndarray:
        """``b_k = margin * ratio_k * threshold``."""
        return np.asarray(self.ratios, dtype=float) * float(margin) * float(self.threshold)

    def apply(self, config: InversionConfig, margin: float | None = None, exact_only: bool = False,
              accept_margin: float | None = None) -> InversionConfig:
        """``config`` with early exit on: this threshold, these ratios (none with ``exact_only``), ``margin``; the
        accept ratios too when learnt and ``accept_margin`` is given (early accept is then on); this ``trend``.

        Raises ValueError when the ratios were learnt under other inversion settings than ``config``'s, or for
        another trend than a ``config.exit_trend`` other than 0.
        """
        if self.config_hash and self.config_hash != _schedule_hash(config):
            raise ValueError("early exit: these bounds were learnt from trajectories of other inversion settings "
                             f"(hash {self.config_hash}, this config {_schedule_hash(config)}); learn them again")
        if config.exit_trend and not exact_only and float(config.exit_trend) != float(self.trend):
            raise ValueError(f"early exit: these bounds were learnt for exit_trend {self.trend:g}, the config asks "
                             f"for {config.exit_trend:g}; learn them again with it")
        accept = not exact_only and accept_margin is not None
        if accept and self.accept_ratios is None:
            raise ValueError("early accept: these bounds have no accept ratios (learn them with negatives)")
        return dataclasses.replace(config, early_exit=True, exit_threshold=float(self.threshold),
                                   exit_ratios=None if exact_only else tuple(self.ratios),
                                   exit_margin=config.exit_margin if margin is None else float(margin),
                                   exit_accept_ratios=tuple(self.accept_ratios) if accept else None,
                                   exit_accept_margin=float(accept_margin) if accept else config.exit_accept_margin,
                                   exit_trend=0.0 if exact_only else float(self.trend))

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "ratios": list(self.ratios), "n_calibration": self.n_calibration,
                "config_hash": self.config_hash,
                "accept_ratios": None if self.accept_ratios is None else list(self.accept_ratios),
                "n_negatives": self.n_negatives, "trend": self.trend}

    def save(self, path: str | Path) -> Path:
        return atomic.write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ExitBounds:
        try:
            data = json.loads(Path(path).read_text())
            accept = data.get("accept_ratios")
            return cls(threshold=float(data["threshold"]), ratios=tuple(float(r) for r in data["ratios"]),
                       n_calibration=int(data.get("n_calibration", 0)), config_hash=str(data.get("config_hash", "")),
                       accept_ratios=None if accept is None else tuple(float(r) for r in accept),
                       n_negatives=int(data.get("n_negatives", 0)), trend=float(data.get("trend", 0.0)))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"early-exit bounds file {path}: cannot read it ({type(err).__name__}: {err})") from err


def _schedule_hash(config: InversionConfig) -> str:
    """The settings a trajectory depends on (early exit off, so the hash is the full run's)."""
    return dataclasses.replace(config, early_exit=False, exit_threshold=None, exit_ratios=None,
                               exit_accept_ratios=None, exit_trend=0.0).hash()


def learn_bounds(trajectories: Sequence[Sequence[float]], threshold: float | None = None, target_tpr: float = 0.95,
                 config: InversionConfig | None = None, pending_only: bool = True,
                 negatives: Sequence[Sequence[float]] | None = None, trend: float | None = None) -> ExitBounds:
    """Bounds from full-run trajectories of calibration images (one list of losses per image).

    The threshold is ``threshold`` if given, else the calibration rule at ``target_tpr`` on the trajectories'
    minima (:func:`~latenttracer.metrics.calibrate_threshold`: the scores a full run gives). ``config``: the
    settings the trajectories were made with (recorded, checked by :meth:`ExitBounds.apply`). ``pending_only``:
    learn each step's ratio only from the images a bound there could wrongly reject (:func:`learn_ratios`).
    ``negatives``: full-run trajectories of images known not to belong (same schedule): the accept ratios are
    learnt from them and the calibration images the threshold rejects (:func:`learn_accept_ratios`). ``trend``:
    the statistic's (module docstring; default ``config.exit_trend``, else 0).
    """
    if threshold is None:
        threshold = calibrate_threshold([float(np.min(t)) for t in trajectories], target_tpr)
    if trend is None:
        trend = float(config.exit_trend) if config is not None else 0.0
    ratios = learn_ratios(trajectories, float(threshold) if pending_only else None, trend)
    accept = (None if negatives is None else
              learn_accept_ratios([*negatives, *trajectories], float(threshold), trend))
    return ExitBounds(threshold=float(threshold), ratios=ratios, n_calibration=len(trajectories),
                      config_hash=_schedule_hash(config) if config is not None else "", accept_ratios=accept,
                      n_negatives=0 if negatives is None else len(negatives), trend=float(trend))


def replay(trajectory: Sequence[float], config: InversionConfig) -> tuple[float, int | None, str]:
    """What the loop with ``config`` (early exit on) gives an image whose full-run trajectory is ``trajectory``:
    (score, exit step or None, exit kind ``""``/``"threshold"``/``"bound"``). Same rule as the loop
    (:func:`~latenttracer.inversion.exit_codes`); exact because an image's trajectory does not depend on its
    batch mates."""
    if not config.early_exit:
        raise ValueError("replay: the config has early_exit off")
    mins = torch.tensor(running_min(trajectory), dtype=torch.float32)
    bounds, accept = exit_bounds(config), accept_bounds(config)
    trend = float(config.exit_trend)
    for k in range(mins.numel() - 1):  # the last scored iteration ends the run anyway
        stat = exit_statistic(mins[None], k, trend) if trend else None
        code = int(exit_codes(mins[k:k + 1], k, float(config.exit_threshold), bounds, accept, stat)[0])
        if code:
            return float(mins[k]), k, EXIT_CODES[code]
    return float(mins[-1]), None, ""


def replay_frame(trajectories: Sequence[Sequence[float]], config: InversionConfig) -> dict[str, np.ndarray]:
    """:func:`replay` for many trajectories: arrays ``score``, ``steps_run``, ``exit``. Trajectories of one length
    are replayed together, one step at a time over the images still running (the same rule, :func:`exit_codes`;
    equal to :func:`replay` per trajectory, ``tests/test_early_exit.py``)."""
    if not config.early_exit:
        raise ValueError("replay: the config has early_exit off")
    n = len(trajectories)
    score, steps_run = np.zeros(n), np.zeros(n, dtype=int)
    exit_kind = np.full(n, "", dtype=object)
    by_length: dict[int, list[int]] = {}
    for i, t in enumerate(trajectories):
        by_length.setdefault(len(t), []).append(i)
    bounds, accept = exit_bounds(config), accept_bounds(config)
    for length, rows in by_length.items():
        mins = torch.tensor(np.stack([running_min(trajectories[i]) for i in rows]), dtype=torch.float32)
        running = torch.ones(len(rows), dtype=torch.bool)
        done_at = np.full(len(rows), length - 1)  # the last scored iteration ends the run anyway
        for k in range(length - 1):
            if not running.any():
                break
            idx = torch.nonzero(running).flatten()
            stat = exit_statistic(mins[idx], k, float(config.exit_trend)) if config.exit_trend else None
            codes = exit_codes(mins[idx, k], k, float(config.exit_threshold), bounds, accept, stat)
            for j, code in zip(idx[codes > 0].tolist(), codes[codes > 0].tolist()):
                done_at[j] = k
                exit_kind[rows[j]] = EXIT_CODES[int(code)]
            running[idx[codes > 0]] = False
        for j, i in enumerate(rows):
            score[i] = float(mins[j, done_at[j]])
            steps_run[i] = done_at[j] + 1
    return {"score": score, "steps_run": steps_run, "exit": exit_kind}


def rejected_early(trajectories: Sequence[Sequence[float]], config: InversionConfig) -> list[int]:
    """Indices of trajectories whose full run is belonging (min <= t) but which a bound would reject early."""
    return [i for i, t in enumerate(trajectories)
            if float(np.min(t)) <= float(config.exit_threshold) and replay(t, config)[2] == "bound"]


def accepted_early(trajectories: Sequence[Sequence[float]], config: InversionConfig) -> list[int]:
    """Indices of trajectories whose full run is non-belonging (min > t) but which the accept bound would accept."""
    return [i for i, t in enumerate(trajectories)
            if float(np.min(t)) > float(config.exit_threshold) and replay(t, config)[2] == "accept"]
