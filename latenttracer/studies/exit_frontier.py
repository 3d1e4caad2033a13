"""Which early-exit settings reach which cost and agreement: trend x margin x accept margin -> results/exit_frontier.*

    python -m experiments.study --config-name exit_frontier                 # Table 1's sets (seed 0)
    python -m experiments.study --config-name exit_frontier suite=zoo_fresh \\
        'out=${paths.results_dir}/exit_frontier_holdout'                     # fresh sets (seed 1000; zoo_fresh2: 2000)
    python -m experiments.study --config-name exit_frontier debug=default   # a smoke run

One schedule (the ``inversion`` node: the authors' by default) with early exit (:mod:`latenttracer.early_exit`)
has three settings: the ``trend`` of the statistic both learnt bounds judge, the reject bound's ``margin`` and the
accept bound's ``accept_margin`` (none: early exit without early accept). This study replays every combination of
the configured lists, per inspected model, from the full-run trajectories in the shared store (replays equal the
live loop: ``tests/test_early_exit.py``), the way :mod:`latenttracer.studies.cascade_frontier` does for the
cascade, and says how a setting would be *chosen* without looking at the evaluation images:

* **evaluation** columns (``agreement``, ``image_steps_fraction``, ``tpr``, ``fpr``, ``disagreements``): the bounds
  learnt from the inspected model's whole calibration half (and, for the accept bound, the other generators'
  calibration halves: known negatives), on Table 1's evaluation images, against the authors' full run (100 steps,
  its own threshold), as in ``results/early_exit.csv``. ``tpr`` / ``fpr`` are against the ground truth (the
  image's source), beside the authors' own ``tpr_authors`` / ``fpr_authors``: a verdict that leaves the authors'
  can be the right one.
* **selection** columns (``selection_agreement``, ``selection_image_steps``): the same measures on a selection set
  that holds no evaluation image: the calibration half and the known negatives, each split in ``selection_folds``
  folds; the bounds are learnt on the other folds, every image is scored once. The threshold is the calibration
  half's (the bounds are what is chosen here, not the threshold).

The Markdown shows, per model, the setting chosen on the selection set and its evaluation numbers; the oracle (the
cheapest setting at the agreement goal on the evaluation images: it looks at the answers); the single settings
meeting both goals on the most models; and the ``pinned`` settings (fixed before the run) on these images. Rows
are merged into ``<out>.csv`` by (inspected, schedule, steps, lr, trend, margin, accept_margin).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import MISSING

from data_gen import zoo
from latenttracer import tables
from latenttracer.early_exit import ExitBounds, learn_bounds, replay_frame
from latenttracer.inversion import InversionConfig, verdict
from latenttracer.metrics import calibrate_threshold
from latenttracer.studies.base import STUDIES, Context, FigureOut, Merge, MergedStudy, ReportSection, StudyResult
from latenttracer.studies.cascade_frontier import (
    chosen,
    figure,
    fmt,
    grid_points,
    meets,
    oracle,
    oracle_section,
    pinned_rows,
    selection_folds,
    single_settings,
    stored_runs,
)
from latenttracer.studies.early_exit import disagreements, fresh_sets, inspected, known_negatives, suite_label

log = logging.getLogger(__name__)

KEY = ("inspected", "schedule", "steps", "lr", "trend", "margin", "accept_margin")
COLUMNS = [*KEY, "agreement", "image_steps_fraction", "tpr", "fpr", "tpr_authors", "fpr_authors", "disagreements",
           "selection_agreement", "selection_image_steps", "n_evaluation", "n_calibration", "n_negatives",
           "selection_folds", "goal_agreement", "goal_image_steps", "pinned"]
SETTING = ["schedule", "trend", "margin", "accept_margin"]
BY = ("inspected", "schedule")


@dataclass
class ExitFrontierConfig:
    """The grid (these defaults are the published one) and the goals."""

    inspected: list[str] | None = None   # names in suite.models; null: every model of the suite
    trends: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0])  # inversion.exit_trend values, >= 0
    margins: list[float] = field(default_factory=lambda: [1.0, 1.2, 1.5, 2.0])  # the reject bound's exit_margin, >= 1
    accept_margins: list[Any] = field(default_factory=lambda: [None, 1.0, 1.2, 1.5, 2.0])  # >= 1; null: none
    goal_agreement: float = 0.99         # with the authors' full run
    goal_image_steps: float = 0.1        # mean scored steps per image / the authors' 100 (issue 16's 1/10)
    selection_folds: int = 5             # folds of the calibration half and of the known negatives (>= 2; at most
                                         # one per calibration image: fewer images, fewer folds, in the CSV)
    selection_seed: int = 0
    pinned: list[dict[str, Any]] = field(default_factory=list)  # settings fixed before this run: {trend, margin,
                                         # accept_margin}, each a point of the grid; a table of their own
    out: str = MISSING                   # publishes <out>.{md,csv}


def grid(cfg: Any) -> dict[str, list]:
    """The lists of ``cfg``, checked: ``trends`` >= 0, ``margins`` >= 1, ``accept_margins`` >= 1 or null (and the
    goals: fractions in (0, 1])."""
    def numbers(key: str, low: float, null: bool = False) -> list:
        values = list(cfg[key] or [])
        ok = values and all((null and v is None) or (not isinstance(v, bool) and isinstance(v, (int, float))
                                                     and math.isfinite(v) and v >= low) for v in values)
        if not ok or len(set(values)) < len(values):
            raise ValueError(f"exit_frontier.{key}: a non-empty list of distinct numbers >= {low:g}"
                             f"{' (or null: none)' if null else ''}, got {values!r}")
        return [None if v is None else float(v) for v in values]
    for key in ("goal_agreement", "goal_image_steps"):
        if not 0 < float(cfg[key]) <= 1:
            raise ValueError(f"exit_frontier.{key}: a fraction in (0, 1], got {cfg[key]!r}")
    return {"trend": numbers("trends", 0.0), "margin": numbers("margins", 1.0),
            "accept_margin": numbers("accept_margins", 1.0, null=True)}


def pinned_settings(cfg: Any) -> list[tuple[float, float, float | None]]:
    """``cfg.pinned`` as (trend, margin, accept_margin) tuples, each checked to be a point of the grid."""
    return grid_points(cfg.pinned, grid(cfg), "exit_frontier.pinned",
                       lambda key, v: None if v is None else float(v))


def _replay(bounds: ExitBounds, schedule: InversionConfig, trajectories: list, margin: float,
            accept_margin: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Verdicts and steps run of ``trajectories`` under ``bounds`` at these margins."""
    config = bounds.apply(replace(schedule, exit_trend=bounds.trend), margin=margin, accept_margin=accept_margin)
    r = replay_frame(trajectories, config)
    return (np.array([verdict(s, e, bounds.threshold) for s, e in zip(r["score"], r["exit"])], dtype=bool),
            np.asarray(r["steps_run"], dtype=float))


def _folds(n: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold per item, ``folds`` of near-equal size, in a random order."""
    return rng.permutation(n) % folds


def measure(cfg: Any, ctx: Context, name: str, sets: dict, schedule_name: str, ae: Any = None) -> list[dict]:
    """Every setting of the grid for one inspected model (module docstring); ``ae``: its decoder when loaded."""
    model = inspected(cfg, ctx, name, sets, ae)  # as the early-exit study sees it
    schedule, authors, tpr = replace(model.schedule, early_exit=False, exit_trend=0.0), model.authors, model.target_tpr
    points = grid(cfg)
    pinned = set(pinned_settings(cfg))
    groups = {"calibration": model.calibration, "evaluation": model.evaluation["path"].tolist(),
              "negatives": known_negatives(sets, name)}
    runs, kept = stored_runs(ctx, model.ae, groups, {"schedule": schedule, "authors": authors}, name)

    def traj(group: str) -> list:
        return runs["schedule", group].loc[kept[group], "trajectory"].tolist()

    def scores(role: str, group: str) -> np.ndarray:
        return runs[role, group].loc[kept[group], "score"].to_numpy(float)

    t = calibrate_threshold(scores("schedule", "calibration"), tpr)
    t_authors = calibrate_threshold(scores("authors", "calibration"), tpr)
    truth = {g: scores("authors", g) <= t_authors for g in groups}
    sources = model.evaluation.set_index("path").loc[kept["evaluation"], "source"].to_numpy()
    belonging = sources == name
    cal, neg, ev = traj("calibration"), traj("negatives"), traj("evaluation")
    n_cal = len(cal)
    folds = selection_folds(cfg, n_cal, name, "exit_frontier")
    rng = np.random.default_rng(int(cfg.selection_seed))
    fold_cal, fold_neg = _folds(n_cal, folds, rng), _folds(len(neg), folds, rng)
    accepting = any(a is not None for a in points["accept_margin"])
    if accepting and not neg:
        raise ValueError(f"exit_frontier.accept_margins: the accept bound needs known negatives (the other "
                         f"generators' calibration halves) and {name} has none in this suite")
    held_out = [([x for x, f in zip(cal, fold_cal) if f == k] + [x for x, f in zip(neg, fold_neg) if f == k],
                 np.concatenate([truth["calibration"][fold_cal == k], truth["negatives"][fold_neg == k]]))
                for k in range(folds)]  # each fold's images and their full-run verdicts
    rows = []
    for trend in points["trend"]:
        def learn(c: list, n: list, trend: float = trend) -> ExitBounds:
            return learn_bounds(c, threshold=t, config=schedule, negatives=n if accepting else None, trend=trend)
        whole = learn(cal, neg)
        per_fold = [learn([x for x, f in zip(cal, fold_cal) if f != k], [x for x, f in zip(neg, fold_neg) if f != k])
                    for k in range(folds)]
        for margin, accept_margin in itertools.product(points["margin"], points["accept_margin"]):
            verdicts, steps = _replay(whole, schedule, ev, margin, accept_margin)
            sel_agree, sel_steps = [], []
            for bounds, (held, want) in zip(per_fold, held_out):
                v, s = _replay(bounds, schedule, held, margin, accept_margin)
                sel_agree.append(v == want)
                sel_steps.append(s)
            rows.append({"inspected": name, "schedule": schedule_name, "steps": schedule.steps, "lr": schedule.lr,
                         "trend": trend, "margin": margin,
                         "accept_margin": np.nan if accept_margin is None else accept_margin,
                         "agreement": float(np.mean(verdicts == truth["evaluation"])),
                         "image_steps_fraction": float(steps.mean()) / authors.scored_steps,
                         "tpr": float(verdicts[belonging].mean()), "fpr": float(verdicts[~belonging].mean()),
                         "tpr_authors": float(truth["evaluation"][belonging].mean()),
                         "fpr_authors": float(truth["evaluation"][~belonging].mean()),
                         "disagreements": disagreements(verdicts, truth["evaluation"], sources),
                         "selection_agreement": float(np.concatenate(sel_agree).mean()),
                         "selection_image_steps": float(np.concatenate(sel_steps).mean()) / authors.scored_steps,
                         "n_evaluation": len(ev), "n_calibration": n_cal, "n_negatives": len(neg),
                         "selection_folds": folds, "goal_agreement": float(cfg.goal_agreement),
                         "goal_image_steps": float(cfg.goal_image_steps),
                         "pinned": (trend, margin, accept_margin) in pinned})
    best = min((r for r in rows if r["agreement"] >= cfg.goal_agreement), default=None,
               key=lambda r: r["image_steps_fraction"])
    log.info("%s: %d settings; cheapest at the agreement goal on evaluation: %s", name, len(rows),
             "none" if best is None else f"{best['image_steps_fraction']:.4f}")
    return rows


# -- what the table says ----------------------------------------------------------------------------------------
def _setting(frame: pd.DataFrame) -> dict[str, pd.Series]:
    return {"schedule": frame["schedule"], "trend": frame["trend"].map(lambda v: fmt(v, 1)),
            "margin": frame["margin"].map(lambda v: fmt(v, 2)),
            "accept_margin": frame["accept_margin"].map(lambda v: fmt(v, 2) if v == v else "none")}


def _evaluated(frame: pd.DataFrame, goals: str) -> pd.DataFrame:
    """Rows of the grid as published: the setting, its evaluation numbers and whether it meets both goals."""
    return pd.DataFrame({"inspected": frame["inspected"], **_setting(frame), "agreement": frame["agreement"].map(fmt),
                         "image_steps_fraction": frame["image_steps_fraction"].map(fmt),
                         "tpr / fpr": [f"{r['tpr']:.2f} / {r['fpr']:.3f}" for _, r in frame.iterrows()],
                         "authors' tpr / fpr": [f"{r['tpr_authors']:.2f} / {r['fpr_authors']:.3f}"
                                                for _, r in frame.iterrows()],
                         "disagreements": frame["disagreements"].fillna(""),
                         goals: [meets(r) for _, r in frame.iterrows()]})


def selection_single(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the one setting chosen for every model on the selection set (:func:`single_settings` on the
    selection columns: both goals there on the most models, then the lowest worst-case cost)."""
    pick = single_settings(table, top=1, setting=SETTING, on=("selection_agreement", "selection_image_steps"))
    return table.merge(pick[SETTING], on=SETTING)  # a NaN accept margin matches NaN


def markdown(table: pd.DataFrame, notes: list[str], title: str) -> str:
    """The published page: the notes, then the tables of settings chosen on the selection set (per model, and one
    for every model), the oracle, the single settings on the evaluation images and the pinned ones."""
    c = chosen(table, BY)
    chosen_rows = pd.DataFrame({"inspected": c["inspected"], **_setting(c),
                                "selection_agreement": c["selection_agreement"].map(fmt),
                                "selection_image_steps": c["selection_image_steps"].map(fmt),
                                **{k: v for k, v in _evaluated(c, "both goals").items()
                                   if k not in ("inspected", *SETTING)}})
    one = selection_single(table)
    n_sel = int(((one["selection_agreement"] >= one["goal_agreement"])
                 & (one["selection_image_steps"] <= one["goal_image_steps"])).sum())
    one_rows = _evaluated(one, "both goals (one setting)")
    o = oracle(table, BY)
    oracle_rows = pd.DataFrame({"inspected": o["inspected"], **_setting(o),
                                "oracle agreement": o["agreement"].map(fmt),
                                "oracle image_steps_fraction": o["image_steps_fraction"].map(fmt),
                                "both goals": [meets(r) for _, r in o.iterrows()]}) if len(o) else pd.DataFrame()
    missing = sorted(set(table["inspected"]) - set(o["inspected"] if len(o) else []))
    s = single_settings(table, setting=SETTING)
    single_rows = pd.DataFrame({**_setting(s), "models meeting both goals": s["meeting_both"], "of models": s["models"],
                                "worst agreement": s["worst_agreement"].map(fmt),
                                "worst image_steps_fraction": s["worst_image_steps"].map(fmt)})
    parts = [f"# {title}", "", *[f"- {n}" for n in notes], "",
             "## Chosen on the selection set (no evaluation image), per inspected model", "",
             tables.markdown_table(chosen_rows), "",
             "## One setting for every model, chosen on the selection set", "",
             f"Both goals on the selection set for {n_sel} of {len(one)} models; on the evaluation images for "
             f"{sum(r == 'yes' for r in one_rows['both goals (one setting)'])} of {len(one)}.", "",
             tables.markdown_table(one_rows), "", *oracle_section(oracle_rows, missing),
             "## One setting for every model: the settings meeting both goals on the most models (evaluation "
             "images: an oracle too)", "", tables.markdown_table(single_rows), ""]
    p = pinned_rows(table)
    if len(p):
        pinned_table = _evaluated(p, "both goals (pinned)")
        met = sum(r == "yes" for r in pinned_table["both goals (pinned)"])
        parts += ["## Pinned: settings fixed before this run (`pinned`), on these evaluation images", "",
                  f"Both goals on {met} of {len(pinned_table)} (model, setting) pairs.", "",
                  tables.markdown_table(pinned_table), ""]
    return "\n".join(parts)


def notes(p: dict, table: pd.DataFrame, wall: float, speed_text: str, command: str) -> list[str]:
    """How the table was made; ``p``: the job's protocol (:meth:`Context.protocol`)."""
    r = table.iloc[0]
    return [f"{suite_label(p)}, Table 1's split; goals: agreement >= {r['goal_agreement']:g} with the authors' "
            f"full run at <= {r['goal_image_steps']:g} of its image-steps. Every setting replayed from full-run "
            "trajectories (equal to a live run); the full grid is in the CSV.",
            "Evaluation columns: the bounds learnt from the whole calibration half (the accept bound also from the "
            "other generators' calibration halves, known negatives), on the evaluation images; tpr / fpr against "
            "the images' sources, beside the authors' full run's. Selection columns: the calibration half and the "
            f"known negatives each in {int(r['selection_folds'])} folds, bounds learnt on the others; no "
            "evaluation image.",
            "Settings: schedule = the `inversion` node; trend = inversion.exit_trend (the statistic both learnt "
            "bounds judge); margin = the reject bound's exit_margin; accept_margin = the accept bound's (none: "
            "early exit without early accept).",
            f"Command: `{command}`; this run: {wall:.0f} s wall (replays; inversions only where the store lacks "
            f"them); machine speed {speed_text}."]


@STUDIES.register
class ExitFrontier(MergedStudy):
    name = "exit_frontier"
    config = ExitFrontierConfig
    title = "Early-exit settings: the measured frontier"
    command = "python -m experiments.study --config-name exit_frontier"
    section = ReportSection(title, ("exit_frontier.csv", "exit_frontier_holdout.csv", "exit_frontier_holdout2.csv"),
                            ("exit_frontier.png", "exit_frontier_holdout.png", "exit_frontier_holdout2.png"),
                            command, order=60.6)

    def run(self, cfg: Any, ctx: Context) -> StudyResult:
        started = time.time()
        record = self.checked_sets_record(cfg, ctx)
        pinned_settings(cfg)  # a bad grid or pinned entry fails before any inversion
        if float(cfg.inversion.get("exit_trend") or 0):
            raise ValueError(f"exit_frontier: inversion.exit_trend={cfg.inversion.exit_trend} would be ignored: the "
                             "trends are the grid's (trends=[...]); leave inversion.exit_trend at 0")
        speed_text = zoo.machine_speed(1)  # beside the wall time (benchmarks/decoder_speed.py)
        sets = ctx.image_sets()
        rows = []
        for name in ctx.inspected_models():
            rows.extend(measure(cfg, ctx, name, sets, ctx.inversion_preset()))
        new = pd.DataFrame(rows)[COLUMNS]
        p = ctx.protocol()
        stem = Path(cfg.out)
        default_out = Path(str(cfg.paths.results_dir)) / self.name
        command = self.command + ("" if ctx.preset("suite") in (None, "zoo") else f" suite={ctx.preset('suite')}") \
            + ("" if stem == default_out else f" 'out=${{paths.results_dir}}/{stem.name}'")
        told = notes(p, new, time.time() - started, speed_text, command)
        return StudyResult(new, stem=stem, tables={"": new},
                           merge=Merge(KEY, lambda table: markdown(table, told, self.title), sets=record),
                           figures=[FigureOut(figure(new, fresh_sets(p), color_by="trend",
                                                     what="Early-exit settings", by=BY),
                                              [Path(cfg.outputs.figures) / stem.name])])
