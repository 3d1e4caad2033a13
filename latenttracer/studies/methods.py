"""Peer methods in the Table 1 protocol: one job per method (``method=``), then one aggregation.

    python -m experiments.methods -m hydra/launcher=joblib hydra.launcher.n_jobs=2 threads=1 \\
        method=ronan,latenttracer,aedr,aeroblade_l2,aeroblade_ssim      # one job per method preset
    python -m experiments.methods aggregate=true                         # -> results/methods.{md,csv,tex} + figure

A job scores the Table 1 grid of every inspected model with its method through the shared results store
(LatentTracer's rows are Table 1's: nothing is recomputed), thresholds each inspected model with the method's
own calibration (:meth:`~latenttracer.methods.Method.calibrate`), and times a small probe: ``method.probe``
images of the model's own evaluation half, scored again **without** the store after one warm-up image, in
this job (its ``threads``). It writes its cells (with ``method``, ``preset``, ``seconds_per_image``...) and
per-image scores into its output directory and into ``outputs.method_runs/<preset>_{cells.csv,scores.parquet}``
(what the aggregation and the attribution study read). The aggregation publishes every preset found there:
``outputs.methods`` + ``.md/.csv/.tex`` (rows: method / inspected model) and
``<outputs.figures>/methods_auc_vs_seconds.{png,pdf}``. Config: ``conf/methods.yaml``, ``conf/method/``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from latenttracer import protocol, tables
from latenttracer.metrics import median_ratio
from latenttracer.studies.base import STUDIES, Context, FigureOut, ReportSection, Study, StudyResult

log = logging.getLogger(__name__)

ROW = "method / inspected"
METRICS = ["auc", "ap", "tpr_at_1fpr", "tpr_at_5fpr", "accuracy"]
FIGURE = "methods_auc_vs_seconds"


@dataclass
class MethodsConfig:
    inspected: list[str] | None = None   # names in suite.models; null: every model of the suite
    aggregate: bool = False              # true: publish the tables and figure from the runs (no scoring)


# -- one method -------------------------------------------------------------------------------------------------
def probe_seconds(ctx: Context, name: str, paths: list) -> dict:
    """Seconds per image of the job's method on ``paths`` against model ``name``: one warm-up image, then the
    images scored together without the store (nothing cached), in this process."""
    spec = ctx.model_spec(name)
    ae = ctx.load_model(spec)
    scoring = ctx.method(dtype=spec.dtype)
    ctx.score_paths(ae, paths[:1], scoring, store=None)  # warm-up (allocations, lazy imports)
    t0 = time.perf_counter()
    ctx.score_paths(ae, paths, scoring, store=None)
    seconds = time.perf_counter() - t0
    return {"seconds_per_image": seconds / len(paths), "probe_images": len(paths)}


def run_method(cfg: Any, ctx: Context) -> StudyResult:
    """Score the grid with ``cfg.method``, time the probe; the job's files as the result."""
    preset = ctx.method_preset()
    scoring = ctx.method()
    target_tpr = ctx.split_settings().target_tpr
    p = ctx.protocol()
    sets = ctx.image_sets()
    inspected = ctx.inspected_models()
    cells, scores = protocol.evaluate(sets, inspected, ctx.method_scorer(), target_tpr=target_tpr,
                                      calibrate=lambda s: scoring.calibrate(s, target_tpr),
                                      extra_columns=scoring.components)
    timing = {}
    for name in inspected:
        paths = [str(x) for x in sets[name]["evaluation"][:max(1, int(cfg.method.probe))]]
        timing[name] = probe_seconds(ctx, name, paths)
        log.info("%s on %s: %.4g s/image (%d images)", scoring.label, name, timing[name]["seconds_per_image"],
                 len(paths))
    cells.insert(0, "method", scoring.label)
    cells.insert(1, "preset", preset)
    cells["seconds_per_image"] = cells["inspected"].map(lambda n: timing[n]["seconds_per_image"])
    cells["probe_images"] = cells["inspected"].map(lambda n: timing[n]["probe_images"])
    cells["threads"] = torch.get_num_threads()
    cells["torch"] = torch.__version__
    cells["n_generated"], cells["n_real"] = p["n_generated"], p["n_real"]
    scores.insert(0, "method", scoring.label)
    scores = scores.drop(columns=["trajectory"], errors="ignore")
    runs, part = Path(cfg.outputs.method_runs), run_name(preset, cfg.inspected)
    return StudyResult(
        cells, objective=float(np.mean(cells.loc[cells["source"] == protocol.ALL, "auc"])),
        files={ctx.output_dir / "cells.csv": cells, ctx.output_dir / "scores.parquet": scores,
               runs / f"{part}_scores.parquet": scores, runs / f"{part}_cells.csv": cells},
        metrics=protocol.flat_metrics(cells, f"methods/{scoring.label}"), log_tables={f"methods-{preset}": cells})


# -- aggregation ------------------------------------------------------------------------------------------------
def run_name(preset: str, inspected) -> str:
    """File stem of a job's results: ``<preset>`` for every model of the suite, ``<preset>@<m1+m2>`` for a part.

    A slow preset (RONAN) is split into one job per inspected model (``inspected=[kl-a]``, ...) so that its
    models run on every core; :func:`load_runs` joins the parts again.
    """
    return preset if not inspected else f"{preset}@{'+'.join(str(m) for m in inspected)}"


def load_runs(runs: Path) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{preset: (cells, per-image scores)} from every ``<preset>[@<models>]_{cells.csv,scores.parquet}`` under
    ``runs``; the parts of a preset are joined, and where two files hold the same inspected model (a whole run
    and a part), the newer file's rows win."""
    found: dict[str, list[tuple[float, pd.DataFrame, pd.DataFrame]]] = {}
    for cells_file in Path(runs).glob("*_cells.csv"):
        stem = cells_file.name[: -len("_cells.csv")]
        scores_file = cells_file.with_name(f"{stem}_scores.parquet")
        if not scores_file.is_file():
            raise FileNotFoundError(f"{scores_file}: missing beside {cells_file.name}; rerun that method job")
        found.setdefault(stem.split("@")[0], []).append(
            (cells_file.stat().st_mtime, pd.read_csv(cells_file), pd.read_parquet(scores_file)))
    out = {}
    for preset in sorted(found):
        parts = sorted(found[preset], key=lambda t: t[0])  # oldest first: newer rows replace older ones
        out[preset] = (newest_rows([c for _, c, _ in parts]), newest_rows([s for _, _, s in parts]))
    return out


def newest_rows(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """``frames`` (oldest first) joined, each inspected model's rows taken from the last frame that has it."""
    newest = {m: i for i, f in enumerate(frames) for m in f["inspected"].unique()}
    joined = pd.concat([f.assign(_part=i) for i, f in enumerate(frames)], ignore_index=True)
    keep = joined["_part"] == joined["inspected"].map(newest)
    return joined[keep].drop(columns="_part").reset_index(drop=True)


def separation(loaded: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """Per (method, inspected model): the median score of its own evaluation images and of every other source's
    (evaluation halves and real), and their ratio. A ratio near 1 is the collapse AEDR reports on FLUX / SD 3.5,
    where belonging and non-belonging losses fall to the same level."""
    rows = []
    for cells, scores in loaded.values():
        ok = scores[(scores["status"] == "ok") & (scores["split"] == "evaluation")]
        for inspected, group in ok.groupby("inspected", sort=False):
            own = group.loc[group["source"] == inspected, "score"]
            other = group.loc[group["source"] != inspected, "score"]
            if len(own) and len(other):
                ratio, lo, hi = median_ratio(own, other)
                rows.append({"method": str(cells["method"].iloc[0]), "inspected": inspected,
                             "median_belonging": float(own.median()), "median_non_belonging": float(other.median()),
                             "ratio": ratio, "ratio_lo": lo, "ratio_hi": hi})
    return pd.DataFrame(rows)


def read_runs(runs: Path) -> pd.DataFrame:
    """Every preset's cells under ``runs`` (:func:`load_runs`), concatenated (presets in name order)."""
    loaded = load_runs(runs)
    if not loaded:
        raise FileNotFoundError(f"{runs}: no method results (*_cells.csv); run the methods multirun first "
                                f"(make compare-methods)")
    cells = pd.concat([c for c, _ in loaded.values()], ignore_index=True)
    # A method label run by two presets (ronan, ronan_full) is named by its preset too.
    shared = cells.groupby("method")["preset"].transform("nunique") > 1
    cells["method"] = np.where(shared, cells["method"] + " (" + cells["preset"] + ")", cells["method"])
    return cells


def aggregate_notes(p: dict, cells: pd.DataFrame, context: str) -> list[str]:
    """How the comparison was made; ``p``: the job's protocol, ``context``: the machine speed line."""
    sized = cells.drop_duplicates("method")
    sizes = "; ".join(f"`{r.method}`: {int(r.n_generated)} generated per model "
                      f"({round(p['calibration_fraction'] * r.n_generated)} calibration) + {int(r.n_real)} real"
                      for r in sized.itertuples())
    timing = cells.drop_duplicates(["method", "inspected"]).pivot_table(
        index="method", columns="inspected", values="seconds_per_image", aggfunc="last", sort=False)
    probe = cells.drop_duplicates("method").set_index("method")["probe_images"]
    lines = [
        f"Suite `{p['suite']}`, the Table 1 protocol: per inspected model, its calibration half sets the method's "
        f"own threshold ({p['target_tpr']:.0%} TPR: empirical quantile, KDE for aedr); every other source's "
        f"evaluation half and the real crops are non-belonging. Lower score = more belonging for every method.",
        f"Image sets per method: {sizes}.",
        "aeroblade[l2] and aeroblade[ssim] are AEROBLADE's weight-free ablation distances, not LPIPS.",
        f"Seconds per image: measured inside each method's job (torch {cells['torch'].iloc[0]}, "
        f"{int(cells['threads'].iloc[0])} thread(s) per job, on a machine shared with other jobs"
        f"): the first images of the inspected model's own evaluation half scored without the store after one "
        f"warm-up image. Machine speed, measured by this aggregation: {context}.",
        "",
        tables.markdown_table([[f"{m} ({int(probe[m])})", *(f"{v:.3g} s" if v == v else "–" for v in row.values)]
                               for m, row in timing.iterrows()], ["method (probe images)", *timing.columns]),
    ]
    return lines


def auc_vs_seconds(cells: pd.DataFrame):
    """Pooled AUC against seconds per image (log x): one point per (method, inspected model), with its 95%
    interval where the cells have one."""
    plt = tables._pyplot()
    pooled = cells[cells["source"] == protocol.ALL]
    methods = list(dict.fromkeys(pooled["method"]))
    models = list(dict.fromkeys(pooled["inspected"]))
    markers = "osD^vP*Xh<>p"
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    for i, m in enumerate(methods):
        for j, name in enumerate(models):
            r = pooled[(pooled["method"] == m) & (pooled["inspected"] == name)]
            if len(r):
                if tables.has_interval(r, "auc"):  # the AUC's 95% interval as a vertical bar
                    tables.plot_metric(ax, r, "seconds_per_image", "auc", "none", color=colors(i % 10), zorder=2)
                ax.scatter(r["seconds_per_image"], r["auc"], color=colors(i % 10), marker=markers[j % len(markers)],
                           s=46, edgecolor="black", linewidth=0.4, zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per image (log scale, measured in the same run)")
    ax.set_ylabel("AUC, every non-belonging source pooled")
    ax.grid(True, which="both", alpha=0.3)
    from matplotlib.lines import Line2D

    by_method = [Line2D([], [], color=colors(i % 10), marker="o", linestyle="", label=m) for i, m in enumerate(methods)]
    by_model = [Line2D([], [], color="gray", marker=markers[j % len(markers)], linestyle="", label=n)
                for j, n in enumerate(models)]
    first = ax.legend(handles=by_method, title="method", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.add_artist(first)
    ax.legend(handles=by_model, title="inspected model", loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8)
    return fig


def aggregate(cfg: Any, ctx: Context) -> StudyResult:
    """Every method run found under ``outputs.method_runs`` as one table (and the AUC-vs-seconds figure)."""
    from data_gen.zoo.speed import machine_speed

    cells = read_runs(Path(cfg.outputs.method_runs))
    cells.insert(0, ROW, cells["method"] + " / " + cells["inspected"])
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    notes = aggregate_notes(ctx.protocol(), cells, machine_speed(1))
    sep = separation(load_runs(Path(cfg.outputs.method_runs)))
    if len(sep):
        notes += ["", "Median score of each inspected model's own evaluation images (belonging) and of every other "
                      "source's (non-belonging), and their ratio with its 95% interval (seeded stratified bootstrap; "
                      "near 1: the two collapse onto one level, as AEDR reports for 16-channel VAEs):", "",
                  tables.markdown_table([[f"{r.method} / {r.inspected}", f"{r.median_belonging:.3g}",
                                          f"{r.median_non_belonging:.3g}", tables.fmt_metric(r._asdict(), "ratio")]
                                         for r in sep.itertuples()],
                                        [ROW, "median belonging", "median non-belonging", "ratio"])]
    title = f"Methods compared ({cfg.suite.name})"
    return StudyResult(
        cells, objective=float(np.mean(cells.loc[cells["source"] == protocol.ALL, "auc"])),
        stem=Path(cfg.outputs.methods), markdown=tables.tables_markdown(cells, METRICS, title, notes, rows=ROW),
        tables={"": cells}, latex=tables.tables_latex(cells, METRICS, title, rows=ROW),
        figures=[FigureOut(auc_vs_seconds(cells), [Path(cfg.outputs.figures) / FIGURE])])


@STUDIES.register
class Methods(Study):
    name = "methods"
    config = MethodsConfig
    section = ReportSection("Methods comparison", ("methods.csv",), ("methods*.png",), "make compare-methods",
                            order=10)

    def run(self, cfg: Any, ctx: Context) -> StudyResult:
        """One method's job, or (``aggregate=true``) the comparison of every job so far; the objective is the mean
        pooled AUC (of this job's method, or of every method)."""
        return aggregate(cfg, ctx) if cfg.aggregate else run_method(cfg, ctx)
