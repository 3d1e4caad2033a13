"""Early exit with a stated guarantee: a conformal exit rule learnt from calibration trajectories.

The loop (:mod:`latenttracer.inversion`) stops an image at scored iteration ``k`` when its running minimum ``m_k``
is ``<= t`` (belonging: exact, the minimum only falls) or above ``bound_k * t`` (not belonging). This module learns
``bound_k`` so that, for the model's own images, the chance of a **wrong early rejection** (an image stopped as not
belonging that the full run would call belonging) is at most the **risk** ``alpha``:

* ``t`` is the calibrated threshold; the ``n`` calibration images whose full run ends belonging (``min <= t``) all
  take part (no split);
* ``a_ik = m_ik / t``; the bound's shape is ``b_k = median over the n images of a_ik``;
* each image gets the score ``s_i = max a_ik / lo_ik`` over the steps at which it is still pending (``m_ik > t``, not
  the last step: the steps a bound could stop it wrongly at), where ``lo_ik`` is the median of the other ``n - 1``
  images' ``a_.k`` and a zero: the smallest value the median of "the others and one more image" can take;
* ``q`` is the ``ceil((n + 1)(1 - alpha))``-th smallest of the ``n`` scores, infinite when that rank exceeds ``n``
  (then nothing exits from above: ``alpha >= 1 / (n + 1)`` is what ``n`` images allow);
* ``bound_k = q * b_k``.

**Guarantee.** Let a new own image be exchangeable with the calibration images that end belonging (drawn the same
way from the same model) and end belonging itself. Score all ``n + 1`` images symmetrically, each against the
median of the other ``n``: the new image's score is exactly ``max a_k / b_k`` (its others are the calibration
images), and the bound stops it wrongly iff that score exceeds ``q``. A calibration image's symmetric score uses a
median that includes the new image, which is at least ``lo_ik``, so ``s_i`` is at least its symmetric score and ``q``
at least the symmetric ``q``. By exchangeability the new image's score is above the symmetric ``q`` with probability
at most ``alpha`` (the conformal rank argument), so ``P(wrong early rejection) <= alpha``, whatever the model and the
shape. Every belonging calibration image scores (a split would halve them): ``n`` images allow ``alpha >= 1/(n+1)``.
It is a guarantee on average over calibration draws, for images like the calibration images (not for perturbed ones
unless the calibration had perturbed copies). It says nothing about non-own images: a bound can only reject, so it
can only change the verdict of a non-own image the full run wrongly accepts. ``t`` is learnt from the same
calibration images (``trace --calibrate``); the argument is exact for a ``t`` fixed beforehand, and
``results/early_exit.csv`` measures the wrong-exit rate with ``t`` learnt (``wrong_exit_rate`` and its interval).

    policy = learn_exit_policy(calibration_trajectories, threshold=t, risk=0.03, config=cfg)
    policy.allows()                       # "50 calibration images, 47 end belonging: risk >= 0.0208 ..."
    fast = policy.apply(cfg)              # early_exit on, t and the bound set: what the loop runs
    score, exit_step, exit = replay(trajectory, fast)     # what the loop does, from a full-run trajectory
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
from latenttracer.inversion import EXIT_CODES, InversionConfig, exit_bounds, exit_codes

__all__ = ["DEFAULT_RISK", "ExitPolicy", "conformal_rank", "learn_exit_policy", "min_risk", "rejected_early",
           "replay", "replay_frame", "running_min", "wrong_exits"]

DEFAULT_RISK = 0.03
"""``trace --early-exit``'s risk: the largest of 0.02, 0.03, 0.05, 0.1 at which every seed-0 zoo model keeps 99% of
the full run's verdicts (``results/early_exit.csv``, suite ``zoo``); held out: both fresh zoo draws, the eight
CelebA VAEs and taef2 (``docs/deployment.md``). With 50 calibration images (about 47 end belonging) it is the
largest score: the bound sits above every calibration image's trajectory."""


def running_min(trajectory: Sequence[float]) -> np.ndarray:
    """The running minimum of a loss trajectory (what the ``min`` strategy scores after each iteration)."""
    return np.minimum.accumulate(np.asarray(trajectory, dtype=float))


def _stacked(trajectories: Sequence[Sequence[float]]) -> np.ndarray:
    mins = [running_min(t) for t in trajectories]
    if not mins:
        raise ValueError("early exit: no calibration trajectories to learn the exit rule from")
    lengths = {m.size for m in mins}
    if len(lengths) != 1:
        raise ValueError(f"early exit: calibration trajectories differ in length ({sorted(lengths)}): learn from "
                         "full runs of one schedule")
    stacked = np.stack(mins)
    if not np.isfinite(stacked).all():
        raise ValueError("early exit: a calibration trajectory has a non-finite loss (leave failed images out)")
    return stacked


def conformal_rank(n: int, risk: float) -> int:
    """``ceil((n + 1)(1 - risk))``: the rank of ``q`` among ``n`` scores (``> n``: ``q`` is infinite)."""
    return math.ceil((n + 1) * (1 - risk) - 1e-12)


def min_risk(n: int) -> float:
    """The smallest risk at which ``n`` scores give a finite ``q``: ``1 / (n + 1)``."""
    return 1.0 / (n + 1)


def _check_risk(risk: float) -> float:
    if isinstance(risk, bool) or not (isinstance(risk, (int, float)) and 0 < risk < 1):
        raise ValueError(f"early exit: the risk must be a number in (0, 1), got {risk!r}")
    return float(risk)


@dataclass(frozen=True)
class ExitPolicy:
    """The exit rule learnt from calibration: threshold ``t`` and per-step bound ``bound[k]`` (in units of ``t``;
    ``None``: the exact exit only); ``apply`` turns it into loop settings."""

    threshold: float
    risk: float
    bound: tuple[float, ...] | None
    n_calibration: int = 0  # calibration trajectories given
    n_scores: int = 0       # calibration images that end belonging: the shape and the scores (the conformal sample)
    q: float = math.inf
    config_hash: str = ""   # the inversion settings the trajectories came from (checked by apply)

    def allows(self) -> str:
        """One line: what the calibration set allows."""
        lo = min_risk(self.n_scores)
        head = (f"{self.n_calibration} calibration images, {self.n_scores} end belonging: risk >= {lo:.3g} for any "
                "exit from above")
        if self.bound is None:
            return head + (f"; at risk {self.risk:g} only the exact exit (below the threshold) is used: give more "
                           "calibration images or a larger risk")
        return head + f"; at risk {self.risk:g} the bound is q = {self.q:.4g} x the shape"

    def apply(self, config: InversionConfig) -> InversionConfig:
        """``config`` with early exit on at this threshold and bound. Raises ValueError when the trajectories came
        from other inversion settings than ``config``'s."""
        if self.config_hash and self.config_hash != schedule_hash(config):
            raise ValueError("early exit: this rule was learnt from trajectories of other inversion settings "
                             f"(hash {self.config_hash}, this config {schedule_hash(config)}); learn it again")
        return dataclasses.replace(config, early_exit=True, exit_threshold=float(self.threshold),
                                   exit_ratios=self.bound)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["bound"] = None if self.bound is None else list(self.bound)
        out["q"] = None if math.isinf(self.q) else self.q
        return out

    def save(self, path: str | Path) -> Path:
        return atomic.write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ExitPolicy:
        try:
            data = json.loads(Path(path).read_text())
            bound = data["bound"]
            return cls(threshold=float(data["threshold"]), risk=_check_risk(data["risk"]),
                       bound=None if bound is None else tuple(float(b) for b in bound),
                       n_calibration=int(data["n_calibration"]),
                       n_scores=int(data["n_scores"]), q=math.inf if data["q"] is None else float(data["q"]),
                       config_hash=str(data.get("config_hash", "")))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"early-exit rule file {path}: cannot read it ({type(err).__name__}: {err})") from err


def schedule_hash(config: InversionConfig) -> str:
    """The settings a full-run trajectory depends on (early exit off)."""
    return dataclasses.replace(config, early_exit=False, exit_threshold=None, exit_ratios=None).hash()


def _pending(mins: np.ndarray, threshold: float) -> np.ndarray:
    """Where each image is still running and a bound could stop it: above ``t`` and before the last step."""
    pending = mins > threshold
    pending[:, -1] = False
    return pending


def scores(belonging: np.ndarray, threshold: float) -> np.ndarray:
    """``s_i = max a_ik / lo_ik`` over each row's pending steps (``-inf`` where none): ``belonging``, the running
    minima of the calibration images that end belonging (one row each); ``lo_ik``, the median of the other rows'
    ``a_.k`` and a zero (module docstring)."""
    a = belonging / float(threshold)
    pending = _pending(belonging, threshold)
    out = np.full(len(a), -math.inf)
    for i in range(len(a)):
        others = np.vstack([np.delete(a, i, axis=0), np.zeros((1, a.shape[1]))])
        lo = np.maximum(np.median(others, axis=0), 1e-12)
        if pending[i].any():
            out[i] = float(np.max((a[i] / lo)[pending[i]]))
    return out


def learn_exit_policy(trajectories: Sequence[Sequence[float]], threshold: float, risk: float = DEFAULT_RISK,
                      config: InversionConfig | None = None) -> ExitPolicy:
    """The exit rule (module docstring) from full-run trajectories of calibration images (one list of losses per
    image, every one of the same schedule). ``threshold``: the calibrated ``t``; ``risk``: ``alpha``; ``config``: the
    settings the trajectories were made with (recorded, checked by :meth:`ExitPolicy.apply`)."""
    risk = _check_risk(risk)
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"early exit: needs a positive finite threshold, got {threshold!r}")
    mins = _stacked(trajectories)
    belonging = mins[mins[:, -1] <= threshold]
    n = len(belonging)
    common = {"threshold": float(threshold), "risk": risk, "n_calibration": len(mins), "n_scores": n,
              "config_hash": schedule_hash(config) if config is not None else ""}
    rank = conformal_rank(n, risk)
    if not n or rank > n:
        return ExitPolicy(bound=None, **common)
    shape = np.maximum(np.median(belonging / float(threshold), axis=0), 1e-12)
    q = float(np.sort(scores(belonging, threshold))[rank - 1])
    # a bound at or below t stops every pending image (the exact exit goes first): 1 says the same, and stays > 0
    bound = np.maximum(q * shape, 1.0) if q > -math.inf else np.ones_like(shape)
    bound[-1] = math.inf  # the last scored step ends the run anyway
    return ExitPolicy(bound=tuple(float(b) for b in bound), q=q, **common)


def replay(trajectory: Sequence[float], config: InversionConfig) -> tuple[float, int | None, str]:
    """What the loop with ``config`` (early exit on) gives an image whose full-run trajectory is ``trajectory``:
    (score, exit step or None, exit kind ``""``/``"threshold"``/``"bound"``); :func:`replay_frame` for one."""
    out = replay_frame([trajectory], config)
    kind = str(out["exit"][0])
    return float(out["score"][0]), (int(out["steps_run"][0]) - 1 if kind else None), kind


def replay_frame(trajectories: Sequence[Sequence[float]], config: InversionConfig) -> dict[str, np.ndarray]:
    """What the loop with ``config`` (early exit on) gives each full-run trajectory: arrays ``score``,
    ``steps_run``, ``exit``. The same rule as the loop (:func:`~latenttracer.inversion.exit_codes`, in float32);
    exact because an image's trajectory does not depend on its batch mates (``tests/test_early_exit.py``)."""
    if not config.early_exit:
        raise ValueError("replay: the config has early_exit off")
    n = len(trajectories)
    score, steps_run = np.zeros(n), np.zeros(n, dtype=int)
    exit_kind = np.full(n, "", dtype=object)
    by_length: dict[int, list[int]] = {}
    for i, t in enumerate(trajectories):
        by_length.setdefault(len(t), []).append(i)
    bounds = exit_bounds(config)
    for length, rows in by_length.items():
        mins = torch.tensor(np.stack([running_min(trajectories[i]) for i in rows]), dtype=torch.float32)
        done_at = np.full(len(rows), length - 1)  # the last scored iteration ends the run anyway
        running = np.ones(len(rows), dtype=bool)
        for k in range(length - 1):
            codes = exit_codes(mins[:, k], k, float(config.exit_threshold), bounds).numpy()
            new = running & (codes > 0)
            done_at[new] = k
            for j in np.flatnonzero(new):
                exit_kind[rows[j]] = EXIT_CODES[int(codes[j])]
            running &= ~new
            if not running.any():
                break
        for j, i in enumerate(rows):
            score[i] = float(mins[j, done_at[j]])
            steps_run[i] = done_at[j] + 1
    return {"score": score, "steps_run": steps_run, "exit": exit_kind}


def wrong_exits(trajectories: Sequence[Sequence[float]], config: InversionConfig) -> tuple[int, int]:
    """(wrong early rejections, images at risk): among the trajectories whose full run is belonging
    (``min <= t``), how many the bound stops, and how many there are."""
    at_risk = [t for t in trajectories if float(np.min(t)) <= float(config.exit_threshold)]
    if not at_risk:
        return 0, 0
    return int(np.sum(replay_frame(at_risk, config)["exit"] == "bound")), len(at_risk)


def rejected_early(trajectories: Sequence[Sequence[float]], config: InversionConfig) -> list[int]:
    """Indices of trajectories whose full run is belonging (min <= t) but which the bound stops early."""
    exits = replay_frame(trajectories, config)["exit"]
    return [i for i, t in enumerate(trajectories)
            if float(np.min(t)) <= float(config.exit_threshold) and exits[i] == "bound"]
