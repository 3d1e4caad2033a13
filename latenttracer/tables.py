"""Tables and figures from stored results: Markdown / CSV / LaTeX tables and PNG + PDF figures.

Two frames feed everything here:

* **cells**: one row per (inspected model, source) with the fields of :class:`latenttracer.metrics.DetectionMetrics`
  (``auc, ap, tpr_at_1fpr, tpr_at_5fpr, threshold, accuracy, balanced_accuracy, tpr, fpr, n_belonging,
  n_non_belonging``) plus ``inspected``, ``source`` and ``n_failed``. ``source`` is a model name, ``real``, or
  ``all`` (every non-belonging image pooled).
* **scores**: one row per (inspected model, image): ``inspected, source, split, path, score, init_loss,
  best_step, status, trajectory``. ``split`` is ``calibration`` or ``evaluation``; the belonging images of an
  inspected model are its own ``evaluation`` rows, the non-belonging ones every other source's ``evaluation``
  rows.

Every file is written atomically (:mod:`latenttracer.atomic`: a temporary file in the same directory, fsynced, then
:func:`os.replace`), so a reader never sees half a table. Figures use matplotlib's Agg backend (no display needed)
and are not shown.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from latenttracer import atomic
from latenttracer.intervals import auc_delong, fmt_ci
from latenttracer.metrics import roc_points

__all__ = [
    "METRIC_LABELS",
    "belonging_split",
    "fmt_metric",
    "has_interval",
    "loss_histograms",
    "markdown_table",
    "mean_loss_vs_step",
    "metric_matrix",
    "metric_section",
    "metric_vs_param",
    "pivot_formatted",
    "plot_metric",
    "roc_curves",
    "save_figure",
    "score_histogram",
    "tables_latex",
    "tables_markdown",
    "upsert_csv",
    "write_tables",
]

METRIC_LABELS = {
    "auc": "AUC", "ap": "AP", "tpr_at_1fpr": "TPR@1%FPR", "tpr_at_5fpr": "TPR@5%FPR",
    "accuracy": "accuracy at the calibrated threshold", "balanced_accuracy": "balanced accuracy",
    "tpr": "TPR at the calibrated threshold", "fpr": "FPR at the calibrated threshold",
    "auc_step0": "AUC of the step-0 loss alone (plain encode/decode error, no optimisation)",
    "median_non_belonging": "median score (reconstruction MSE) of the non-belonging images",
    "median_belonging": "median score of the belonging (evaluation) images",
}




def upsert_csv(path: str | os.PathLike, rows: pd.DataFrame, key: Sequence[str]) -> pd.DataFrame:
    """Merge ``rows`` into the CSV at ``path``: rows with the same ``key`` are replaced, others kept.

    Rows keep their first position in the file; the file is rewritten atomically. Not safe against two writers
    at once on its own: callers running in parallel hold a lock around it. Returns the merged table.
    """
    path = Path(path)
    missing = [k for k in key if k not in rows.columns]
    if missing:
        raise KeyError(f"{path}: rows lack the key column(s) {missing}")
    if path.exists():
        old = pd.read_csv(path)
        lost = [k for k in key if k not in old.columns]
        if lost:
            raise ValueError(f"{path}: existing file lacks the key column(s) {lost}; move it away or delete it")
        merged = pd.concat([old, rows], ignore_index=True)
    else:
        merged = rows.copy()
    # Compare keys as text so that a float read back from the CSV equals the float written (and a missing key
    # value, e.g. a margin that a row's mode has not, equals another missing one: "nan").
    key_text = merged[list(key)].astype(object).map(str).agg("\x1f".join, axis=1)
    merged = merged[~key_text.duplicated(keep="last")].reset_index(drop=True)
    atomic.write_frame(merged, path)
    return merged


# -- tables -----------------------------------------------------------------------------------------------------
def markdown_table(table: pd.DataFrame | Sequence[Sequence[object]], header: Sequence[object] | None = None) -> str:
    """A pipe table: ``| h1 | h2 |``, ``|---|---|``, then one ``| v1 | v2 |`` line per row (no trailing newline).

    ``table`` is a DataFrame (its columns are the header, its index is dropped) or a sequence of rows with
    ``header`` given. Cells are written with ``str``: format numbers before. The project's one Markdown table
    writer (Table 1, the ablation summary, zoo model cards, the photo licences).
    """
    if isinstance(table, pd.DataFrame):
        header = list(table.columns) if header is None else header
        rows = [list(r) for r in table.itertuples(index=False, name=None)]
    else:
        rows = [list(r) for r in table]
    if header is None:
        raise ValueError("markdown_table: give a header for a table given as rows")
    bad = [i for i, r in enumerate(rows) if len(r) != len(header)]
    if bad:
        raise ValueError(f"markdown_table: row(s) {bad} do not have {len(header)} cells like the header")

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    return "\n".join([line(header), "|---" * len(header) + "|", *(line(r) for r in rows)])


def _ordered(values: Iterable[str], first: Sequence[str] = (), last: Sequence[str] = ("real", "all")) -> list[str]:
    seen = list(dict.fromkeys(values))
    head = [v for v in first if v in seen]
    tail = [v for v in last if v in seen and v not in head]
    return head + [v for v in seen if v not in head and v not in tail] + tail


def metric_matrix(cells: pd.DataFrame, metric: str, rows: str = "inspected") -> pd.DataFrame:
    """``metric`` as a matrix: rows are the values of column ``rows`` (the inspected models, or e.g. a
    ``method / inspected`` column), columns sources (the models first, ``real`` and ``all`` last).

    Cells that were not evaluated (an inspected model against its own images) are NaN.
    """
    if metric not in cells.columns:
        raise KeyError(f"metric {metric!r} is not a column of the cells table ({list(cells.columns)})")
    if rows not in cells.columns:
        raise KeyError(f"rows {rows!r} is not a column of the cells table ({list(cells.columns)})")
    index = _ordered(cells[rows])
    cols = _ordered(cells["source"], first=_ordered(cells["inspected"]) if "inspected" in cells else index)
    return cells.pivot_table(index=rows, columns="source", values=metric, aggfunc="last",
                             dropna=False).reindex(index=index, columns=cols)


def _fmt(value: float, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3g}" if _significant(metric) else f"{value:.3f}"


def _significant(metric: str) -> bool:
    """Metrics written with 3 significant digits (scores and their ratios), not 3 decimals (rates)."""
    return metric in ("threshold", "ratio") or metric.startswith("median")


def has_interval(frame: pd.DataFrame | pd.Series | dict, metric: str) -> bool:
    """Whether ``frame`` carries the interval columns ``<metric>_lo`` and ``<metric>_hi``."""
    keys = frame.columns if isinstance(frame, pd.DataFrame) else frame.index if isinstance(frame, pd.Series) \
        else frame
    return f"{metric}_lo" in keys and f"{metric}_hi" in keys


def fmt_metric(row: pd.Series | dict, metric: str) -> str:
    """One table cell: ``row[metric]`` as ``0.944 [0.80, 1.00]`` when the row has ``<metric>_lo/_hi`` bounds
    (:func:`latenttracer.intervals.fmt_ci`), else the value alone as :func:`tables_markdown` writes it; ``–``
    when the value is missing. The one cell formatter of every published Markdown table with rates in it."""
    value = row[metric]
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return "–"
    if has_interval(row, metric):
        lo, hi = row[f"{metric}_lo"], row[f"{metric}_hi"]
        if _significant(metric):
            if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
                return _fmt(float(value), metric)
            return f"{_fmt(float(value), metric)} [{float(lo):.3g}, {float(hi):.3g}]"
        return fmt_ci(float(value), lo, hi)
    return _fmt(float(value), metric)


def pivot_formatted(frame: pd.DataFrame, index, columns, metric: str, sort: bool = False) -> pd.DataFrame:
    """``frame.pivot_table(index, columns, values=metric)`` with each cell as text by :func:`fmt_metric`
    (``0.944 [0.80, 1.00]`` where ``frame`` has the metric's bounds, ``–`` where a cell is missing)."""
    def pivot(col: str) -> pd.DataFrame:
        return frame.pivot_table(index=index, columns=columns, values=col, aggfunc="first", sort=sort)

    wide = pivot(metric)
    if not has_interval(frame, metric):
        return wide.map(lambda v: fmt_metric({metric: v}, metric))
    lo, hi = pivot(f"{metric}_lo").reindex_like(wide), pivot(f"{metric}_hi").reindex_like(wide)
    out = wide.astype(object).copy()
    for i in range(wide.shape[0]):
        for j in range(wide.shape[1]):
            out.iat[i, j] = fmt_metric({metric: wide.iat[i, j], f"{metric}_lo": lo.iat[i, j],
                                        f"{metric}_hi": hi.iat[i, j]}, metric)
    return out


def plot_metric(ax, rows: pd.DataFrame, x: str, metric: str = "auc", fmt: str = "o-", **kwargs):
    """``rows[metric]`` against ``rows[x]`` on ``ax``, with the 95% interval as error bars where ``rows`` has
    ``<metric>_lo/_hi`` (:func:`latenttracer.intervals` bounds); the one way a figure draws a rate."""
    values = rows[metric].to_numpy(float)
    if has_interval(rows, metric):
        lo, hi = rows[f"{metric}_lo"].to_numpy(float), rows[f"{metric}_hi"].to_numpy(float)
        yerr = np.vstack([np.clip(values - lo, 0, None), np.clip(hi - values, 0, None)])
        return ax.errorbar(rows[x], values, yerr=yerr, fmt=fmt, capsize=2, elinewidth=0.8, **kwargs)
    return ax.plot(rows[x], values, fmt, **kwargs)


def _matrix_cells(cells: pd.DataFrame, metric: str, rows: str) -> tuple[pd.DataFrame, list[list[str]]]:
    """``metric_matrix`` and its cells as text, with the interval when the cells have one."""
    m = metric_matrix(cells, metric, rows)
    if not has_interval(cells, metric):
        return m, [[_fmt(v, metric) for v in row.values] for _, row in m.iterrows()]
    lo = metric_matrix(cells, f"{metric}_lo", rows).reindex_like(m)
    hi = metric_matrix(cells, f"{metric}_hi", rows).reindex_like(m)
    text = [[fmt_metric({metric: v, f"{metric}_lo": lo.iat[i, j], f"{metric}_hi": hi.iat[i, j]}, metric)
             for j, v in enumerate(row.values)] for i, (_, row) in enumerate(m.iterrows())]
    return m, text


def _counts_line(cells: pd.DataFrame) -> str:
    nb = cells["n_belonging"]
    per = cells[cells["source"] != "all"]["n_non_belonging"]
    failed = int(cells.get("n_failed", pd.Series([0])).max())
    text = (f"Belonging (evaluated) images per inspected model: {int(nb.min())}"
            + (f"–{int(nb.max())}" if nb.max() != nb.min() else "")
            + f"; non-belonging images per cell: {int(per.min()) if len(per) else 0}"
            + (f"–{int(per.max())}" if len(per) and per.max() != per.min() else "") + ".")
    if failed:
        text += f" Images whose inversion failed (dropped): up to {failed} per cell."
    return text


def tables_markdown(cells: pd.DataFrame, metrics: Sequence[str], title: str = "Table 1",
                    notes: Sequence[str] = (), rows: str = "inspected") -> str:
    """One Markdown matrix (``rows`` x source) per metric, with the counts and ``notes`` under the title."""
    lines = [f"# {title}", ""]
    lines += [_counts_line(cells)] + [str(n) for n in notes] + [""]
    for metric in metrics:
        lines += [metric_section(cells, metric, rows), ""]
    return "\n".join(lines)


def metric_section(cells: pd.DataFrame, metric: str, rows: str = "inspected") -> str:
    """One metric of :func:`tables_markdown`: a ``## <label>`` heading (``[95% CI]`` added when the cells carry
    ``<metric>_lo/_hi``) and the ``rows`` x source matrix, each cell ``0.944 [0.80, 1.00]`` or ``–``."""
    m, text = _matrix_cells(cells, metric, rows)
    body = [[name, *values] for name, values in zip(m.index, text)]
    heading = METRIC_LABELS.get(metric, metric) + (" [95% CI]" if has_interval(cells, metric) else "")
    return "\n".join([f"## {heading}", "", markdown_table(body, [f"{rows} \\ source", *m.columns])])


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def tables_latex(cells: pd.DataFrame, metrics: Sequence[str], caption: str = "Table 1",
                 rows: str = "inspected") -> str:
    """One ``tabular`` (booktabs rules) per metric, ``rows`` (inspected models) as rows and sources as columns."""
    out = [f"% {caption}: generated by latenttracer.tables.tables_latex; needs \\usepackage{{booktabs}}"]
    for metric in metrics:
        m, text = _matrix_cells(cells, metric, rows)
        label = _tex_escape(METRIC_LABELS.get(metric, metric)
                            + (" [95% CI]" if has_interval(cells, metric) else ""))
        what = "inspected model" if rows == "inspected" else _tex_escape(rows)
        out += [r"\begin{table}[t]", r"\centering", r"\small",
                rf"\caption{{{_tex_escape(caption)}: {label} (rows: {what}; columns: image source).}}",
                r"\begin{tabular}{l" + "c" * len(m.columns) + "}", r"\toprule",
                _tex_escape(rows) + " & " + " & ".join(_tex_escape(c) for c in m.columns) + r" \\", r"\midrule"]
        for name, row_text in zip(m.index, text):
            vals = [v.replace("–", "--") for v in row_text]
            out.append(_tex_escape(str(name)) + " & " + " & ".join(vals) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def publish(stem: str | os.PathLike, job_dir: str | os.PathLike, markdown: str,
            frames: dict[str, pd.DataFrame]) -> list[Path]:
    """Write ``<stem>.md`` and ``<stem><suffix>.csv`` for each ``{suffix: frame}`` twice: into the job's output
    directory (``job_dir/<stem name>...``) and at the published ``stem`` (e.g. ``results/robustness``); atomic."""
    stem = Path(stem)
    written = []
    for target in (Path(job_dir) / stem.name, stem):
        for suffix, frame in frames.items():
            written.append(atomic.write_frame(frame, target.with_name(target.name + suffix + ".csv")))
        written.append(atomic.write_text(target.with_name(target.name + ".md"), markdown))
    return written


def write_tables(cells: pd.DataFrame, stem: str | os.PathLike, metrics: Sequence[str],
                 title: str = "Table 1", notes: Sequence[str] = (), rows: str = "inspected") -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` (every column of ``cells``) and ``<stem>.tex``; return the paths.
    ``rows``: the column whose values are the rows of each matrix (default: the inspected models)."""
    stem = Path(stem)
    return {
        "md": atomic.write_text(stem.with_name(stem.name + ".md"),
                                tables_markdown(cells, metrics, title, notes, rows)),
        "csv": atomic.write_frame(cells, stem.with_name(stem.name + ".csv")),
        "tex": atomic.write_text(stem.with_name(stem.name + ".tex"), tables_latex(cells, metrics, title, rows)),
    }


# -- figures ----------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, stem: str | os.PathLike, formats: Sequence[str] = ("png", "pdf"), dpi: int = 130) -> list[Path]:
    """Save ``fig`` as ``<stem>.<format>`` for each format (atomically), close it, return the paths."""
    stem = Path(stem)
    paths = []
    for fmt in formats:
        target = stem.with_name(f"{stem.name}.{fmt}")
        # No creation date (PDF) or software stamp: the same figure gives the same bytes on every rerun.
        meta = {"CreationDate": None} if fmt == "pdf" else {"Software": None} if fmt == "png" else None
        paths.append(atomic.write(target, lambda tmp, f=fmt, m=meta: fig.savefig(tmp, format=f, dpi=dpi,
                                                                                 bbox_inches="tight", metadata=m)))
    _pyplot().close(fig)
    return paths


def belonging_split(scores: pd.DataFrame, inspected: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(belonging scores, {source: non-belonging scores}) of one inspected model; failed images left out."""
    rows = scores[(scores["inspected"] == inspected) & (scores["split"] == "evaluation")]
    if "status" in rows:
        rows = rows[rows["status"] == "ok"]
    rows = rows[np.isfinite(rows["score"].astype(float))]
    belonging = rows.loc[rows["source"] == inspected, "score"].to_numpy(float)
    others = {s: g["score"].to_numpy(float) for s, g in rows[rows["source"] != inspected].groupby("source", sort=False)}
    order = _ordered(others)
    return belonging, {s: others[s] for s in order}


def loss_histograms(scores: pd.DataFrame, inspected: str, threshold: float | None = None):
    """Reconstruction-loss histograms (log-x): the inspected model's belonging images against each source."""
    plt = _pyplot()
    belonging, others = belonging_split(scores, inspected)
    values = np.concatenate([belonging, *others.values()])
    values = values[values > 0]
    if values.size == 0:
        raise ValueError(f"no positive finite scores for inspected model {inspected!r}")
    bins = np.geomspace(values.min(), values.max() * 1.0001, 40)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.hist(belonging, bins=bins, color="black", alpha=0.35, label=f"belonging ({inspected}, n={belonging.size})")
    for source, vals in others.items():
        ax.hist(vals, bins=bins, histtype="step", linewidth=1.4, label=f"{source} (n={vals.size})")
    if threshold is not None and np.isfinite(threshold) and threshold > 0:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label="calibrated threshold")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())  # minor labels collide on narrow ranges
    ax.set_xlabel("reconstruction loss (min MSE over steps)")
    ax.set_ylabel("images")
    ax.set_title(f"Inspected model {inspected}: belonging vs non-belonging")
    ax.legend(fontsize=7, frameon=False)
    return fig


def roc_curves(scores: pd.DataFrame, inspected: str):
    """ROC curves of one inspected model, one per non-belonging source (AUC and its 95% interval in the legend)."""
    plt = _pyplot()
    belonging, others = belonging_split(scores, inspected)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for source, vals in others.items():
        if belonging.size == 0 or vals.size == 0:
            continue
        fpr, tpr, _ = roc_points(belonging, vals)
        auc, lo, hi = auc_delong(belonging, vals)
        ax.plot(fpr, tpr, linewidth=1.4, label=f"{source} (AUC {fmt_ci(auc, lo, hi)})")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(f"Inspected model {inspected}")
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    return fig


def mean_loss_vs_step(scores: pd.DataFrame, inspected: str):
    """Mean reconstruction loss at each inversion step (log-y), belonging images against each source."""
    plt = _pyplot()
    rows = scores[(scores["inspected"] == inspected) & (scores["split"] == "evaluation")]
    if "status" in rows:
        rows = rows[rows["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for source in _ordered(rows["source"], first=[inspected]):
        trajectories = [np.asarray(t, float) for t in rows.loc[rows["source"] == source, "trajectory"]
                        if t is not None and len(t)]
        if not trajectories:
            continue
        length = min(len(t) for t in trajectories)
        mean = np.mean(np.stack([t[:length] for t in trajectories]), axis=0)
        own = source == inspected
        ax.plot(np.arange(length), mean, color="black" if own else None, linewidth=2.2 if own else 1.2,
                label=f"{source}{' (belonging)' if own else ''}")
    ax.set_yscale("log")
    ax.set_xlabel("inversion step")
    ax.set_ylabel("mean reconstruction loss")
    ax.set_title(f"Inspected model {inspected}")
    ax.legend(fontsize=7, frameon=False)
    return fig


def metric_vs_param(rows: pd.DataFrame, param: str, metric: str = "auc", hue: str | None = None,
                    xscale: str = "log", title: str = ""):
    """``metric`` against ``param``: one panel per (inspected model, source), one line per ``hue`` value; error
    bars where ``rows`` has the metric's 95% interval (``<metric>_lo/_hi``).

    ``xscale``: ``log``, ``linear`` or ``symlog`` (for step counts that include 0).
    """
    plt = _pyplot()
    if rows.empty:
        raise ValueError(f"no rows to plot {metric} against {param}")
    inspected = _ordered(rows["inspected"])
    sources = _ordered(rows["source"], first=inspected)
    size = (2.1 * len(sources) + 0.6, 2.0 * len(inspected) + 0.6)
    fig, axes = plt.subplots(len(inspected), len(sources), figsize=size,
                             squeeze=False, sharex=True, sharey=True)
    hues = [None] if hue is None else sorted(rows[hue].unique(), key=str)
    for r, name in enumerate(inspected):
        for c, source in enumerate(sources):
            ax = axes[r][c]
            cell = rows[(rows["inspected"] == name) & (rows["source"] == source)]
            for h in hues:
                line = cell if h is None else cell[cell[hue] == h]
                line = line.sort_values(param)
                if len(line):
                    plot_metric(ax, line, param, metric, "o-", markersize=3, linewidth=1.3,
                                label=None if h is None else f"{hue}={h}")
            if xscale == "symlog":
                ax.set_xscale("symlog", linthresh=1)
            else:
                ax.set_xscale(xscale)
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(source, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{name}\n{METRIC_LABELS.get(metric, metric)}", fontsize=8)
            if r == len(inspected) - 1:
                ax.set_xlabel(param, fontsize=8)
            ax.tick_params(labelsize=7)
    if hue is not None:
        handles, labels = axes[0][0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="upper right", fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def score_histogram(scores: Sequence[float], threshold: float | None = None, title: str = ""):
    """One histogram of scores (log-x) with the threshold as a dashed line (the traced-folder report); below the
    threshold is belonging."""
    plt = _pyplot()
    values = np.asarray(scores, float)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        raise ValueError("no positive finite scores to draw")
    marks = [threshold] if threshold is not None and threshold > 0 else []
    hi = max([values.max(), *marks]) * 1.0001
    lo = min([values.min(), *marks])
    if hi < 10 * lo:  # span at least a decade, so that the log axis has a labelled tick
        pad = math.sqrt(10 * lo / hi)
        lo, hi = lo / pad, hi * pad
    bins = np.geomspace(lo, hi, 40)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    if marks:
        verdict = values <= threshold
        ax.hist(values[verdict], bins=bins, color="tab:green", alpha=0.6, label="belonging")
        ax.hist(values[~verdict], bins=bins, color="tab:grey", alpha=0.6, label="not belonging")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3g}")
        ax.legend(fontsize=7, frameon=False)
    else:
        ax.hist(values, bins=bins, color="tab:grey", alpha=0.7)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("score (reconstruction loss)")
    ax.set_ylabel("images")
    if title:
        ax.set_title(title)
    return fig
