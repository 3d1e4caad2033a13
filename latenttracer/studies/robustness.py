"""Robustness: Table 1's detection under AEROBLADE's image perturbations, per method.

    python -m experiments.robustness                              # `make robustness` (conf/robustness.yaml)
    python -m experiments.robustness perturbation=aeroblade_grid  # the 21 conditions
    python -m experiments.robustness experiment=robustness_full   # + every member, every image, RONAN

For each inspected model and method: the threshold is calibrated (the method's own rule, ``Method.calibrate``)
on the model's CLEAN calibration half; the evaluation images (its own evaluation half = belonging; a seeded subset
of every other source's evaluation half and of the real set = non-belonging) are perturbed by each condition
(:func:`latenttracer.perturbations.perturbed_set`, cached under ``perturbed_dir``) and scored through the shared
store (a perturbed image is a new file, so a new cache key). One row per (method, inspected, perturbation,
strength), the clean condition included: pooled AUC, and accuracy / TPR / FPR at the clean threshold.
Publishes ``<out>.{md,csv}`` and ``<outputs.figures>/<out name>.{png,pdf}`` (one panel per perturbation kind,
AUC against strength, one line per method, averaged over the inspected models).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import MISSING

from latenttracer import protocol, tables
from latenttracer.metrics import detection_metrics
from latenttracer.perturbations import Perturbation, kind_of, parse_grid, perturbed_set
from latenttracer.reencoding import CLEAN, calibration_sets, family_name, parse_family, pooled_threshold
from latenttracer.studies.base import STUDIES, Context, FigureOut, MethodEntry, ReportSection, Study, StudyResult

log = logging.getLogger(__name__)

COLUMNS = ["method", "calibration", "inspected", "perturbation", "strength", "condition",
           *(f"{k}{b}" for k in ("auc", "accuracy", "tpr", "fpr") for b in ("", "_lo", "_hi")),
           "threshold", "n_belonging", "n_non_belonging", "n_failed"]


@dataclass
class PerturbationGrid:
    """``conf/perturbation/*.yaml``: a named list of conditions, each ``kind:strength`` (``jpeg:90``), checked by
    :func:`latenttracer.perturbations.parse_grid` when the job starts (an unknown kind or a bad strength is an
    error naming it)."""

    name: str = MISSING
    conditions: list[str] = field(default_factory=list)


@dataclass
class RobustnessConfig:
    inspected: list[str] | None = None
    perturbation: PerturbationGrid = field(default_factory=PerturbationGrid)
    methods: list[MethodEntry] = field(default_factory=list)
    subset_seed: int = 0
    perturbed_dir: str = MISSING
    # thresholds: "clean" (the calibration half as it is) and/or perturbation families (latenttracer.reencoding:
    # the calibration half and its perturbed copies pooled), one set of accuracy/TPR/FPR rows each
    calibration: list[str] = field(default_factory=lambda: [CLEAN])
    calibration_n: int | None = None  # perturbed copies of this many calibration images (seeded subset; null: all)
    out: str = MISSING
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])


def grid(cfg: Any) -> tuple[Perturbation, ...]:
    """The conditions of ``cfg.perturbation`` (errors name the YAML's key)."""
    try:
        return parse_grid(list(cfg.perturbation.conditions))
    except (TypeError, ValueError) as err:
        raise ValueError(f"perturbation {cfg.perturbation.name!r} (conf/perturbation/), key conditions: {err}") from err


def cell_images(sets: protocol.ImageSets, inspected: str, entry: Any, seed: int) -> dict[str, list[Path]]:
    """{"belonging": [...], "non_belonging": [...]}: the evaluation images of one cell, subset per the entry."""
    own = list(sets[inspected]["evaluation"])
    n_own = entry.get("n_belonging")
    belonging = protocol.subset(own, int(n_own), seed) if n_own is not None else own
    n_src = entry.get("n_per_source")
    others = []
    for source, parts in sets.items():
        if source == inspected:
            continue
        paths = list(parts["evaluation"])
        others += protocol.subset(paths, int(n_src), seed) if n_src is not None else paths
    return {"belonging": belonging, "non_belonging": others}


def condition_row(scores: pd.DataFrame, images: dict[str, list[Path]], threshold: float) -> dict:
    """Metrics of one condition: ``scores`` has a row (path, score, status) per image of ``images``."""
    by_path = scores.set_index("path")
    parts = {k: by_path.reindex([str(p) for p in v]) for k, v in images.items()}
    ok = {k: f.loc[f["status"] == "ok", "score"] for k, f in parts.items()}
    failed = sum(int((f["status"] != "ok").sum()) for f in parts.values())
    m = detection_metrics(ok["belonging"], ok["non_belonging"], threshold)
    rates = {f"{k}{b}": getattr(m, f"{k}{b}") for k in ("auc", "accuracy", "tpr", "fpr") for b in ("", "_lo", "_hi")}
    return {**rates, "threshold": threshold,
            "n_belonging": m.n_belonging, "n_non_belonging": m.n_non_belonging, "n_failed": failed}


def calibrations(cfg: Any) -> dict[str, tuple[Perturbation, ...]]:
    """``cfg.calibration`` as {name: family conditions} (``clean``: none); errors name the key."""
    out = {}
    for spec in cfg.calibration:
        try:
            name = family_name(str(spec))
            out[name] = () if name == CLEAN else parse_family(name)
        except ValueError as err:
            raise ValueError(f"robustness, key calibration: {err}") from err
    if not out:
        raise ValueError("robustness, key calibration: give at least one ('clean' or a family such as "
                         "'jpeg:90..70,downscale:0.5')")
    return out


def thresholds(cfg: Any, ctx: Context, ae, method, calibration_paths: list[Path], store,
               families: dict[str, tuple[Perturbation, ...]]) -> dict[str, float]:
    """The method's threshold under each calibration setting (clean, or clean + perturbed copies pooled)."""
    target = ctx.split_settings().target_tpr
    clean = ctx.score_paths(ae, calibration_paths, method, store=store)
    clean_ok = clean.loc[clean["status"] == "ok", "score"]
    n = cfg.calibration_n
    some = protocol.subset(calibration_paths, int(n), int(cfg.subset_seed)) if n is not None else calibration_paths
    out = {}
    for name, family in families.items():
        scores = {CLEAN: clean_ok}
        for cond, paths in calibration_sets(some, family, cfg.perturbed_dir).items():
            if cond != CLEAN:
                frame = ctx.score_paths(ae, [str(p) for p in paths], method, store=store)
                scores[cond] = frame.loc[frame["status"] == "ok", "score"]
        out[name] = pooled_threshold(method, scores, target)
    return out


def run_model(cfg: Any, ctx: Context, sets: protocol.ImageSets, inspected: str,
              conditions: tuple[Perturbation, ...]) -> list[dict]:
    """Every (method, calibration, condition) row of one inspected model."""
    spec = ctx.model_spec(inspected)
    ae = ctx.load_model(spec)
    store = ctx.store()
    families = calibrations(cfg)
    rows = []
    for entry in cfg.methods:
        method = ctx.method(entry, dtype=spec.dtype)
        limits = thresholds(cfg, ctx, ae, method, list(sets[inspected]["calibration"]), store, families)
        images = cell_images(sets, inspected, entry, int(cfg.subset_seed))
        for condition in (None, *conditions):
            if condition is None:
                chosen = images
            else:
                chosen = {k: perturbed_set(v, condition, cfg.perturbed_dir) for k, v in images.items()}
            paths = list(dict.fromkeys(str(p) for v in chosen.values() for p in v))
            scores = ctx.score_paths(ae, paths, method, store=store)
            for calibration, threshold in limits.items():
                row = {"method": method.label, "calibration": calibration, "inspected": inspected,
                       "perturbation": CLEAN if condition is None else condition.kind,
                       "strength": np.nan if condition is None else float(condition.strength),
                       "condition": CLEAN if condition is None else condition.name,
                       **condition_row(scores, chosen, threshold)}
                log.info("%s (%s) %s %s: AUC %.3f, accuracy %.3f", row["method"], calibration, inspected,
                         row["condition"], row["auc"], row["accuracy"])
                rows.append(row)
    return rows


def notes(cfg: Any, p: dict, conditions: tuple[Perturbation, ...], rows: pd.DataFrame) -> list[str]:
    """How the table was made; ``p``: the job's protocol (:meth:`Context.protocol`)."""
    sizes = []
    for entry in cfg.methods:
        n_b, n_s = entry.get("n_belonging"), entry.get("n_per_source")
        label = rows.loc[rows["method"].str.startswith(str(entry.name)), "method"]
        sizes.append(f"{label.iloc[0] if len(label) else entry.name}: "
                     + ("every evaluation image" if n_b is None and n_s is None else
                        f"{n_b if n_b is not None else 'all'} belonging / {n_s if n_s is not None else 'all'} per "
                        "non-belonging source (seeded subsets)"))
    return [
        f"Suite `{p['suite']}` ({p['n_generated']} images per model, split {p['calibration_fraction']:g}, seed "
        f"{p['split_seed']}); perturbation grid `{cfg.perturbation.name}` ({len(conditions)} conditions).",
        "Threshold per (method, calibration, inspected model) at "
        f"{p['target_tpr']:.0%} TPR (the method's own rule): `clean` on the model's calibration half as it is; a "
        "perturbation family (e.g. `jpeg:90..70,downscale:0.5`, latenttracer.reencoding) on the calibration half "
        "and its perturbed copies pooled"
        + (f" (copies of a seeded subset of {cfg.calibration_n} calibration images per model)"
           if cfg.calibration_n is not None else "")
        + ". Every evaluation image, belonging and non-belonging, is perturbed. AUC pools every non-belonging "
        "source and needs no threshold (one table); accuracy, TPR and FPR are at each calibration's threshold.",
        "Images per cell: " + "; ".join(sizes) + ".",
    ]


def table_markdown(rows: pd.DataFrame, notes: list[str], conditions: tuple[Perturbation, ...]) -> str:
    """One table per metric: rows (method, inspected), columns the conditions in grid order (clean first)."""
    order = [CLEAN, *[c.name for c in conditions]]
    parts = ["# Robustness", "", *notes]
    first = rows["calibration"].iloc[0] if len(rows) else CLEAN
    for metric in ("auc", "accuracy", "tpr", "fpr"):
        index = ["method", "inspected"] if metric == "auc" else ["method", "calibration", "inspected"]
        mine = rows[rows["calibration"] == first] if metric == "auc" else rows
        wide = tables.pivot_formatted(mine, index, "condition", metric)
        wide = wide[[c for c in order if c in wide.columns]]
        body = [[*key, *r] for key, r in wide.iterrows()]
        heading = f"{metric} [95% CI]" if tables.has_interval(mine, metric) else metric
        parts += ["", f"## {heading}", "", tables.markdown_table(body, [*index, *wide.columns])]
    return "\n".join(parts) + "\n"


def figure(rows: pd.DataFrame):
    """One panel per perturbation kind (grid order): AUC against strength, one line per method (mean over
    inspected models, the range over them shaded; with one inspected model, its AUC with 95% error bars); the
    clean AUC as the dotted line of the same colour."""
    plt = tables._pyplot()
    rows = rows[rows["calibration"] == rows["calibration"].iloc[0]]  # AUC needs no threshold: one calibration
    kinds = [k for k in dict.fromkeys(rows["perturbation"]) if k != CLEAN]
    methods = list(dict.fromkeys(rows["method"]))
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(3.2 * max(1, len(kinds)), 3.2), sharey=True,
                             squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, kind in zip(axes[0], kinds):
        for i, method in enumerate(methods):
            colour = colours[i % len(colours)]
            mine = rows[rows["method"] == method]
            clean = mine.loc[mine["perturbation"] == CLEAN, "auc"].mean()
            pert = mine[mine["perturbation"] == kind].groupby("strength")["auc"].agg(["mean", "min", "max"])
            if mine["inspected"].nunique() == 1:  # one model: its AUC with the 95% interval as error bars
                one = mine[mine["perturbation"] == kind].sort_values("strength")
                tables.plot_metric(ax, one, "strength", "auc", "o-", color=colour, label=method, ms=4)
            else:
                ax.plot(pert.index, pert["mean"], "o-", color=colour, label=method, ms=4)
            if mine["inspected"].nunique() > 1:
                ax.fill_between(pert.index, pert["min"], pert["max"], color=colour, alpha=0.15, lw=0)
            ax.axhline(clean, color=colour, ls=":", lw=1)
        ax.set_title(kind)
        ax.set_xlabel(kind_of(kind).parameter)
        if kind_of(kind).descending:
            ax.invert_xaxis()  # stronger to the right
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("AUC (pooled non-belonging)")
    inspected = ", ".join(dict.fromkeys(rows["inspected"]))
    fig.suptitle(f"AUC under perturbation (mean over inspected: {inspected}; dotted: clean)", fontsize=9)
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


@STUDIES.register
class Robustness(Study):
    name = "robustness"
    config = RobustnessConfig
    section = ReportSection("Robustness", ("robustness.csv",), ("robustness*.png",), "make robustness", order=30)

    def run(self, cfg: Any, ctx: Context) -> StudyResult:
        """Returns the rows; the objective is the mean AUC over the perturbed conditions."""
        conditions = grid(cfg)
        sets = ctx.image_sets()
        rows = []
        for name in ctx.inspected_models():
            rows += run_model(cfg, ctx, sets, name, conditions)
        frame = pd.DataFrame(rows, columns=COLUMNS)
        stem = Path(cfg.out)
        return StudyResult(
            frame, objective=float(frame.loc[(frame["perturbation"] != CLEAN)
                                             & (frame["calibration"] == frame["calibration"].iloc[0]), "auc"].mean()),
            stem=stem,
            markdown=table_markdown(frame, notes(cfg, ctx.protocol(), conditions, frame), conditions),
            tables={"": frame}, log_tables={"robustness": frame},
            figures=[FigureOut(figure(frame), [Path(cfg.outputs.figures) / stem.name], list(cfg.formats),
                               log_key="figures/robustness")])
