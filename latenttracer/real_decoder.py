"""The real-decoder study: the Table 1 protocol on a real pretrained decoder, every method, and the collapse question.

Inputs are plain path lists (made by :mod:`data_gen.real_decoder`) and one *scorer* per method
(``score(inspected, paths) -> frame``, :data:`latenttracer.protocol.Scorer`, through the results store). This
module turns them into

* the grid (:func:`method_cells`): per method, inspected model and source, the Table 1 cell metrics plus
  ``median_belonging``, ``median_non_belonging``, their ``ratio`` (near 1: the two classes collapse onto one loss
  level, as AEDR reports for 16-channel VAEs) and ``seconds_per_image`` (the median time the store recorded
  per image when each image was scored);
* LatentTracer against its number of steps (:func:`steps_cells`: one long run, cut exactly by
  :func:`latenttracer.protocol.truncate`);
* AUC and ratio of a two-class comparison at another resolution (:func:`two_class_row`);
* the Markdown (:func:`markdown`) and the figure (:func:`figure`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from latenttracer import protocol, tables
from latenttracer.intervals import auc_delong
from latenttracer.metrics import detection_metrics, median_ratio

__all__ = ["COLUMNS", "ROW", "figure", "markdown", "method_cells", "steps_cells", "subset_sets", "two_class_row"]

ROW = "method / inspected"
COLUMNS = ["method", "inspected", "source", "auc", "auc_lo", "auc_hi", "median_belonging", "median_non_belonging",
           "ratio", "ratio_lo", "ratio_hi", "seconds_per_image", "ap", "ap_lo", "ap_hi", "tpr_at_5fpr",
           "tpr_at_5fpr_lo", "tpr_at_5fpr_hi", "accuracy", "accuracy_lo", "accuracy_hi", "threshold", "auc_step0",
           "auc_step0_lo", "auc_step0_hi", "n_belonging", "n_non_belonging", "n_failed"]


def subset_sets(sets: protocol.ImageSets, n_belonging: int | None, n_per_source: int | None) -> dict:
    """The first ``n_belonging`` images of each model's calibration and evaluation halves and the first
    ``n_per_source`` real images (None: all); the sets are seeded, so these are images of the full sets."""
    out = {}
    for name, parts in sets.items():
        k = n_per_source if name == protocol.REAL else n_belonging
        out[name] = {part: list(paths)[:k] if k else list(paths) for part, paths in parts.items()}
    return out


def _ratios(part: pd.DataFrame, name: str, sources: Sequence[str], cells: pd.DataFrame) -> list[tuple]:
    """(ratio, lo, hi) of each cell's medians (non-belonging / belonging) with its bootstrap interval, from the
    same evaluation rows as :func:`latenttracer.protocol.cell_metrics` uses."""
    ok = part[(part["status"] == "ok") & (part["split"] == "evaluation")]
    own = ok.loc[ok["source"] == name, "score"]
    out = []
    for source in cells["source"]:
        chosen = list(sources) if source == protocol.ALL else [source]
        out.append(median_ratio(own, ok.loc[ok["source"].isin(chosen), "score"]))
    return out


def method_cells(scores: pd.DataFrame, sources: Sequence[str], inspected: Sequence[str], label: str,
                 calibrate=None, target_tpr: float = 0.95, seconds_scale: float = 1.0) -> pd.DataFrame:
    """One method's cells from its per-image grid scores (:func:`latenttracer.protocol.evaluate`'s second frame,
    with a ``seconds`` column). ``seconds_scale`` rescales the recorded seconds (a 100-step score cut from a
    200-step run took about half the recorded time)."""
    rows = []
    for name in inspected:
        part = scores[scores["inspected"] == name]
        others = [s for s in sources if s != name]
        cells = pd.DataFrame(protocol.cell_metrics(part, name, others, target_tpr, calibrate))
        ratios = _ratios(part, name, others, cells)
        for i, column in enumerate(("ratio", "ratio_lo", "ratio_hi")):
            cells[column] = [r[i] for r in ratios]
        ok = part[part["status"] == "ok"]
        cells["seconds_per_image"] = float(ok["seconds"].median()) * seconds_scale if "seconds" in ok else np.nan
        rows.append(cells)
    cells = pd.concat(rows, ignore_index=True)
    cells.insert(0, "method", label)
    return cells[[c for c in COLUMNS if c in cells] + [c for c in cells if c not in COLUMNS]]


def steps_cells(scores: pd.DataFrame, sources: Sequence[str], inspected: Sequence[str], steps: Sequence[int],
                strategy: str = "min", target_tpr: float = 0.95) -> pd.DataFrame:
    """LatentTracer's cells at each of ``steps``, cut from per-image scores of a run of at least ``max(steps)``
    steps that recorded trajectories."""
    rows = []
    for name in inspected:
        part = scores[scores["inspected"] == name]
        for k in steps:
            cells = method_cells(protocol.truncate(part, int(k), strategy), sources, [name], "latenttracer",
                                 target_tpr=target_tpr)
            cells.insert(1, "steps", int(k))
            rows.append(cells)
    return pd.concat(rows, ignore_index=True)


def two_class_row(belonging: pd.DataFrame, non_belonging: pd.DataFrame) -> dict:
    """AUC, medians, ratio and step-0 AUC of two per-image score frames (``score``, ``status``, ``init_loss``)."""
    b = belonging[belonging["status"] == "ok"]
    nb = non_belonging[non_belonging["status"] == "ok"]
    m = detection_metrics(b["score"], nb["score"])
    row = {"auc": m.auc, "auc_lo": m.auc_lo, "auc_hi": m.auc_hi, "median_belonging": float(b["score"].median()),
           "median_non_belonging": float(nb["score"].median()), "n_belonging": len(b), "n_non_belonging": len(nb)}
    row["ratio"], row["ratio_lo"], row["ratio_hi"] = median_ratio(b["score"], nb["score"])
    has_init = "init_loss" in b and b["init_loss"].notna().all() and nb["init_loss"].notna().all()
    row["auc_step0"], row["auc_step0_lo"], row["auc_step0_hi"] = (
        auc_delong(b["init_loss"], nb["init_loss"]) if has_init else (np.nan,) * 3)
    return row


# -- publishing -------------------------------------------------------------------------------------------------
def _g(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3g}"


def _ci(r, metric: str) -> str:
    """A row's ``metric`` with its 95% interval where the row has one (:func:`latenttracer.tables.fmt_metric`)."""
    return tables.fmt_metric(r._asdict() if hasattr(r, "_asdict") else r, metric)


def markdown(cells: pd.DataFrame, steps: pd.DataFrame | None, resolutions: pd.DataFrame | None,
             notes: Sequence[str], title: str) -> str:
    """The study's page: notes, the AUC grid (method / inspected x source), the separation table, the steps and
    resolution tables."""
    cells = cells.copy()
    cells[ROW] = cells["method"] + " / " + cells["inspected"]
    lines = [tables.tables_markdown(cells, ["auc", "tpr_at_5fpr"], title, notes, rows=ROW).rstrip(), ""]
    sep = cells[cells["source"] != protocol.ALL]
    lines += ["## Separation: median scores and their ratio", "",
              "Median score of the inspected model's own evaluation images (belonging) and of one non-belonging "
              "source, and their ratio (non-belonging / belonging; near 1 = the collapse AEDR reports). Seconds "
              "per image: the median time recorded when each image was scored (one thread per job).", "",
              tables.markdown_table([[r.method, r.inspected, r.source, _g(r.median_belonging),
                                      _g(r.median_non_belonging), _ci(r, "ratio"), _ci(r, "auc"),
                                      _g(r.seconds_per_image)]
                                     for r in sep.itertuples()],
                                    ["method", "inspected", "source", "median belonging", "median non-belonging",
                                     "ratio", "AUC", "s / image"]), ""]
    if steps is not None and len(steps):
        lines += ["## LatentTracer against its number of steps", "",
                  "One run of the longest step count per image, cut exactly to each shorter one "
                  "(latenttracer.protocol.truncate); the authors' schedule halves the learning rate every 50 steps.",
                  "", tables.markdown_table([[int(r.steps), r.inspected, r.source, _ci(r, "auc"), _ci(r, "auc_step0"),
                                              _g(r.median_belonging), _g(r.median_non_belonging), _ci(r, "ratio")]
                                             for r in steps.itertuples()],
                                            ["steps", "inspected", "source", "AUC", "AUC step 0", "median belonging",
                                             "median non-belonging", "ratio"]), ""]
    if resolutions is not None and len(resolutions):
        lines += ["## Against resolution", "",
                  "The inspected decoder's own decodes (belonging) against real crops of the evaluation photos at "
                  "each size (no calibration half: AUC, medians and ratio only).", "",
                  tables.markdown_table([[int(r.resolution), r.method, r.source, f"{int(r.n_belonging)} / "
                                          f"{int(r.n_non_belonging)}", _ci(r, "auc"), _ci(r, "auc_step0"),
                                          _g(r.median_belonging), _g(r.median_non_belonging), _ci(r, "ratio"),
                                          _g(r.seconds_per_image)]
                                         for r in resolutions.itertuples()],
                                        ["px", "method", "non-belonging", "images (b / nb)", "AUC", "AUC step 0",
                                         "median belonging", "median non-belonging", "ratio", "s / image"]), ""]
    return "\n".join(lines).rstrip() + "\n"


def figure(cells: pd.DataFrame, steps: pd.DataFrame | None, base: str):
    """Three panels: pooled AUC against seconds per image (log x) per method and inspected model; median belonging
    and non-belonging score per method for ``base`` inspected (log y); LatentTracer's AUC against steps."""
    plt = tables._pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colours = plt.get_cmap("tab10")
    methods = list(dict.fromkeys(cells["method"]))
    pooled = cells[cells["source"] == protocol.ALL]
    markers = "osD^v"
    for i, m in enumerate(methods):
        for j, name in enumerate(dict.fromkeys(pooled["inspected"])):
            r = pooled[(pooled["method"] == m) & (pooled["inspected"] == name)]
            if r.empty:  # a method that did not inspect this model (RONAN inspects the base only)
                continue
            if tables.has_interval(r, "auc"):
                tables.plot_metric(axes[0], r, "seconds_per_image", "auc", "none", color=colours(i), zorder=2)
            axes[0].scatter(r["seconds_per_image"], r["auc"], color=colours(i), marker=markers[j % 5], s=46,
                            edgecolor="black", linewidth=0.4, label=f"{m} / {name}", zorder=3)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("seconds per image (log)")
    axes[0].set_ylabel("AUC, non-belonging sources pooled")
    axes[0].legend(fontsize=6, loc="lower right")
    own = cells[(cells["inspected"] == base) & (cells["source"] != protocol.ALL)]
    x = np.arange(len(methods))
    sources = list(dict.fromkeys(own["source"]))
    width = 0.8 / (len(sources) + 1)
    first = own.drop_duplicates("method").set_index("method").reindex(methods)
    axes[1].bar(x - 0.4 + width / 2, first["median_belonging"], width, color="tab:green", label=f"{base}'s own")
    for k, s in enumerate(sources):
        vals = own[own["source"] == s].set_index("method").reindex(methods)["median_non_belonging"]
        axes[1].bar(x - 0.4 + width * (k + 1.5), vals, width, color=colours(k + 3), label=s)
    axes[1].set_yscale("log")
    axes[1].set_xticks(x, methods, rotation=25, fontsize=7)
    axes[1].set_ylabel(f"median score ({base} inspects; log)")
    axes[1].legend(fontsize=7)
    if steps is not None and len(steps):
        for k, ((name, source), g) in enumerate(steps.groupby(["inspected", "source"], sort=False)):
            tables.plot_metric(axes[2], g, "steps", "auc", "o-", ms=4, color=colours(k), label=f"{name} vs {source}")
        axes[2].set_xscale("log")
        ticks = sorted(set(int(k) for k in steps["steps"]))
        axes[2].set_xticks(ticks, [str(k) for k in ticks])
        axes[2].minorticks_off()
        axes[2].set_xlabel("inversion steps (log)")
        axes[2].set_ylabel("LatentTracer AUC")
        axes[2].set_ylim(0, 1.02)
        axes[2].legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"A real decoder ({base}): methods, separation, steps", fontsize=10)
    fig.tight_layout()
    return fig
