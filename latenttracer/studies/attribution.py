"""Attribution across the K models of the suite, per method, from stored grid scores only.

    python -m experiments.attribution            # -> results/attribution.{md,csv} + figures/confusion_<method>.*

The Table 1 grid scores every evaluation image (each model's evaluation half and the real crops) under every
inspected model, so attribution computes nothing: LatentTracer's scores and thresholds are Table 1's
(``outputs.table1`` + ``.csv`` / ``_scores.parquet``), the other methods' those of the methods study
(``outputs.method_runs/<preset>_{cells.csv,scores.parquet}``). Each model's threshold is the one its method
calibrated on the model's calibration half; calibration images are never attributed. The library functions
(:mod:`latenttracer.attribution`) assign each image to the strongest claim among the models whose threshold it
passes (``normalisation``), or to ``none``, and make the (K + 1) x (K + 1) confusion matrix (true source incl.
``real``; prediction incl. ``none``) and the accuracies. Config: ``conf/attribution.yaml``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latenttracer import attribution, protocol, tables
from latenttracer.intervals import wilson
from latenttracer.studies.base import STUDIES, Context, FigureOut, ReportSection, Study, StudyResult
from latenttracer.studies.methods import load_runs

log = logging.getLogger(__name__)

HARD_PAIR = ("kl-a", "kl-a-ft")  # same encoder, fine-tuned decoder: the hard case, outlined in the figures


def method_runs(cfg: Any) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{method label: (cells, per-image scores)}: LatentTracer from Table 1, then every method preset run."""
    runs: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    stem = Path(cfg.outputs.table1)
    t1_cells, t1_scores = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + "_scores.parquet")
    if t1_cells.is_file() and t1_scores.is_file():
        runs["latenttracer"] = (pd.read_csv(t1_cells), pd.read_parquet(t1_scores))
    else:
        log.warning("no Table 1 results (%s, %s): LatentTracer left out (run make reproduce-table1)",
                    t1_cells, t1_scores)
    for preset, (cells, scores) in load_runs(Path(cfg.outputs.method_runs)).items():
        label = str(cells["method"].iloc[0])
        if label == "latenttracer" and label in runs:
            continue  # the same rows as Table 1's
        if label in runs:
            label = f"{label} ({preset})"
        runs[label] = (cells, scores)
    if not runs:
        raise FileNotFoundError(f"no scores to attribute: neither {t1_scores} nor {cfg.outputs.method_runs}/"
                                "*_cells.csv exist; run make reproduce-table1 and/or make compare-methods")
    return runs


def attribute_method(cells: pd.DataFrame, scores: pd.DataFrame, suite_models: list[str],
                     normalisation: str = "ratio") -> tuple[pd.DataFrame, list[str]]:
    """Per evaluation image: true ``source`` and ``predicted`` (plus ``score_<m>``/``norm_<m>``); and the models."""
    models = [m for m in suite_models if m in set(scores["inspected"])]
    missing = [m for m in suite_models if m not in models]
    if missing:
        log.warning("models %s have no scores in this run: attributing among %s only", missing, models)
    if len(models) < 2:
        raise ValueError(f"attribution needs scores of at least 2 suite models; this run has {models}")
    ok = scores["status"] == "ok"
    values = scores.assign(score=scores["score"].where(ok))
    thresholds = {m: float(cells.loc[cells["inspected"] == m, "threshold"].iloc[0]) for m in models}
    calibration = {m: values.loc[(values["inspected"] == m) & (values["source"] == m)
                                 & (values["split"] == "calibration"), "score"].dropna().to_numpy() for m in models}
    evaluation = values[(values["split"] == "evaluation") & values["inspected"].isin(models)]
    wide = evaluation.pivot_table(index=["source", "path"], columns="inspected", values="score", aggfunc="first",
                                  dropna=False)
    wide = wide.reindex(columns=models)
    # Only images every model scored (the grid's evaluation images); NaN (failed) never claims.
    scored = evaluation.groupby(["source", "path"])["inspected"].nunique()
    wide = wide[scored.reindex(wide.index).to_numpy() == len(models)]
    sources = [s for s in [*models, *dict.fromkeys(evaluation["source"])] if s in set(wide.index.get_level_values(0))]
    wide = wide.loc[[s for s in dict.fromkeys(sources)]]
    result = attribution.attribute(wide, calibration, thresholds, normalisation)
    result.insert(0, "source", wide.index.get_level_values("source"))
    result.insert(1, "path", wide.index.get_level_values("path"))
    return result.reset_index(drop=True), models


def summary_rows(method: str, result: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """One row per true source (and ``all``): counts per prediction, n and accuracy."""
    matrix = attribution.confusion_matrix(result["source"], result["predicted"], models)
    acc = attribution.attribution_accuracy(result["source"], result["predicted"], models)
    rows = []
    for source, counts in matrix.iterrows():
        rows.append({"method": method, "source": source, "n": int(counts.sum()),
                     "accuracy": acc["per_source"].get(source, np.nan),
                     **{f"pred_{c}": int(v) for c, v in counts.items()}})
    total = matrix.sum()
    rows.append({"method": method, "source": protocol.ALL, "n": int(total.sum()), "accuracy": acc["overall"],
                 **{f"pred_{c}": int(v) for c, v in total.items()}})
    return with_accuracy_interval(pd.DataFrame(rows))


def with_accuracy_interval(table: pd.DataFrame) -> pd.DataFrame:
    """``accuracy_lo`` / ``accuracy_hi`` after ``accuracy``: the Wilson interval of the correct count out of ``n``
    (``accuracy * n`` is a whole number of images; a row without images gets NaN)."""
    bounds = [wilson(round(a * n), n) if n > 0 and a == a else (np.nan, np.nan)
              for a, n in zip(table["accuracy"], table["n"])]
    table = table.drop(columns=[c for c in ("accuracy_lo", "accuracy_hi") if c in table])
    at = table.columns.get_loc("accuracy") + 1
    table.insert(at, "accuracy_lo", [b[0] for b in bounds])
    table.insert(at + 1, "accuracy_hi", [b[1] for b in bounds])
    return table


def markdown(table: pd.DataFrame, title: str, notes: list[str]) -> str:
    lines = [f"# {title}", "", *notes, "", "## Accuracy per true source [95% CI, Wilson]", ""]
    acc = table.pivot_table(index="method", columns="source", values="accuracy", aggfunc="first", sort=False)
    acc = acc[[c for c in acc.columns if c != protocol.ALL] + [protocol.ALL]]
    rows = {(r["method"], r["source"]): r for r in table.to_dict("records")}
    lines.append(tables.markdown_table([[m, *(tables.fmt_metric(rows[m, s], "accuracy") if (m, s) in rows else "–"
                                              for s in acc.columns)] for m in acc.index],
                                       ["method \\ source", *acc.columns]))
    for method, group in table.groupby("method", sort=False):
        group = group[group["source"] != protocol.ALL]
        preds = [c for c in group.columns if c.startswith("pred_")]
        body = [[r["source"], *(f"**{r[c]}**" if r["source"] in HARD_PAIR and c[5:] in HARD_PAIR else str(r[c])
                                for c in preds), tables.fmt_metric(r, "accuracy")] for r in group.to_dict("records")]
        lines += ["", f"## Confusion: {method} (rows: true source; columns: prediction; **bold**: the kl-a / kl-a-ft "
                  "pair)", "", tables.markdown_table(body, ["source \\ predicted", *(c[5:] for c in preds),
                                                              "accuracy"])]
    return "\n".join(lines) + "\n"


def confusion_figure(method: str, result: pd.DataFrame, models: list[str]):
    """Heat map of the confusion matrix (colour: row fraction; text: counts), the kl-a / kl-a-ft cells outlined."""
    plt = tables._pyplot()
    from matplotlib.patches import Rectangle

    matrix = attribution.confusion_matrix(result["source"], result["predicted"], models)
    acc = attribution.attribution_accuracy(result["source"], result["predicted"], models)
    frac = matrix.div(matrix.sum(axis=1).replace(0, 1), axis=0)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * matrix.shape[1], 0.9 + 0.6 * matrix.shape[0]))
    im = ax.imshow(frac.to_numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix.iat[i, j]), ha="center", va="center", fontsize=9,
                    color="white" if frac.iat[i, j] > 0.6 else "black")
            if matrix.index[i] in HARD_PAIR and matrix.columns[j] in HARD_PAIR:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="crimson", linewidth=2))
    ax.set_xticks(range(matrix.shape[1]), list(matrix.columns), rotation=30, ha="right")
    ax.set_yticks(range(matrix.shape[0]), list(matrix.index))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true source")
    ax.set_title(f"{method}: accuracy {acc['overall']:.3f}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the row")
    return fig


def slug(label: str) -> str:
    return label.replace("[", "_").replace("]", "").replace(" (", "_").replace(")", "").replace(" ", "_")


@dataclass
class AttributionConfig:
    normalisation: str = "ratio"  # ratio: score / threshold (smaller claims more) | pvalue: among calibration scores
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])


@STUDIES.register
class Attribution(Study):
    name = "attribution"
    config = AttributionConfig
    section = ReportSection("Attribution", ("attribution.csv",), ("confusion*.png", "attribution*.png"),
                            "make attribution", order=20)

    def run(self, cfg: Any, ctx: Context) -> StudyResult:
        """One summary row per (method, true source); the objective is the mean overall accuracy."""
        suite_models = list(cfg.suite.models)
        summaries, per_image, figures, skipped = [], [], [], []
        for method, (cells, scores) in method_runs(cfg).items():
            try:
                result, models = attribute_method(cells, scores, suite_models, str(cfg.normalisation))
            except ValueError as err:
                log.warning("%s left out: %s", method, err)
                skipped.append(f"`{method}` left out: {err}.")
                continue
            summaries.append(summary_rows(method, result, models))
            per_image.append(result[["source", "path", "predicted"]].assign(method=method))
            figures.append(FigureOut(confusion_figure(method, result, models),
                                     [d / f"confusion_{slug(method)}" for d in (ctx.output_dir / "figures",
                                                                                Path(cfg.outputs.figures))],
                                     list(cfg.formats)))
            log.info("%s: attribution accuracy %.3f", method, summaries[-1]["accuracy"].iloc[-1])
        if not summaries:
            raise ValueError("no method could be attributed: " + " ".join(skipped))
        table = pd.concat(summaries, ignore_index=True)
        pair = " / ".join(HARD_PAIR)
        notes = [f"Suite `{cfg.suite.name}`: every evaluation image (each model's evaluation half and the real "
                 "images; never the calibration halves) is attributed to the model with the strongest claim among "
                 "those whose own calibrated threshold it passes, or to `none` "
                 f"(normalisation `{cfg.normalisation}`). Real images are correct when predicted `none`.",
                 "Scores are read from the stored grids, nothing is recomputed: LatentTracer's are Table 1's; the "
                 "other methods' come from `make compare-methods` (their own set sizes, see results/methods.md).",
                 f"The {pair} pair shares its encoder (kl-a-ft fine-tunes kl-a's decoder): the hard case.", *skipped]
        title = f"Attribution across {len(suite_models)} models ({cfg.suite.name})"
        return StudyResult(
            table, objective=float(table.loc[table["source"] == protocol.ALL, "accuracy"].mean()),
            stem=Path(cfg.outputs.attribution), markdown=markdown(table, title, notes), tables={"": table},
            files={ctx.output_dir / "attribution_images.parquet": pd.concat(per_image, ignore_index=True)},
            figures=figures, log_tables={"attribution": table},
            metrics={f"attribution/{m}/{s}": a for m, s, a in
                     table[["method", "source", "accuracy"]].itertuples(index=False)})
