"""Early exit and faster schedules against the authors' full run, per inspected model -> results/early_exit.*

    python -m experiments.early_exit                               # the authors' schedule (inversion=paper)
    python -m experiments.early_exit inversion=fast_rms               # a faster schedule: its rows are added
    python -m experiments.early_exit debug=default                  # a smoke run

Per inspected model (Table 1's protocol, :mod:`latenttracer.protocol`): the calibration half of its own set gives
the threshold (target TPR) and the early-exit bounds (:func:`latenttracer.early_exit.learn_bounds`) from full-run
trajectories of the schedule under test; the evaluation images (its own evaluation half = belonging, every other
source's evaluation half and the real set = non-belonging) are scored. Rows (:mod:`latenttracer.deployment`):

* ``full``: the schedule run to the end (for ``paper`` this is the authors' run itself);
* ``exact``: early exit on the threshold alone (verdicts equal the schedule's full run);
* ``early_exit``: threshold and learnt bounds at ``inversion.exit_margin``;
* ``cascade`` (a schedule other than the authors', with ``cascade_band_margin`` set): this schedule screens with
  early exit and the images in its learnt band run the authors' schedule with early exit
  (:mod:`latenttracer.cascade`; ``band_margin`` column; the screen's bounds at ``inversion.exit_margin``, the
  verdict stage's at ``cascade_verdict_margin``, by default the same: ``verdict_margin`` column). Its
  output is a verdict per image, so its ``auc_early_exit`` is empty;
* ``early_accept`` (with ``accept_margin`` set): ``early_exit`` plus the accept bound
  (:func:`latenttracer.early_exit.learn_accept_ratios`) learnt from this schedule's full runs of the other
  generators' calibration halves (known negatives, no evaluation image) and the calibration images the threshold
  rejects, at ``accept_margin`` (column of the same name). An accepted image's verdict is belonging although its
  score is above the threshold (:func:`latenttracer.inversion.verdict`).

With ``inversion.exit_trend`` b > 0 the learnt bounds of the ``early_exit``, ``early_accept`` and ``cascade`` rows
(its screen's) judge the running minimum carried forward by its recent fall
(:func:`latenttracer.inversion.exit_statistic`): column ``trend`` (empty for ``full`` and ``exact``, which have
no learnt bound).

Scores come from the shared store (computed if missing, with trajectories); early-exit results are replayed from
the trajectories and checked live on ``timing_images`` evaluation images, which also give the wall-clock speed-up
(all configs timed in this process, one after the other). Rows are merged into ``<out>.csv`` by (inspected,
schedule, steps, lr, halve_every, mode, margin, band_margin, verdict_margin, accept_margin, trend) under a lock and the
Markdown is rebuilt from it (:class:`~latenttracer.studies.base.Merge`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import MISSING

from data_gen import zoo
from latenttracer import protocol, tables
from latenttracer.cascade import learn_cascade, replay_cascade, run_cascade
from latenttracer.deployment import compare, pooled_auc, time_cascade, time_inversions, timing_subset
from latenttracer.early_exit import accepted_early, learn_bounds, rejected_early, replay_frame
from latenttracer.images import load_images
from latenttracer.inversion import InversionConfig, verdict
from latenttracer.metrics import calibrate_threshold
from latenttracer.studies.base import STUDIES, Context, Merge, MergedStudy, ReportSection, StudyResult

log = logging.getLogger(__name__)

KEY = ("inspected", "schedule", "steps", "lr", "halve_every", "mode", "margin", "band_margin", "verdict_margin",
       "accept_margin", "trend")
COLUMNS = [*KEY, "agreement", "image_steps_fraction", "speedup", "auc_full",
           "auc_early_exit", "auc_authors", "agreement_schedule", "tpr", "fpr", "threshold", "n_evaluation",
           "n_calibration", "calibration_rejected_early", "n_timed", "seconds_authors", "seconds", "live_mismatches",
           "machine_speed", "n_band", "screen_steps_fraction", "disagreements"]


@dataclass
class EarlyExitConfig:
    inspected: list[str] | None = None  # names in suite.models; null: every model of the suite
    timing_images: int = 48             # evaluation images per inspected model timed live
    timing_seed: int = 0                # which evaluation images are timed
    cascade_band_margin: float | None = None  # cascade rows with this band margin (>= 1); null: none
    cascade_verdict_margin: float | None = None  # the cascade's verdict-stage exit margin (>= 1); null: the screen's
    accept_margin: float | None = None  # an `early_accept` row at this accept margin (>= 1); null: none
    out: str = MISSING                  # publishes <out>.{md,csv}


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"]


@dataclass(frozen=True)
class Inspected:
    """One inspected model as the deployment studies measure it (Table 1's protocol): its decoder, its own
    calibration half, the evaluation images (its own evaluation half, every other source's and the real set), the
    schedule under test (the ``inversion`` node, its rate made absolute on the calibration half) and the authors'
    schedule at the same device, dtype and batch size."""

    ae: Any
    calibration: list[str]
    evaluation: pd.DataFrame  # source, split, path
    schedule: InversionConfig
    authors: InversionConfig
    target_tpr: float


def inspected(cfg: Any, ctx: Context, name: str, sets: dict, ae: Any = None) -> Inspected:
    """:class:`Inspected` for model ``name`` of ``sets``; ``ae``: its decoder when already loaded."""
    spec = ctx.model_spec(name)
    ae = ctx.load_model(spec) if ae is None else ae
    grid = protocol.grid_images(sets, name)
    calibration = grid.loc[(grid["source"] == name) & (grid["split"] == "calibration"), "path"].tolist()
    # lr_scale=latent_rms is resolved on the model's calibration half: the rows show the absolute rate it ran at
    schedule = ctx.resolved(ae, ctx.inversion_config(dtype=spec.dtype, early_exit=False), calibration)
    authors = InversionConfig(device=str(cfg.device), dtype=str(spec.dtype), batch_size=schedule.batch_size)
    return Inspected(ae, calibration, grid[grid["split"] == "evaluation"].reset_index(drop=True), schedule, authors,
                     float(ctx.split_settings().target_tpr))


def measure(cfg: Any, ctx: Context, name: str, sets: dict, schedule: str, speed: float, ae: Any = None) -> list[dict]:
    """The rows of one inspected model (module docstring); ``ae``: its decoder when already loaded."""
    model = inspected(cfg, ctx, name, sets, ae)
    ae, calibration, evaluation = model.ae, model.calibration, model.evaluation
    inv, authors, tpr = model.schedule, model.authors, model.target_tpr

    # A schedule that is the authors' cut short is read from the authors' cached runs (exact: protocol.truncate).
    cut = inv.steps <= authors.steps and replace(inv, steps=authors.steps).hash() == authors.hash()

    def scored(config: InversionConfig, paths: list) -> pd.DataFrame:
        long = authors.steps if cut and config.steps < authors.steps else None
        return ctx.invert_paths(ae, paths, config, trajectory_steps=long).set_index("path")

    cal = _ok(scored(inv, calibration))
    cal_authors = _ok(scored(authors, calibration))
    t = calibrate_threshold(cal["score"], tpr)
    t_authors = calibrate_threshold(cal_authors["score"], tpr)
    bounds = learn_bounds(cal["trajectory"].tolist(), threshold=t, config=inv)
    ev = scored(inv, evaluation["path"].tolist())
    ev_authors = scored(authors, evaluation["path"].tolist())
    ok = [p for p in evaluation["path"] if ev.loc[p, "status"] == "ok" and ev_authors.loc[p, "status"] == "ok"]
    if len(ok) < len(evaluation):
        log.warning("%s: %d evaluation image(s) failed in a full run; left out", name, len(evaluation) - len(ok))
    sources = evaluation.set_index("path").loc[ok, "source"].to_numpy()
    belonging = sources == name
    trajectories = ev.loc[ok, "trajectory"].tolist()
    full_scores, authors_scores = ev.loc[ok, "score"].to_numpy(float), ev_authors.loc[ok, "score"].to_numpy(float)
    margin = float(inv.exit_margin)
    options = {"full": None, "exact": bounds.apply(inv, margin=margin, exact_only=True),
               "early_exit": bounds.apply(inv, margin=margin)}
    accept_margin = margin_or_none(cfg, "accept_margin")
    negatives = pd.DataFrame(columns=["trajectory", "score"])
    if accept_margin is not None:  # known negatives: the other generators' calibration halves (no evaluation image)
        negatives = _ok(scored(inv, known_negatives(sets, name)))
        accepting = learn_bounds(cal["trajectory"].tolist(), threshold=t, config=inv,
                                 negatives=negatives["trajectory"].tolist())
        options["early_accept"] = accepting.apply(inv, margin=margin, accept_margin=accept_margin)

    # Wall time, in this process, on a seeded subset of the evaluation images; the live runs check the replay.
    subset = timing_subset(len(ok), int(cfg.timing_images), int(cfg.timing_seed))
    images, _, _ = load_images([ok[i] for i in subset], ae.resolution, ctx.image_options())
    configs = {"authors": authors, **{m: c for m, c in options.items() if c is not None}}
    if inv.hash() != authors.hash():
        configs["full"] = inv
    timed = time_inversions(ae, images, configs)
    timed.setdefault("full", timed["authors"])  # the authors' schedule: its full run is the authors' run
    band_margin = cfg.cascade_band_margin
    verdict_margin = verdict_exit_margin(cfg, margin)
    verdict_cfg = replace(authors, exit_margin=verdict_margin)  # the cascade's second stage: the authors', exiting
    if band_margin is not None and inv.hash() != authors.hash():
        both = [p for p in cal.index if p in cal_authors.index]
        cascade = learn_cascade(cal.loc[both, "trajectory"].tolist(), cal_authors.loc[both, "trajectory"].tolist(),
                                threshold=t_authors, band_margin=float(band_margin), screen=inv,
                                verdict=verdict_cfg)
        log.info("%s cascade: band (%.4g, %.4g], verdict threshold %.4g, from %d calibration images", name,
                 cascade.low, cascade.high, cascade.verdict.threshold, len(both))
        timed["cascade"] = time_cascade(ae, images, lambda x, c: run_cascade(ae, x, cascade, inv, verdict_cfg, c))
        options["cascade"] = cascade

    rows = []
    for mode, option in options.items():
        verdicts, n_band, screen_steps = None, 0, np.nan
        if option is None:
            scores, steps_run = full_scores, np.full(len(ok), inv.scored_steps)
        elif mode == "cascade":
            replayed = replay_cascade(trajectories, ev_authors.loc[ok, "trajectory"].tolist(), option, inv,
                                      verdict_cfg)
            scores, verdicts, steps_run = None, replayed["belonging"], replayed["steps_run"]
            n_band = int(np.sum(replayed["stage"] == "verdict"))
            screen_steps = float(np.mean(replayed["screen_steps"]))
        else:
            replayed = replay_frame(trajectories, option)
            scores, steps_run = replayed["score"], replayed["steps_run"]
            verdicts = np.array([verdict(s, e, t) for s, e in zip(scores, replayed["exit"])])
        seconds, live = timed[mode]
        live_verdicts = np.array([r.belonging if mode == "cascade" else verdict(r.score, r.exit, t) for r in live])
        live_mismatches = int(np.sum(live_verdicts != (verdicts if verdicts is not None else scores <= t)[subset]))
        rows.append({
            "inspected": name, "schedule": schedule, "mode": mode,
            "margin": margin if mode in ("early_exit", "cascade", "early_accept") else 1.0,
            "band_margin": float(band_margin) if mode == "cascade" else np.nan, "n_band": n_band,
            "verdict_margin": verdict_margin if mode == "cascade" else np.nan,
            "accept_margin": accept_margin if mode == "early_accept" else np.nan,
            "trend": float(inv.exit_trend) if mode in ("early_exit", "cascade", "early_accept") else np.nan,
            "screen_steps_fraction": screen_steps / authors.scored_steps,
            "disagreements": disagreements(verdicts if verdicts is not None else scores <= t,
                                            authors_scores <= t_authors, sources),
            "steps": inv.steps, "lr": inv.lr, "halve_every": inv.halve_every,
            **compare(authors_scores=authors_scores, authors_threshold=t_authors, schedule_scores=full_scores,
                      schedule_threshold=t, scores=scores, verdicts=verdicts, steps_run=steps_run,
                      belonging=belonging, authors_steps=authors.scored_steps),
            "speedup": timed["authors"][0] / seconds, "auc_authors": np.nan, "threshold": t, "n_evaluation": len(ok),
            "n_calibration": len(cal),
            "calibration_rejected_early": _rejected_early(mode, option, cal, cal_authors, inv, verdict_cfg,
                                                          negatives)
            if mode in ("early_exit", "cascade", "early_accept") else 0,
            "n_timed": len(subset), "seconds_authors": timed["authors"][0], "seconds": seconds,
            "live_mismatches": live_mismatches, "machine_speed": speed})
    auc_full = next(r["auc"] for r in rows if r["mode"] == "full")
    auc_authors = pooled_auc(authors_scores, belonging)
    for row in rows:
        row["auc_full"], row["auc_early_exit"], row["auc_authors"] = auc_full, row.pop("auc"), auc_authors
        log.info("%s %s %s: agreement %.4f, image-steps %.3f, speed-up %.2f (%.1f s vs %.1f s at machine speed %s)",
                 name, schedule, row["mode"], row["agreement"], row["image_steps_fraction"], row["speedup"],
                 row["seconds"], row["seconds_authors"], speed)
    return rows


def verdict_exit_margin(cfg: Any, margin: float) -> float:
    """The cascade's verdict-stage early-exit margin: ``cascade_verdict_margin``, else the screen's ``margin``."""
    value = margin_or_none(cfg, "cascade_verdict_margin", "the screen's margin")
    return float(margin) if value is None else value


def known_negatives(sets: dict, name: str) -> list[str]:
    """Images ``name`` did not make and no evaluation image: the calibration halves of every other set of the
    suite (other generators, real images), as paths (early accept's negatives; the frontiers' selection set)."""
    return [str(p) for s, parts in sets.items() if s != name for p in parts.get("calibration", [])]


def margin_or_none(cfg: Any, key: str, null: str = "none") -> float | None:
    """``cfg[key]``: a number >= 1, or None (unset)."""
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 1):
        raise ValueError(f"{key}: must be a number >= 1 (or null: {null}), got {value!r}")
    return float(value)


def disagreements(verdicts: np.ndarray, authors: np.ndarray, sources: np.ndarray) -> str:
    """Where the verdicts differ from the authors' full run: ``source:n`` per evaluation source, most first
    (``""`` when none)."""
    names, counts = np.unique(sources[np.asarray(verdicts) != np.asarray(authors)], return_counts=True)
    return " ".join(f"{n}:{c}" for n, c in sorted(zip(names, counts), key=lambda x: (-x[1], x[0])))


def _rejected_early(mode: str, option: Any, cal: pd.DataFrame, cal_authors: pd.DataFrame, screen: InversionConfig,
                    verdict_cfg: InversionConfig, negatives: pd.DataFrame) -> int:
    """Calibration images the option decides against a full run: early exit's bound against its own schedule's
    full run; early accept's bounds likewise, the known negatives counted too; a cascade (both stages) against the
    authors' full run. Zero by construction."""
    if mode in ("early_exit", "early_accept"):
        known = [*cal["trajectory"].tolist(), *negatives["trajectory"].tolist()]
        return len(rejected_early(cal["trajectory"].tolist(), option)) + (
            len(accepted_early(known, option)) if mode == "early_accept" else 0)
    both = [p for p in cal.index if p in cal_authors.index]
    out = replay_cascade(cal.loc[both, "trajectory"].tolist(), cal_authors.loc[both, "trajectory"].tolist(), option,
                         screen, verdict_cfg)
    accepted = cal_authors.loc[both, "score"].to_numpy(float) <= option.verdict.threshold
    return int(np.sum(accepted & ~out["belonging"]))


def markdown(table: pd.DataFrame, notes: list[str], title: str = "Early exit and faster schedules") -> str:
    """The published table: every row of ``table`` (the merged CSV), after the ``notes``."""
    table = table.copy()
    for col in ("band_margin", "disagreements", "verdict_margin", "accept_margin", "trend"):  # newer than some rows
        if col not in table:
            table[col] = np.nan
    table["disagreements"] = table["disagreements"].fillna("")
    shown = table[["inspected", "schedule", "steps", "lr", "halve_every", "mode", "margin", "band_margin",
                   "verdict_margin", "accept_margin", "trend", "agreement", "agreement_schedule", "disagreements",
                   "image_steps_fraction", "speedup", "auc_full", "auc_early_exit", "auc_authors", "seconds_authors",
                   "seconds", "machine_speed"]].rename(columns={"machine_speed": "machine_speed (img-steps/s)"})
    for col in ("agreement", "agreement_schedule", "image_steps_fraction", "auc_full", "auc_early_exit",
                "auc_authors"):
        shown[col] = shown[col].map(lambda v: f"{v:.4f}")
    for col in ("speedup", "seconds_authors", "seconds", "margin", "band_margin", "verdict_margin", "accept_margin",
                "trend"):
        shown[col] = shown[col].map(lambda v: f"{v:.2f}" if v == v else "")
    shown["auc_early_exit"] = shown["auc_early_exit"].replace("nan", "")
    shown["lr"] = shown["lr"].map(lambda v: f"{v:.4g}")  # a latent_rms rate resolved: lr x RMS (4 digits each)
    return "\n".join([f"# {title}", "", *[f"- {n}" for n in notes], "",
                      tables.markdown_table(shown), ""])


def fresh_sets(p: dict) -> str:
    """``fresh sets: generation seed ..., real subset seed ...`` when the sets are not the published ones (e.g.
    ``suite=zoo_fresh``), else ``""``; ``p``: the job's protocol (:meth:`Context.protocol`)."""
    if not (p["generation_seed"] or p["real_seed"]):
        return ""
    return f"fresh sets: generation seed {p['generation_seed']}, real subset seed {p['real_seed']}"


def suite_label(p: dict) -> str:
    """``Suite `zoo```, and which fresh sets with their crop settings when not the published ones."""
    fresh = fresh_sets(p)
    if fresh and p.get("real_crops"):
        fresh += f", {p['real_crops']}"
    return f"Suite `{p['suite']}`" + (f" ({fresh})" if fresh else "")


def notes(p: dict, wall: float, speed_text: str,
          command: str = "python -m experiments.early_exit inversion=<schedule>") -> list[str]:
    """How the table was made; ``p``: the job's protocol (:meth:`Context.protocol`)."""
    return [f"{suite_label(p)}, Table 1's split: threshold ({p['target_tpr']:.0%} TPR) and early-exit bounds "
            "from each inspected model's calibration half; every other column on the evaluation images.",
            "agreement: verdicts equal to the authors' full run (100 steps, its own threshold); disagreements: "
            "the evaluation images whose verdict differs from it, counted by source; "
            "agreement_schedule: equal to the same schedule run to the end; image_steps_fraction: mean scored "
            "steps per image / 100; speedup: wall time of the authors' full run / this option's, both timed "
            "in one process on the same evaluation images (seconds_* columns; machine_speed beside them).",
            "Modes: full = the schedule to the end; exact = stop once the running minimum is <= the threshold; "
            "early_exit = also stop above the learnt bound margin x ratio_k x threshold; cascade = this schedule "
            "with early exit screens, the images in its band (learnt on calibration, widened by band_margin) run "
            "the authors' schedule with early exit (a verdict per image: no AUC); early_accept = early_exit plus "
            "an accept bound learnt from the other generators' calibration images (known negatives) at "
            "accept_margin. trend: the learnt bounds judge the running minimum carried forward by its recent fall, "
            "m_k x (m_k / m_floor(k/2)) ** trend (inversion.exit_trend; 0: the running minimum itself).",
            f"Command: `{command}`; this run: "
            f"{wall:.0f} s wall; machine speed {speed_text}."]


@STUDIES.register
class EarlyExit(MergedStudy):
    name = "early_exit"
    config = EarlyExitConfig
    title = "Early exit and faster schedules"
    command = "python -m experiments.early_exit inversion=<schedule>"
    section = ReportSection(title, ("early_exit.csv", "early_exit_holdout.csv", "early_exit_holdout2.csv"), (), command,
                            order=60)  # + both fresh draws

    def targets(self, cfg: Any, ctx: Context) -> tuple[dict, dict[str, Any]]:
        """The protocol's sets and the inspected models (name -> a loaded decoder, or None: loaded by name)."""
        return ctx.image_sets(), {name: None for name in ctx.inspected_models()}

    def run(self, cfg: Any, ctx: Context) -> StudyResult:
        """Returns this job's rows (the published table is every row of ``<out>.csv``, these merged in)."""
        started = time.time()
        record = self.checked_sets_record(cfg, ctx)  # the sets of :meth:`targets`
        speed_text = zoo.machine_speed(1)
        speed = int(speed_text.split()[0])  # KL-decoder image-steps/s, 1 thread (benchmarks/decoder_speed.py)
        log.info("machine speed: %s", speed_text)
        schedule = ctx.inversion_preset()
        sets, models = self.targets(cfg, ctx)
        rows = []
        for name, ae in models.items():
            rows.extend(measure(cfg, ctx, name, sets, schedule, speed, ae=ae))
        new = pd.DataFrame(rows)[COLUMNS]
        suite = ctx.preset("suite")  # fresh sets (suite=zoo_fresh): part of the command
        p = ctx.protocol()
        command = self.command + (f" suite={suite}" if fresh_sets(p) else "")
        told = notes(p, time.time() - started, speed_text, command)
        title = self.title
        return StudyResult(new, stem=Path(cfg.out), tables={"": new},
                           merge=Merge(KEY, lambda table: markdown(table, told, title), sets=record))
