"""Image complexity: where Table 1's scores go wrong, against image complexity and brightness.

    python -m experiments.complexity            # `make complexity`, after `make reproduce-table1`

Reads Table 1's per-image scores (``scores``, default ``<outputs.table1>_scores.parquet``; LatentTracer's) and the
image files (by path, or, when the scores were made in another checkout, by SHA-256 among the suite's sets). Per
evaluation image: GLCM homogeneity as AEDR computes it, JPEG bytes per pixel at quality 50 (AEROBLADE's measure)
and brightness (:mod:`latenttracer.complexity`). Per inspected model:

* a scatter figure ``<outputs.figures>/complexity_<model>.{png,pdf}``: score (log) against each measure, belonging
  and non-belonging in two colours, the calibrated threshold as a line;
* the false positives (non-belonging at or below the threshold) and false negatives (belonging above it) with
  their measures and the medians of their class: ``<out>.csv``;
* a summary (``<out>_summary.csv``): error counts, the median measures of the errors against those of their
  class, and Spearman's rho of the score against each measure within each class.

``<out>.md`` holds both tables and a plain statement of what the zoo shows about the authors' claim (false
positives on bright images, false negatives on complex ones).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import MISSING
from scipy.stats import spearmanr

from latenttracer import tables
from latenttracer.complexity import brightness, glcm_homogeneity, jpeg_bytes_per_pixel
from latenttracer.images import file_sha256
from latenttracer.metrics import calibrate_threshold
from latenttracer.studies.base import STUDIES, Context, FigureOut, ReportSection, Study, StudyResult

log = logging.getLogger(__name__)

MEASURES = {"homogeneity": "GLCM homogeneity (AEDR)", "jpeg_bpp": "JPEG q50 bytes / pixel (AEROBLADE)",
            "brightness": "brightness (mean luma)"}
COMPLEX = {"homogeneity": "lower", "jpeg_bpp": "higher", "brightness": None}   # which way is "more complex"


def resolve_paths(cfg: Any, ctx: Context, scores: pd.DataFrame) -> pd.Series:
    """A readable file for each row: its ``path`` when it exists, else the suite's file with the same SHA-256."""
    paths = scores["path"].astype(str)
    exists = paths.map(lambda p: Path(p).is_file())
    if exists.all():
        return paths
    by_sha = {}
    for parts in ctx.image_sets().values():
        for files in parts.values():
            for f in files:
                by_sha.setdefault(file_sha256(f), str(f))
    resolved = paths.where(exists, scores["sha256"].map(by_sha))
    missing = resolved.isna()
    if missing.any():
        raise FileNotFoundError(f"{cfg.scores}: {int(missing.sum())} scored image(s) not found, by path or by "
                                f"SHA-256 among the suite's sets (first: {paths[missing].iloc[0]})")
    return resolved


def measures(files: pd.Series) -> pd.DataFrame:
    """One row per distinct file: homogeneity, JPEG bytes per pixel (q50), brightness."""
    unique = files.drop_duplicates()
    return pd.DataFrame({"file": unique.values,
                         "homogeneity": [glcm_homogeneity(f) for f in unique],
                         "jpeg_bpp": [jpeg_bytes_per_pixel(f, 50) for f in unique],
                         "brightness": [brightness(f) for f in unique]})


def classified(cfg: Any, ctx: Context, scores: pd.DataFrame) -> pd.DataFrame:
    """Evaluation rows with their class, threshold, measures and outcome (TP / FN / TN / FP)."""
    scores = scores.assign(file=resolve_paths(cfg, ctx, scores))
    ok = scores[scores["status"] == "ok"]
    target = ctx.split_settings().target_tpr
    thresholds = {name: calibrate_threshold(g.loc[(g["source"] == name) & (g["split"] == "calibration"), "score"],
                                            target) for name, g in ok.groupby("inspected", sort=False)}
    rows = ok[ok["split"] == "evaluation"].copy()
    rows["belonging"] = rows["source"] == rows["inspected"]
    rows["threshold"] = rows["inspected"].map(thresholds)
    accepted = rows["score"] <= rows["threshold"]
    rows["outcome"] = np.select([rows["belonging"] & accepted, rows["belonging"] & ~accepted, ~rows["belonging"]
                                 & accepted], ["TP", "FN", "FP"], "TN")
    return rows.merge(measures(rows["file"]), on="file", how="left")


def errors_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The false positives and negatives with their measures and the medians of their class."""
    medians = rows.groupby(["inspected", "belonging"])[list(MEASURES)].median().add_prefix("class_median_")
    err = rows[rows["outcome"].isin(["FP", "FN"])].join(medians, on=["inspected", "belonging"])
    err = err.assign(image=err["file"].map(lambda f: f"{Path(f).parent.name}/{Path(f).name}"))
    cols = ["inspected", "outcome", "source", "image", "score", "threshold", *MEASURES,
            *(f"class_median_{m}" for m in MEASURES)]
    return err[cols].sort_values(["inspected", "outcome", "score"]).reset_index(drop=True)


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per inspected model and class: counts, median measures of the errors vs the class, Spearman rho."""
    out = []
    for (name, belonging), g in rows.groupby(["inspected", "belonging"], sort=False):
        error = "FN" if belonging else "FP"
        wrong = g[g["outcome"] == error]
        row = {"inspected": name, "class": "belonging" if belonging else "non-belonging", "n": len(g),
               "error": error, "n_errors": len(wrong)}
        for m in MEASURES:
            row[f"{m}_errors_median"] = float(wrong[m].median()) if len(wrong) else np.nan
            row[f"{m}_class_median"] = float(g[m].median())
            rho, p = spearmanr(g["score"], g[m]) if g[m].nunique() > 1 else (np.nan, np.nan)
            row[f"rho_{m}"], row[f"p_{m}"] = float(rho), float(p)
        out.append(row)
    return pd.DataFrame(out)


def verdict(summary: pd.DataFrame) -> list[str]:
    """Plain sentences on the authors' claim, from the summary."""
    fp, fn = summary[summary["error"] == "FP"], summary[summary["error"] == "FN"]
    lines = []
    n_fp = int(fp["n_errors"].sum())
    brighter = fp[fp["n_errors"] > 0]
    n_brighter = int((brighter["brightness_errors_median"] > brighter["brightness_class_median"]).sum())
    bright = "supported" if len(brighter) and n_brighter > len(brighter) / 2 else "not supported"
    lines.append(f"False positives: {n_fp} in all; for {n_brighter} of the {len(brighter)} inspected models with "
                 "any, their median brightness is above that of the non-belonging images "
                 f"(claim: false positives on bright images {bright} here).")
    simpler = int((brighter["jpeg_bpp_errors_median"] < brighter["jpeg_bpp_class_median"]).sum())
    lines.append(f"For {simpler} of those {len(brighter)}, the false positives' median JPEG size is below that of the "
                 "non-belonging images: simple images are the ones wrongly claimed.")
    n_fn = int(fn["n_errors"].sum())
    with_fn = fn[fn["n_errors"] > 0]
    more = int((with_fn["jpeg_bpp_errors_median"] > with_fn["jpeg_bpp_class_median"]).sum())
    less_h = int((with_fn["homogeneity_errors_median"] < with_fn["homogeneity_class_median"]).sum())
    complex_ = "supported" if len(with_fn) and more > len(with_fn) / 2 else "not supported"
    lines.append(f"False negatives: {n_fn} in all; for {more} of the {len(with_fn)} inspected models with any, their "
                 f"median JPEG size is above that of the belonging images (more complex), and for {less_h} their "
                 f"median homogeneity is below it (claim: false negatives on complex images {complex_} here).")
    rho = fn["rho_jpeg_bpp"]
    lines.append("Within the belonging class, Spearman's rho of the score against JPEG size ranges "
                 f"{rho.min():.2f}..{rho.max():.2f} over the inspected models (positive: complex images score higher, "
                 "i.e. look less belonging).")
    return lines


def figure(rows: pd.DataFrame, name: str):
    """Score (log) against each measure, belonging vs non-belonging, threshold line."""
    plt = tables._pyplot()
    g = rows[rows["inspected"] == name]
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4 * len(MEASURES), 3.4), sharey=True)
    threshold = float(g["threshold"].iloc[0])
    for ax, (m, label) in zip(axes, MEASURES.items()):
        for belonging, colour, text in ((False, "tab:orange", "non-belonging"), (True, "tab:blue", "belonging")):
            part = g[g["belonging"] == belonging]
            ax.scatter(part[m], part["score"], s=7, alpha=0.55, color=colour, label=f"{text} ({len(part)})", lw=0)
        ax.axhline(threshold, color="black", lw=0.8, ls="--", label="threshold (95% TPR)")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("LatentTracer score (min inversion MSE)")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{name} inspecting: score against image complexity and brightness (evaluation images)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def formatted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.apply(lambda col: col.map(lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)))


def markdown(errors: pd.DataFrame, summary: pd.DataFrame, lines: list[str]) -> str:
    short = summary[["inspected", "class", "n", "error", "n_errors",
                     *(c for m in MEASURES for c in (f"{m}_errors_median", f"{m}_class_median")),
                     *(f"rho_{m}" for m in MEASURES)]]
    return "\n".join([
        "# Image complexity", "",
        "Table 1's LatentTracer scores of the evaluation images against GLCM homogeneity (AEDR's; lower = more "
        "complex), JPEG q50 bytes per pixel (AEROBLADE's; higher = more complex) and brightness. Errors at the "
        "threshold calibrated on each inspected model's calibration half (95% TPR).", "",
        *(f"- {line}" for line in lines), "",
        "## Summary (medians of the errors vs their class; Spearman rho of score vs measure within the class)", "",
        tables.markdown_table(formatted(short)), "",
        f"## False positives and negatives ({len(errors)})", "",
        tables.markdown_table(formatted(errors))]) + "\n"


@dataclass
class ComplexityConfig:
    scores: str = MISSING   # Table 1's per-image scores (LatentTracer's)
    out: str = MISSING
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])


@STUDIES.register
class Complexity(Study):
    name = "complexity"
    config = ComplexityConfig
    section = ReportSection("Image complexity", ("complexity_summary.csv", "complexity.csv"), ("complexity_*.png",),
                            "make complexity", order=50)

    def run(self, cfg: Any, ctx: Context) -> StudyResult:
        """The summary (per inspected model and class) as the result's frame."""
        path = Path(cfg.scores)
        if not path.is_file():
            raise FileNotFoundError(f"scores: {path} does not exist; run `make reproduce-table1` first")
        rows = classified(cfg, ctx, pd.read_parquet(path))
        errors, summary = errors_table(rows), summary_table(rows)
        stem = Path(cfg.out)
        return StudyResult(
            summary, stem=stem, markdown=markdown(errors, summary, verdict(summary)),
            tables={"": errors, "_summary": summary}, log_tables={"complexity": summary},
            figures=[FigureOut(figure(rows, name), [Path(cfg.outputs.figures) / f"{stem.name}_{name}"],
                               list(cfg.formats)) for name in rows["inspected"].unique()])
