"""A two-stage cascade: a fast *screen* schedule decides the clear images, the *verdict* schedule the rest.

Early exit alone (:mod:`latenttracer.early_exit`) keeps the verdicts of the schedule it runs. A faster schedule
(e.g. ``inversion=fast_rms``, 25 steps) with early exit costs less, but its verdicts differ from the authors' on
images near the threshold. The cascade routes exactly those images to the verdict schedule (by default the
authors' 100 steps):

1. **Screen**: the screen schedule with early exit. An image whose running minimum falls to ``low`` is
   belonging; one above ``margin * ratio_k * high`` at scored step ``k`` (ratios learnt from the calibration
   images' screen trajectories against ``high``, :func:`latenttracer.early_exit.learn_ratios`), or whose final
   screen score is above ``high``, is not. The rest (final screen score in ``(low, high]``) form the *band*.
2. **Verdict**: the band images run the verdict schedule from the start, with its own early exit (its
   threshold ``t`` and learnt bounds). Its verdict is final, so a band image gets the verdict schedule's verdict
   (up to the learnt bound's rejections, as with early exit alone).

The band is learnt from calibration images (known to come from the inspected model) scored to the end by both
schedules: ``t`` is the verdict schedule's threshold at the target TPR; then

    low  = min screen score of the calibration images the verdict schedule rejects (score > t) / band_margin
    high = max screen score of the calibration images it accepts (score <= t)              * band_margin

(``low`` is at most ``high``; with no rejected calibration image, ``low`` is the screen's own threshold at the
target TPR). So on the calibration images the screen never decides against the verdict schedule: every image on
which it would is in the band. ``band_margin`` (>= 1) widens the band for images not seen in calibration: more
images go to the verdict schedule, fewer verdicts differ from it, more steps are spent.

    cascade = learn_cascade(screen_trajectories, verdict_trajectories, target_tpr=0.95, band_margin=1.1,
                            screen=screen_config, verdict=verdict_config)
    results = run_cascade(ae, images, cascade, screen_config, verdict_config)          # live
    frame = replay_cascade(screen_trajectories_eval, verdict_trajectories_eval, cascade, screen_config,
                           verdict_config)                                             # from full-run trajectories

A cascade has no single score scale (the screen's and the verdict schedule's losses differ), so its output is a
verdict per image, with the score of the stage that decided it (``stage``) and the steps both stages ran.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from latenttracer.early_exit import ExitBounds, learn_bounds, learn_ratios, replay_frame
from latenttracer.inversion import InversionConfig, InversionResult, invert
from latenttracer.metrics import calibrate_threshold

__all__ = ["DEFAULT_BAND_MARGIN", "Cascade", "CascadeResult", "learn_cascade", "replay_cascade", "run_cascade"]

STAGES = ("screen", "verdict")
DEFAULT_BAND_MARGIN = 1.1  # learn_cascade's and `trace --cascade`'s default widening of the band


@dataclass(frozen=True)
class Cascade:
    """The screen's band ``(low, high]`` and bound ratios (against ``high``), and the verdict schedule's bounds."""

    low: float
    high: float
    screen_ratios: tuple[float, ...]
    verdict: ExitBounds
    band_margin: float = 1.0
    n_calibration: int = 0
    screen_hash: str = ""  # the screen settings the trajectories came from (checked by screen_config)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high) and 0 < self.low <= self.high):
            raise ValueError(f"cascade: the band must satisfy 0 < low <= high, got low={self.low!r}, "
                             f"high={self.high!r}")

    def screen_config(self, config: InversionConfig) -> InversionConfig:
        """``config`` (the screen schedule) with early exit: exact exit at ``low``, bound ``margin * ratio_k *
        high`` (the loop's bound is relative to its threshold, so the ratios are scaled by ``high / low``)."""
        if self.screen_hash and self.screen_hash != _schedule_hash(config):
            raise ValueError("cascade: this band was learnt from trajectories of other screen settings; learn it "
                             "again")
        scale = self.high / self.low
        return dataclasses.replace(config, early_exit=True, exit_threshold=float(self.low),
                                   exit_ratios=tuple(float(r) * scale for r in self.screen_ratios))

    def verdict_config(self, config: InversionConfig) -> InversionConfig:
        """``config`` (the verdict schedule) with early exit at its threshold and learnt bounds."""
        return self.verdict.apply(config)

    def screen_decision(self, score: float, exit: str) -> bool | None:
        """The screen's verdict on an image (True/False), or None when it is in the band."""
        if exit == "threshold" or score <= self.low:
            return True
        if exit == "bound" or score > self.high:
            return False
        return None

    def verdict_decision(self, score: float) -> bool:
        """The verdict schedule's verdict on a band image (its score against its threshold)."""
        return bool(score <= self.verdict.threshold)


def _schedule_hash(config: InversionConfig) -> str:
    return dataclasses.replace(config, early_exit=False, exit_threshold=None, exit_ratios=None).hash()


def _minima(trajectories: Sequence[Sequence[float]]) -> np.ndarray:
    return np.array([float(np.min(t)) for t in trajectories])


def learn_cascade(screen_trajectories: Sequence[Sequence[float]], verdict_trajectories: Sequence[Sequence[float]],
                  *, target_tpr: float = 0.95, threshold: float | None = None, band_margin: float = DEFAULT_BAND_MARGIN,
                  screen: InversionConfig | None = None, verdict: InversionConfig | None = None) -> Cascade:
    """The cascade learnt from full-run trajectories of the same calibration images under both schedules (one
    list of losses per image, in the same order). ``threshold``: the verdict schedule's, if known; else the
    calibration rule at ``target_tpr`` on the verdict scores. ``screen``/``verdict``: the settings the
    trajectories came from (recorded and checked when the cascade is applied). Module docstring for the rule."""
    if len(screen_trajectories) != len(verdict_trajectories):
        raise ValueError(f"cascade: {len(screen_trajectories)} screen trajectories but {len(verdict_trajectories)} "
                         "verdict trajectories (one of each per calibration image)")
    if not (isinstance(band_margin, (int, float)) and not isinstance(band_margin, bool) and band_margin >= 1):
        raise ValueError(f"cascade.band_margin: must be a number >= 1, got {band_margin!r}")
    verdict_bounds = learn_bounds(verdict_trajectories, threshold=threshold, target_tpr=target_tpr, config=verdict)
    t = verdict_bounds.threshold
    s_screen, s_verdict = _minima(screen_trajectories), _minima(verdict_trajectories)
    accepted = s_verdict <= t
    if not accepted.any():
        raise ValueError(f"cascade: the verdict schedule accepts none of the {len(s_verdict)} calibration images "
                         f"at threshold {t:.4g}; nothing to learn the band from")
    high = float(s_screen[accepted].max()) * float(band_margin)
    if (~accepted).any():
        low = float(s_screen[~accepted].min()) / float(band_margin)
    else:
        low = float(calibrate_threshold(s_screen, target_tpr))
    low = min(low, high)
    return Cascade(low=low, high=high, screen_ratios=learn_ratios(screen_trajectories, high),
                   verdict=verdict_bounds, band_margin=float(band_margin), n_calibration=len(s_screen),
                   screen_hash=_schedule_hash(screen) if screen is not None else "")


@dataclass(frozen=True)
class CascadeResult:
    """One image through the cascade: its verdict, the score of the stage that decided it, and the cost."""

    belonging: bool | None  # None: failed (a non-finite loss in the stage that ran)
    stage: str              # "screen" or "verdict"
    score: float
    exit: str               # the deciding stage's early exit: "threshold", "bound" or "" (ran to the end)
    screen_score: float
    steps_run: int          # scored iterations, both stages together
    status: str = "ok"
    reason: str = ""
    screen_steps: int = 0   # of which the screen's


def _stage_two(cascade: Cascade, score: float, exit: str, screen_score: float, screen_steps: int,
               steps: int, status: str = "ok", reason: str = "") -> CascadeResult:
    verdict = None if status != "ok" else cascade.verdict_decision(score)
    return CascadeResult(verdict, "verdict", score, exit, screen_score, screen_steps + steps, status, reason,
                         screen_steps)


def run_cascade(ae, images: torch.Tensor, cascade: Cascade, screen: InversionConfig, verdict: InversionConfig,
                invert_fn: Callable[..., list[InversionResult]] = invert) -> list[CascadeResult]:
    """Both stages on ``images`` ((N, 3, H, W) in [0, 1]): the screen on every image, the verdict schedule on the
    band images only. ``screen``/``verdict``: the schedules (early exit is switched on here, from ``cascade``).
    ``invert_fn(ae, images, config)``: how a stage runs (default: :func:`~latenttracer.inversion.invert`)."""
    first = invert_fn(ae, images, cascade.screen_config(screen))
    out: list[CascadeResult | None] = [None] * len(first)
    band = []
    for i, r in enumerate(first):
        if r.status != "ok":
            out[i] = CascadeResult(None, "screen", r.score, r.exit, r.score, r.steps_run, r.status, r.reason,
                                   r.steps_run)
            continue
        decision = cascade.screen_decision(r.score, r.exit)
        if decision is None:
            band.append(i)
        else:
            out[i] = CascadeResult(decision, "screen", r.score, r.exit, r.score, r.steps_run, screen_steps=r.steps_run)
    if band:
        second = invert_fn(ae, images[band], cascade.verdict_config(verdict))
        for i, r in zip(band, second):
            out[i] = _stage_two(cascade, r.score, r.exit, first[i].score, first[i].steps_run, r.steps_run,
                                r.status, r.reason)
    return out  # type: ignore[return-value]


def replay_cascade(screen_trajectories: Sequence[Sequence[float]], verdict_trajectories: Sequence[Sequence[float]],
                   cascade: Cascade, screen: InversionConfig, verdict: InversionConfig) -> dict[str, np.ndarray]:
    """What :func:`run_cascade` gives images whose full-run trajectories under both schedules are these (exact:
    an image's trajectory does not depend on its batch mates; :func:`latenttracer.early_exit.replay`). Arrays
    ``belonging``, ``stage``, ``score``, ``exit``, ``screen_score``, ``steps_run`` (both stages), ``screen_steps``."""
    if len(screen_trajectories) != len(verdict_trajectories):
        raise ValueError("replay_cascade: one screen and one verdict trajectory per image")
    first = replay_frame(screen_trajectories, cascade.screen_config(screen))
    second = replay_frame(verdict_trajectories, cascade.verdict_config(verdict))
    rows = []
    for i in range(len(screen_trajectories)):
        s, e, k = float(first["score"][i]), str(first["exit"][i]), int(first["steps_run"][i])
        decision = cascade.screen_decision(s, e)
        if decision is None:
            rows.append(_stage_two(cascade, float(second["score"][i]), str(second["exit"][i]), s, k,
                                   int(second["steps_run"][i])))
        else:
            rows.append(CascadeResult(decision, "screen", s, e, s, k, screen_steps=k))
    return {"belonging": np.array([r.belonging for r in rows], dtype=bool),
            "stage": np.array([r.stage for r in rows], dtype=object),
            "score": np.array([r.score for r in rows]), "exit": np.array([r.exit for r in rows], dtype=object),
            "screen_score": np.array([r.screen_score for r in rows]),
            "steps_run": np.array([r.steps_run for r in rows]),
            "screen_steps": np.array([r.screen_steps for r in rows])}
