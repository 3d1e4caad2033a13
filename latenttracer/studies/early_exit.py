"""Early exit and faster schedules against the authors' full run, per inspected model -> results/early_exit.*

    python -m experiments.early_exit                               # the authors' schedule (inversion=paper)
    python -m experiments.early_exit inversion=fast_rms            # a faster schedule: its rows are added
    python -m experiments.early_exit suite=zoo_fresh               # a fresh draw: its rows sit beside the zoo's
    python -m experiments.early_exit experiment=table1_celeba      # the eight CelebA VAEs
    python -m experiments.early_exit debug=default                 # a smoke run

Per inspected model (Table 1's protocol, :mod:`latenttracer.protocol`): the calibration half of its own set gives
the threshold (target TPR) and the conformal exit rule (:func:`latenttracer.early_exit.learn_exit_policy`, one row
per risk ``alpha`` in ``risks``) from full-run trajectories of the schedule under test; the evaluation images (its
own evaluation half = belonging, every other source's evaluation half and the real set = non-belonging) are
scored. Rows (:mod:`latenttracer.studies.full_run_comparison`):

* ``full``: the schedule run to the end (for ``paper`` this is the authors' run itself);
* ``exact``: early exit on the threshold alone (verdicts equal the schedule's full run);
* ``conformal``: the threshold and the learnt bound at risk ``alpha``; ``wrong_exit_rate`` (with its Wilson
  interval) is the share of the model's own evaluation images whose full run is belonging that the bound stops:
  what ``alpha`` bounds (in expectation over calibration draws).

Every suite's rows go to the one table: the key's first column, ``sets``, names the suite (and the generation seed
of a fresh draw), and ``<out>.sets.json`` records each label's sets (a rerun on other sets under a label is refused).

Scores come from the shared store (computed if missing, with trajectories); early-exit results are replayed from
the trajectories (:func:`latenttracer.early_exit.replay_frame`, the loop's own rule) and checked live on
``timing_images`` evaluation images, which also give the wall-clock speed-up (all configs timed in this process,
one after the other). Rows are merged into ``<out>.csv`` by (sets, inspected, schedule, steps, lr, halve_every,
mode, alpha) under a lock and the Markdown is rebuilt from it (:class:`~latenttracer.studies.base.Merge`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import MISSING

from data_gen import zoo
from latenttracer import protocol, tables
from latenttracer.early_exit import DEFAULT_RISK, learn_exit_policy, rejected_early, replay_frame
from latenttracer.images import load_images
from latenttracer.intervals import auc_delong, wilson
from latenttracer.inversion import InversionConfig
from latenttracer.metrics import calibrate_threshold
from latenttracer.studies.base import STUDIES, Context, Merge, MergedStudy, ReportSection, StudyResult
from latenttracer.studies.full_run_comparison import compare, time_inversions, timing_subset

log = logging.getLogger(__name__)

KEY = ("sets", "inspected", "schedule", "steps", "lr", "halve_every", "mode", "alpha")
COLUMNS = [*KEY, "agreement", "agreement_lo", "agreement_hi", "image_steps_fraction", "wrong_exit_rate",
           "wrong_exit_rate_lo", "wrong_exit_rate_hi", "wrong_exits", "n_own_belonging", "q", "n_scores", "speedup",
           "auc_full", "auc_full_lo", "auc_full_hi", "auc_early_exit", "auc_early_exit_lo", "auc_early_exit_hi",
           "auc_authors", "auc_authors_lo", "auc_authors_hi", "agreement_schedule", "tpr", "fpr", "threshold",
           "n_evaluation", "n_calibration", "calibration_rejected_early", "n_timed", "seconds_authors", "seconds",
           "live_mismatches", "machine_speed", "disagreements", "wall_seconds", "command",
           # columns of the retired margin rows (docs/research/results/README.md), kept empty here
           "margin", "band_margin", "verdict_margin", "accept_margin", "trend", "n_band", "screen_steps_fraction"]


@dataclass
class EarlyExitConfig:
    inspected: list[str] | None = None  # names in suite.models; null: every model of the suite
    risks: list[float] = field(default_factory=lambda: [0.02, 0.03, 0.05, 0.1])  # a `conformal` row per risk
    timing_images: int = 48             # evaluation images per inspected model timed live
    timing_seed: int = 0                # which evaluation images are timed
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


def risks(cfg: Any) -> list[float]:
    """``cfg.risks``: each a number in (0, 1)."""
    out = []
    for value in cfg.get("risks") or []:
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < 1):
            raise ValueError(f"risks: each must be a number in (0, 1), got {value!r}")
        out.append(float(value))
    return out


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
    ev = scored(inv, evaluation["path"].tolist())
    ev_authors = scored(authors, evaluation["path"].tolist())
    ok = [p for p in evaluation["path"] if ev.loc[p, "status"] == "ok" and ev_authors.loc[p, "status"] == "ok"]
    if len(ok) < len(evaluation):
        log.warning("%s: %d evaluation image(s) failed in a full run; left out", name, len(evaluation) - len(ok))
    sources = evaluation.set_index("path").loc[ok, "source"].to_numpy()
    belonging = sources == name
    trajectories = ev.loc[ok, "trajectory"].tolist()
    full_scores, authors_scores = ev.loc[ok, "score"].to_numpy(float), ev_authors.loc[ok, "score"].to_numpy(float)
    cal_trajectories = cal["trajectory"].tolist()
    policies = {("exact", None): None, **{("conformal", a): learn_exit_policy(cal_trajectories, t, a, inv)
                                            for a in risks(cfg)}}
    options = {("full", None): None, ("exact", None): replace(inv, early_exit=True, exit_threshold=t),
               **{k: p.apply(inv) for k, p in policies.items() if p is not None}}
    for (_, alpha), p in policies.items():
        if p is not None:
            log.info("%s alpha %g: %s", name, alpha, p.allows())

    # Wall time, in this process, on a seeded subset of the evaluation images; the live runs check the replay.
    subset = timing_subset(len(ok), int(cfg.timing_images), int(cfg.timing_seed))
    images, _, _ = load_images([ok[i] for i in subset], ae.resolution, ctx.image_options())
    configs = {"authors": authors, **{k: c for k, c in options.items() if c is not None}}
    if inv.hash() != authors.hash():
        configs[("full", None)] = inv
    timed = time_inversions(ae, images, configs)
    timed.setdefault(("full", None), timed["authors"])  # the authors' schedule: its full run is the authors' run

    own_belonging = belonging & (full_scores <= t)
    rows = []
    for (mode, alpha), option in options.items():
        if option is None:
            scores, steps_run, exits = full_scores, np.full(len(ok), inv.scored_steps), np.full(len(ok), "")
        else:
            replayed = replay_frame(trajectories, option)
            scores, steps_run, exits = replayed["score"], replayed["steps_run"], replayed["exit"]
        verdicts = scores <= t
        seconds, live = timed[(mode, alpha)]
        live_mismatches = int(np.sum(np.array([r.score <= t for r in live]) != verdicts[subset]))
        wrong = int(np.sum(own_belonging & (exits == "bound")))
        n_own = int(own_belonging.sum())
        compared = compare(authors_scores=authors_scores, authors_threshold=t_authors, schedule_scores=full_scores,
                           schedule_threshold=t, scores=scores, steps_run=steps_run, belonging=belonging,
                           authors_steps=authors.scored_steps)
        agree = int(round(compared["agreement"] * len(ok)))
        policy = policies.get((mode, alpha))
        rows.append({
            "inspected": name, "schedule": schedule, "mode": mode, "alpha": np.nan if alpha is None else alpha,
            "steps": inv.steps, "lr": inv.lr, "halve_every": inv.halve_every, **compared,
            "agreement_lo": wilson(agree, len(ok))[0], "agreement_hi": wilson(agree, len(ok))[1],
            "wrong_exits": wrong, "n_own_belonging": n_own,
            "wrong_exit_rate": wrong / n_own if n_own else np.nan,
            "wrong_exit_rate_lo": wilson(wrong, n_own)[0] if n_own else np.nan,
            "wrong_exit_rate_hi": wilson(wrong, n_own)[1] if n_own else np.nan,
            "q": policy.q if policy is not None else np.nan,
            "n_scores": policy.n_scores if policy is not None else np.nan,
            "disagreements": disagreements(verdicts, authors_scores <= t_authors, sources),
            "speedup": timed["authors"][0] / seconds, "auc_authors": np.nan, "threshold": t, "n_evaluation": len(ok),
            "n_calibration": len(cal),
            "calibration_rejected_early": len(rejected_early(cal_trajectories, option)) if option is not None else 0,
            "n_timed": len(subset), "seconds_authors": timed["authors"][0], "seconds": seconds,
            "live_mismatches": live_mismatches, "machine_speed": speed, "scores": np.asarray(scores, dtype=float)})
    full = dict(zip(("auc_full", "auc_full_lo", "auc_full_hi"), auc_delong(full_scores[belonging],
                                                                           full_scores[~belonging])))
    authors_auc = dict(zip(("auc_authors", "auc_authors_lo", "auc_authors_hi"),
                           auc_delong(authors_scores[belonging], authors_scores[~belonging])))
    for row in rows:
        early = row.pop("scores")
        row.update(full, **authors_auc, **dict(zip(("auc_early_exit", "auc_early_exit_lo", "auc_early_exit_hi"),
                                                   auc_delong(early[belonging], early[~belonging]))))
        row.pop("auc")  # compare()'s AUC: the same number, now with its interval
        log.info("%s %s %s %s: agreement %.4f, wrong exits %s of %s, image-steps %.3f, speed-up %.2f (%.1f s vs "
                 "%.1f s at machine speed %s)", name, schedule, row["mode"], row["alpha"], row["agreement"],
                 row["wrong_exits"], row["n_own_belonging"], row["image_steps_fraction"], row["speedup"],
                 row["seconds"], row["seconds_authors"], speed)
    return rows


def disagreements(verdicts: np.ndarray, authors: np.ndarray, sources: np.ndarray) -> str:
    """Where the verdicts differ from the authors' full run: ``source:n`` per evaluation source, most first
    (``""`` when none)."""
    names, counts = np.unique(sources[np.asarray(verdicts) != np.asarray(authors)], return_counts=True)
    return " ".join(f"{n}:{c}" for n, c in sorted(zip(names, counts), key=lambda x: (-x[1], x[0])))


def markdown(table: pd.DataFrame, notes: list[str], title: str = "Early exit and faster schedules") -> str:
    """The published table: every row of ``table`` (the merged CSV), after the ``notes``, a summary at the default
    risk and one line per set of rows saying how it was made."""
    table = table.sort_values(["sets", "inspected", "schedule", "mode", "alpha"], na_position="first",
                              kind="stable").reset_index(drop=True)
    table["disagreements"] = table["disagreements"].fillna("")

    def ci(col: str, digits: int = 3):
        return [f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if v == v else ""
                for v, lo, hi in zip(table[col], table[f"{col}_lo"], table[f"{col}_hi"])]

    table["agreement [95% CI]"] = ci("agreement")
    table["wrong exits among own belonging [95% CI]"] = [
        f"{int(w)} of {int(n)}: {c}" if c else "" for w, n, c in
        zip(table["wrong_exits"].fillna(0), table["n_own_belonging"].fillna(0), ci("wrong_exit_rate"))]
    shown = table[["sets", "inspected", "schedule", "steps", "lr", "mode", "alpha", "agreement [95% CI]",
                   "wrong exits among own belonging [95% CI]", "disagreements", "image_steps_fraction", "speedup",
                   "auc_full", "auc_early_exit", "seconds_authors", "seconds", "machine_speed", "n_evaluation",
                   "n_scores"]].rename(columns={"machine_speed": "machine_speed (img-steps/s)"})
    for col in ("image_steps_fraction", "auc_full", "auc_early_exit"):
        shown[col] = shown[col].map(lambda v: f"{v:.4f}" if v == v else "")
    for col in ("speedup", "seconds_authors", "seconds"):
        shown[col] = shown[col].map(lambda v: f"{v:.2f}" if v == v else "")
    shown["alpha"] = shown["alpha"].map(lambda v: f"{v:g}" if v == v else "")
    shown["n_scores"] = shown["n_scores"].map(lambda v: f"{int(v)}" if v == v else "")
    shown["lr"] = shown["lr"].map(lambda v: f"{v:.4g}")  # a latent_rms rate resolved: lr x RMS (4 digits each)
    made = [f"`{r.sets}`: `{r.command}`, {r.wall_seconds:.0f} s wall at machine speed {r.machine_speed:.0f}"
            for r in table.drop_duplicates("sets").itertuples() if r.command == r.command]
    return "\n".join([f"# {title}", "", *[f"- {n}" for n in notes], "", "## At the default risk", "",
                      summary(table), "", "## Every row", "", tables.markdown_table(shown), "",
                      "Made by (per `sets`):", "", *[f"- {m}" for m in made], ""])


def summary(table: pd.DataFrame, risk: float = DEFAULT_RISK) -> str:
    """Per ``sets`` x inspected model, the authors' schedule at ``risk``: agreement, wrong exits, image-steps."""
    rows = table[(table["mode"] == "conformal") & (table["schedule"] == "paper") & np.isclose(table["alpha"], risk)]
    if rows.empty:
        return f"(no row at risk {risk:g} yet)"
    shown = pd.DataFrame({
        "sets": rows["sets"], "inspected": rows["inspected"],
        "agreement [95% CI]": [f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in
                               zip(rows["agreement"], rows["agreement_lo"], rows["agreement_hi"])],
        "n_evaluation": rows["n_evaluation"].astype(int),
        "wrong exits / own belonging": [f"{int(w)} / {int(n)}" for w, n in
                                        zip(rows["wrong_exits"], rows["n_own_belonging"])],
        "image_steps_fraction": rows["image_steps_fraction"].map(lambda v: f"{v:.3f}"),
        "n_scores": rows["n_scores"].map(lambda v: f"{int(v)}" if v == v else "")})
    w, n = int(rows["wrong_exits"].sum()), int(rows["n_own_belonging"].sum())
    lo, hi = wilson(w, n) if n else (np.nan, np.nan)
    pooled = (f"Pooled over these {len(rows)} rows: {w} wrong exits among {n} own belonging images = {w / n:.3f} "
              f"[{lo:.3f}, {hi:.3f}] (95% Wilson), against the risk {risk:g}." if n else "")
    return tables.markdown_table(shown.reset_index(drop=True)) + ("\n\n" + pooled if pooled else "")


def sets_label(p: dict) -> str:
    """The ``sets`` column: the suite, and the generation seed of a fresh draw (``zoo``, ``zoo seed 1000``)."""
    return p["suite"] + (f" seed {p['generation_seed']}" if p["generation_seed"] else "")


def notes(p: dict) -> list[str]:
    """How the table was made; ``p``: the job's protocol (:meth:`Context.protocol`)."""
    return [f"Per `sets` (a suite; `seed N`: a fresh draw of its images), Table 1's split: threshold "
            f"({p['target_tpr']:.0%} TPR) and the exit rule from each inspected model's calibration half; every "
            f"other column on the evaluation images. The default risk of `trace --early-exit` is {DEFAULT_RISK:g} "
            "(latenttracer.early_exit.DEFAULT_RISK: chosen on the `zoo` rows; the other sets are held out).",
            "agreement: verdicts equal to the authors' full run (100 steps, its own threshold), with its 95% Wilson "
            "interval over n_evaluation images; disagreements: the evaluation images whose verdict differs from it, "
            "counted by source; image_steps_fraction: mean scored steps per image / 100; speedup: wall time of the "
            "authors' full run / this option's, both timed in one process on the same evaluation images (seconds_* "
            "columns; machine_speed beside them).",
            "Modes: full = the schedule to the end; exact = stop once the running minimum is <= the threshold; "
            "conformal = also stop above the bound learnt at risk alpha (latenttracer/early_exit.py: conformal on "
            "the n_scores calibration images that end belonging, each scored against the others' median). "
            "wrong exits: own evaluation images whose full run is belonging and that the bound stops (what alpha "
            "bounds, in expectation over calibration draws), with the 95% Wilson interval.",
            "Machine speed: KL-decoder image-steps/s, 1 thread (benchmarks/decoder_speed.py)."]


@STUDIES.register
class EarlyExit(MergedStudy):
    name = "early_exit"
    config = EarlyExitConfig
    title = "Early exit and faster schedules"
    command = "python -m experiments.early_exit inversion=<schedule>"
    section = ReportSection(title, ("early_exit.csv",), (), command, order=60)  # every suite's rows, taef2's too

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
        p = ctx.protocol()
        label = sets_label(p)
        new = pd.DataFrame(rows).assign(sets=label, wall_seconds=time.time() - started,
                                        command=self.run_command(ctx, p)).reindex(columns=COLUMNS)
        told, title = notes(p), self.title
        return StudyResult(new, stem=Path(cfg.out), tables={"": new},
                           merge=Merge(KEY, lambda table: markdown(table, told, title), sets=record, label=label))

    def sets_label(self, cfg: Any, ctx: Context) -> str:
        return sets_label(ctx.protocol())

    def run_command(self, ctx: Context, p: dict) -> str:
        """The command that makes this run's rows (its suite or experiment named when not the default)."""
        presets = (("experiment", ctx.preset("experiment")), ("suite", ctx.preset("suite")),
                   ("inversion", ctx.inversion_preset()))
        extra = [f"{k}={v}" for k, v in presets if v and v not in ("table1_zoo", "zoo", "taef2", "paper")]
        return " ".join([self.command.replace(" inversion=<schedule>", ""), *extra])
