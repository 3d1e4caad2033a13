"""The Table 1 protocol: named image sets + a scoring function -> per-image score frames and calibrated cells.

Inputs are plain path lists, named by source (how they are made is not this module's business)::

    sets = {"kl-a": {"calibration": [...], "evaluation": [...]},   # one entry per model of the suite
            "kl-b": {...}, ...,
            "real": {"evaluation": [...]}}                          # non-belonging only

* Each model's own set is split once (:func:`split`) into a calibration and an evaluation split; the split depends
  only on the set size and :class:`SplitSettings`.
* For an inspected model I: its calibration split sets the threshold (``calibrate``; by default the score at
  ``target_tpr`` of it, :func:`latenttracer.metrics.calibrate_threshold`); its evaluation split is the belonging
  class; the evaluation split of every other source S is the non-belonging class of cell (I, S) (the same images
  for every inspected model), and the real set is the cell (I, real). The cell (I, all) pools every non-belonging
  image.

A *scorer* is any callable ``score(inspected, paths) -> DataFrame`` giving one row per path with at least
``path``, ``score`` (lower = more belonging) and ``status`` (``ok`` or ``failed``); ``init_loss`` (a baseline
score, e.g. LatentTracer's step-0 loss), ``best_step``, ``reason``, ``sha256``, ``cached`` and ``trajectory`` are
carried into the score frame when present. :func:`invert_paths` is LatentTracer's: inversion through the shared
:class:`~latenttracer.store.ResultStore`; each job claims the images it computes (:func:`score_once`), so parallel
jobs never compute the same thing twice and jobs with different images (Table 1's shards) never wait for each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from latenttracer.autoencoders import Autoencoder
from latenttracer.images import ImageOptions
from latenttracer.intervals import auc_delong, auc_difference
from latenttracer.inversion import InversionConfig
from latenttracer.locks import locked
from latenttracer.metrics import calibrate_threshold, detection_metrics, split_calibration
from latenttracer.store import ResultStore
from latenttracer.tracing import run_hash, score_images

__all__ = ["ALL", "REAL", "SCORE_COLUMNS", "SPLITS", "Calibrator", "ImageSets", "Scorer", "SplitSettings",
           "cell_metrics", "evaluate", "flat_metrics", "grid_images", "image_rows", "invert_paths", "score_once",
           "set_rows", "split", "subset", "truncate"]

log = logging.getLogger(__name__)

SPLITS = ("calibration", "evaluation")
REAL = "real"
ALL = "all"
SCORE_COLUMNS = ["inspected", "source", "split", "path", "sha256", "score", "init_loss", "best_step", "status",
                 "reason", "cached", "trajectory"]
"""Columns of the per-image score frame that :func:`evaluate` returns (those the scorer provides)."""

ImageSets = Mapping[str, Mapping[str, Sequence[str | Path]]]
"""``{source: {"calibration": [paths], "evaluation": [paths]}}``; the real set has only ``evaluation``."""
Scorer = Callable[[str, Sequence[str]], pd.DataFrame]
"""``score(inspected, paths)`` -> one row per scored path (see the module docstring)."""
Calibrator = Callable[[pd.Series], float]
"""Scores of the inspected model's own calibration images -> its threshold (belonging iff ``score <= t``)."""


@dataclass(frozen=True)
class SplitSettings:
    """How each model's own set is split and its threshold set (the defaults are the authors' protocol)."""

    calibration_fraction: float = 0.5
    seed: int = 0
    target_tpr: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 < float(self.calibration_fraction) < 1.0:
            raise ValueError(f"split.calibration_fraction: must be in (0, 1), got {self.calibration_fraction!r}")
        if not 0.0 < float(self.target_tpr) <= 1.0:
            raise ValueError(f"split.target_tpr: must be in (0, 1], got {self.target_tpr!r}")


# -- image sets -------------------------------------------------------------------------------------------------
def subset(paths: Sequence[Path], n: int, seed: int) -> list[Path]:
    """A seeded random subset of ``n`` paths, in their original order (all of them when there are fewer)."""
    if n >= len(paths):
        return list(paths)
    keep = np.sort(np.random.default_rng(seed).permutation(len(paths))[:n])
    return [paths[i] for i in keep]


def split(paths: Sequence[Path], settings: SplitSettings = SplitSettings()) -> dict[str, list[Path]]:
    """A model's own set -> {"calibration": [...], "evaluation": [...]} (deterministic in the set size and seed)."""
    calibration, evaluation = split_calibration(len(paths), float(settings.calibration_fraction), int(settings.seed))
    return {"calibration": [paths[i] for i in calibration], "evaluation": [paths[i] for i in evaluation]}


def image_rows(source: str, split: str, paths: Sequence[str | Path]) -> pd.DataFrame:
    """(source, split, path) rows, one per path."""
    return pd.DataFrame({"source": source, "split": split, "path": [str(p) for p in paths]})


def set_rows(source: str, parts: Mapping[str, Sequence[str | Path]]) -> pd.DataFrame:
    """One named set as (source, split, path) rows, its parts in :data:`SPLITS` order."""
    return pd.concat([image_rows(source, p, parts[p]) for p in SPLITS if p in parts], ignore_index=True)


def grid_images(sets: ImageSets, inspected: str) -> pd.DataFrame:
    """Every image the grid needs for one inspected model: (source, split, path) rows.

    Its own set (both splits), every other source's evaluation split, and the real set (as ``evaluation``).
    """
    if inspected not in sets:
        raise KeyError(f"inspected model {inspected!r} has no image set (sets: {list(sets)})")
    frames = [image_rows(source, name, sets[source][name]) for source in sets
              for name in (SPLITS if source == inspected else ("evaluation",))]
    return pd.concat(frames, ignore_index=True)


# -- scoring ----------------------------------------------------------------------------------------------------
def truncate(frame: pd.DataFrame, steps: int, strategy: str = "min") -> pd.DataFrame:
    """Rows of a longer run cut to what a ``steps``-step run scores: its first ``max(steps, 1)`` iterations.

    Exact: iteration i of a run depends only on iterations before it (the learning-rate schedule depends only on
    the step index), so a longer run's first iterations are the shorter run's. An image whose loss turned
    non-finite within those iterations is failed, as it would have been in the short run; one that failed only
    later is ``ok``.
    """
    n = max(int(steps), 1)
    out = frame.copy()
    scores, best, status, reasons, trajectories = [], [], [], [], []
    for traj, old_reason in zip(out["trajectory"], out["reason"]):
        t = np.asarray(traj, dtype=float)
        if t.size < n:
            raise ValueError(f"trajectory of {t.size} steps cannot give a {n}-step run")
        t = t[:n]
        bad = np.flatnonzero(~np.isfinite(t))
        trajectories.append(t)
        if bad.size:  # as the engine: the best step before the first failure, no score
            scores.append(np.nan)
            best.append(int(np.argmin(t[:bad[0]])) if bad[0] else 0)
            status.append("failed")
            reasons.append(old_reason or f"non-finite loss at step {int(bad[0])}")
        else:
            k = int(np.argmin(t)) if strategy == "min" else n - 1
            scores.append(float(t[k]))
            best.append(k)
            status.append("ok")
            reasons.append("")
    out["score"], out["best_step"], out["status"], out["reason"] = scores, best, status, reasons
    out["trajectory"] = trajectories
    return out.drop(columns=["best_latent"], errors="ignore")  # the long run's latent is not the cut run's


def invert_paths(ae: Autoencoder, paths: Sequence[str | Path], config: InversionConfig, *,
                store: ResultStore | None, image_options: ImageOptions = ImageOptions(),
                trajectory_steps: int | None = None, on_bad_image: str = "error",
                progress: bool = True) -> pd.DataFrame:
    """LatentTracer's scores of ``paths`` against ``ae`` through ``store``; one row per scored path.

    With a store, the images are scored through :func:`score_once`: a second job given the same images waits and
    then finds them cached, while jobs given different images (Table 1's shards) run side by side. With
    ``trajectory_steps`` >= ``config.steps``, the images are inverted with ``trajectory_steps`` steps (cached) and
    cut with :func:`truncate`: one long run serves every shorter step count.
    Skipped images (``on_bad_image="skip"``) are logged and absent from the result.
    """
    if trajectory_steps is not None and int(trajectory_steps) > config.steps and not config.cuttable:
        raise ValueError(f"inversion.schedule={config.schedule!r} depends on the step count: a {trajectory_steps}-step "
                         f"run cannot be cut to {config.steps} steps; run {config.steps} steps")
    if trajectory_steps is not None and int(trajectory_steps) >= config.steps:
        long = dataclasses.replace(config, steps=int(trajectory_steps))
        frame = invert_paths(ae, paths, long, store=store, image_options=image_options, on_bad_image=on_bad_image,
                            progress=progress)
        return truncate(frame, config.steps, config.strategy)

    def run(chosen: list[str]) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
        return score_images(ae, chosen, config, store=store, image_options=image_options, on_bad_image=on_bad_image,
                            progress=progress, desc=f"{ae.name} ({config.steps} steps)")

    if store is None:
        frame, skipped = run([str(p) for p in paths])
    else:
        frame, skipped = score_once(store.root / ".locks" / f"{ae.name}-{run_hash(ae, config, image_options)}",
                                    [str(p) for p in paths], run)
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    return frame


Run = Callable[[list[str]], tuple[pd.DataFrame, list[tuple[str, str]]]]
"""``run(paths)`` -> (one row per scored path, [(path, reason) skipped]), e.g.
:func:`~latenttracer.tracing.score_images` through a store (it computes only what the store lacks)."""


def score_once(lock: str | os.PathLike, paths: Sequence[str], run: Run) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """``run(paths)`` with parallel jobs (processes, SLURM tasks on a shared disk) never running one path at once.

    ``lock`` names one (model, run hash) of a store. Each job claims the paths that no live job has claimed (a
    claim file under ``<lock>.claims/``, held under an advisory lock while the job computes them), computes those,
    then waits for the jobs holding the rest and runs them too (``run`` takes them from the store: the other job
    wrote them; whatever a crashed job left undone is claimed and computed then). Jobs with disjoint paths, as
    Table 1's shards of one model, thus run side by side; until this, one lock per (model, run hash) made them run
    one after the other. Returns the rows in the order of ``paths``.
    """
    lock = Path(lock)
    claims = lock.with_name(lock.name + ".claims")
    claims.mkdir(parents=True, exist_ok=True)
    pending = list(dict.fromkeys(str(p) for p in paths))
    frames, skipped = [], []
    while pending:
        with _claim(lock.with_name(lock.name + ".lock"), claims, pending) as (mine, others):
            if mine:
                frame, bad = run(mine)
                frames.append(frame)
                skipped.extend(bad)
        if others:
            t0 = time.perf_counter()
            for fh in others:  # returns when that job has finished (or died): its claim is released
                with fh:
                    fcntl.flock(fh, fcntl.LOCK_SH)
            log.info("waited %.1fs for %d parallel job(s) scoring %d of these images", time.perf_counter() - t0,
                     len(others), len(pending) - len(mine))
        done = set(mine)
        pending = [p for p in pending if p not in done]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return run([])[0], skipped
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    order = {p: i for i, p in enumerate(str(p) for p in paths)}
    rank = frame["path"].astype(str).map(order).fillna(len(order)).to_numpy()
    return frame.iloc[np.argsort(rank, kind="stable")].reset_index(drop=True), skipped


@contextlib.contextmanager
def _claim(lock: Path, claims: Path, paths: list[str]) -> Iterator[tuple[list[str], list]]:
    """Claim the ``paths`` no live job holds; yield (claimed paths, open claim files of the jobs holding the rest).

    A claim file lists absolute paths; it is live while its job holds an exclusive lock on it, and one nobody
    holds (its job ended or died) is removed. Claims are made under ``lock``, so two jobs never claim one path;
    this job's claim is released on leaving the block.
    """
    others, taken = [], set()
    own = claims / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.json"
    fh = None
    with locked(lock):
        for path in sorted(claims.glob("*.json")):
            try:
                other = open(path)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # a live job's claim
                held = set(json.loads(other.read() or "[]"))
                if any(os.path.abspath(p) in held for p in paths):
                    taken |= held
                    others.append(other)
                else:
                    other.close()
                continue
            other.close()  # nobody holds it: its job is gone
            path.unlink(missing_ok=True)
        mine = [p for p in paths if os.path.abspath(p) not in taken]
        if mine:
            fh = open(own, "w")
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(json.dumps([os.path.abspath(p) for p in mine]))
            fh.flush()
    try:
        yield mine, others
    finally:
        if fh is not None:
            own.unlink(missing_ok=True)
            fh.close()  # releases the claim


# -- the grid ---------------------------------------------------------------------------------------------------
def cell_metrics(scores: pd.DataFrame, inspected: str, sources: Sequence[str], target_tpr: float = 0.95,
                 calibrate: Calibrator | None = None) -> list[dict]:
    """Detection metrics of one inspected model against each source (and all of them pooled).

    ``scores``: (source, split, score, status[, init_loss]) rows of the inspected model's grid. The threshold is
    ``calibrate(calibration scores)``, by default :func:`~latenttracer.metrics.calibrate_threshold` at
    ``target_tpr``. ``auc_step0`` is the AUC of the ``init_loss`` column (NaN without one), and
    ``auc_gain_over_step0`` the AUC minus it on the same images, with DeLong's paired interval
    (:func:`latenttracer.intervals.auc_difference`).
    """
    ok = scores[scores["status"] == "ok"]
    failed = scores[scores["status"] != "ok"]
    own = ok[ok["source"] == inspected]
    calibration = own.loc[own["split"] == "calibration", "score"]
    belonging = own.loc[own["split"] == "evaluation", "score"]
    if calibration.empty or belonging.empty:
        raise ValueError(f"inspected model {inspected!r}: no scored calibration or evaluation images of its own")
    threshold = calibrate_threshold(calibration, target_tpr) if calibrate is None else float(calibrate(calibration))
    own_eval = own[own["split"] == "evaluation"]
    baseline = "init_loss" in scores and bool(scores["init_loss"].notna().any())
    rows = []
    for source in [*sources, ALL]:
        chosen = list(sources) if source == ALL else [source]
        mask = ok["source"].isin(chosen) & (ok["split"] == "evaluation")
        try:
            metrics = detection_metrics(belonging, ok.loc[mask, "score"], threshold)
        except ValueError as err:
            raise ValueError(f"cell (inspected {inspected!r}, source {source!r}): {err}") from err
        n_failed = int((failed["source"].isin([*chosen, inspected])).sum())
        # Baseline from the same rows: the step-0 loss alone (plain encode/decode error, AEROBLADE-like L2).
        step0 = auc_delong(own_eval["init_loss"], ok.loc[mask, "init_loss"]) if baseline else (np.nan,) * 3
        # What the optimisation adds: AUC minus step-0 AUC on the same images, DeLong's paired interval.
        gain = (auc_difference(own_eval["score"], ok.loc[mask, "score"], own_eval["init_loss"],
                               ok.loc[mask, "init_loss"]) if baseline else (np.nan,) * 3)
        rows.append({"inspected": inspected, "source": source, **metrics.as_dict(), "n_failed": n_failed,
                     "auc_step0": step0[0], "auc_step0_lo": step0[1], "auc_step0_hi": step0[2],
                     "auc_gain_over_step0": gain[0], "auc_gain_over_step0_lo": gain[1],
                     "auc_gain_over_step0_hi": gain[2],
                     "median_belonging": float(belonging.median()),
                     "median_non_belonging": float(ok.loc[mask, "score"].median())})
    return rows


def evaluate(sets: ImageSets, inspected: Sequence[str], score: Scorer, target_tpr: float = 0.95,
             calibrate: Calibrator | None = None,
             extra_columns: Sequence[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score the grid of each ``inspected`` model with ``score`` and compute its cells.

    Returns (cells: one row per (inspected, source) incl. ``all``; per-image scores: :data:`SCORE_COLUMNS`, plus
    the scorer's ``extra_columns`` where it gives them, e.g. a method's per-image components).
    Sources are the keys of ``sets`` in their order; for an inspected model, every source but itself.
    """
    cells, scores = [], []
    for name in inspected:
        images = grid_images(sets, name)
        frame = score(name, images["path"].tolist())
        merged = images.merge(frame.drop(columns=[c for c in ("source", "split") if c in frame]), on="path",
                              how="left", validate="one_to_one")
        merged.insert(0, "inspected", name)
        keep = [*SCORE_COLUMNS, *[c for c in extra_columns if c not in SCORE_COLUMNS]]
        scores.append(merged[[c for c in keep if c in merged]])
        sources = [s for s in sets if s != name]
        cells.extend(cell_metrics(merged, name, sources, target_tpr, calibrate))
        log.info("%s: AUC (all sources pooled) %.4f", name, cells[-1]["auc"])
    return pd.DataFrame(cells), pd.concat(scores, ignore_index=True)


def flat_metrics(cells: pd.DataFrame, prefix: str,
                 metrics: Sequence[str] = ("auc", "ap", "tpr_at_1fpr", "tpr_at_5fpr", "accuracy",
                                           "balanced_accuracy", "threshold")) -> dict[str, float]:
    """``{prefix/inspected/source/metric: value}`` for logging (missing and NaN values left out)."""
    return {f"{prefix}/{r['inspected']}/{r['source']}/{m}": r[m] for _, r in cells.iterrows() for m in metrics
            if r.get(m) is not None and not (isinstance(r[m], float) and np.isnan(r[m]))}
