"""A static HTML report of a results folder (``make report``) or of one traced folder (``trace --html``).

Everything comes from files already written (the Table 1 cells and scores, the figures, the ablation rows, the
provenance file); nothing is inverted again. The only model call is one decode of each hardest case's stored best
latent, which reproduces its reconstruction. The page is rendered with Jinja2 from the templates shipped in
``latenttracer/templates``; every image is a PNG file in the report folder, so the folder opens offline from the
file system (no external CSS, JavaScript or fonts).

Each section is a :class:`Section` holding colour-scaled tables (:class:`Table`, the colour of every cell
computed here), figures (:class:`Figure`) and case galleries (:class:`CaseGroup`); a section whose inputs are
missing says how to produce them instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latenttracer import atomic, provenance, tables

__all__ = ["Case", "CaseGroup", "Cell", "Figure", "Section", "Table", "build_run_report", "build_trace_report",
           "display_path", "render"]

DecoderLoader = Callable[[str], Any]
"""``name -> Autoencoder`` of an inspected model (raise when it cannot be loaded: the report says why)."""

# Metrics whose useful range is [0.5, 1] (chance to perfect), [0, 1] (rates), or spans decades (losses).
_CHANCE_TO_ONE = {"auc", "ap", "accuracy", "balanced_accuracy", "auc_step0"}
_ZERO_TO_ONE = {"tpr_at_1fpr", "tpr_at_5fpr", "tpr"}
_LOWER_IS_BETTER = {"fpr"}
# -- the page model ---------------------------------------------------------------------------------------------
@dataclass
class Cell:
    text: str
    background: str = ""
    color: str = ""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[str, list[Cell]]]
    caption: str = ""
    corner: str = ""


@dataclass
class Figure:
    src: str  # relative to the page
    caption: str
    alt: str = ""


@dataclass
class Case:
    path: str
    source: str
    score: float
    verdict: str
    correct: bool
    image: str | None = None
    reconstruction: str | None = None
    difference: str | None = None
    note: str = ""


@dataclass
class CaseGroup:
    title: str
    caption: str
    cases: list[Case]


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    missing: str = ""  # set when the inputs do not exist: how to produce them
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    groups: list[CaseGroup] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)
    code: str = ""


# -- colours ----------------------------------------------------------------------------------------------------
def _colour(value: float, metric: str, lo: float, hi: float) -> Cell:
    """A cell of ``metric``: its text, its background on a colour scale and a legible text colour.

    ``lo``/``hi``: the range of the table's positive values (for losses, drawn on a logarithmic scale).
    """
    from matplotlib import colormaps

    text = tables._fmt(value, metric)
    if value is None or not math.isfinite(value):
        return Cell(text, "#f3f3f3", "#888")
    if metric in _CHANCE_TO_ONE:
        t, cmap = (value - 0.5) / 0.5, "RdYlGn"
    elif metric in _ZERO_TO_ONE:
        t, cmap = value, "RdYlGn"
    elif metric in _LOWER_IS_BETTER:
        t, cmap = 1 - value, "RdYlGn"
    else:  # losses, thresholds: a neutral scale, logarithmic when positive
        v = value
        if value > 0 and lo > 0:
            lo, hi, v = math.log10(lo), math.log10(hi), math.log10(value)
        t, cmap = 0.1 + 0.55 * ((v - lo) / (hi - lo) if hi > lo else 0.5), "Blues"  # no darkest blues
    r, g, b, _ = colormaps[cmap](min(max(t, 0.0), 1.0))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    background = f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"
    return Cell(text, background, "#000" if luminance > 0.45 else "#fff")


def metric_table(matrix: pd.DataFrame, metric: str, title: str, caption: str = "",
                 corner: str = "inspected \\ source",
                 bounds: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> Table:
    """A colour-scaled table of a (rows x columns) matrix of ``metric``; with ``bounds`` (the matrices of its 95%
    interval), each cell reads ``0.944 [0.80, 1.00]`` (:func:`latenttracer.tables.fmt_metric`)."""
    finite = matrix.to_numpy(float)
    finite = finite[np.isfinite(finite)]
    positive = finite[finite > 0]
    lo, hi = (float(positive.min()), float(positive.max())) if positive.size else (0.0, 1.0)
    rows = []
    for i, (name, row) in enumerate(matrix.iterrows()):
        cells = [_colour(float(v), metric, lo, hi) for v in row.to_numpy(float)]
        if bounds is not None:
            cells = [dataclasses.replace(c, text=tables.fmt_metric(
                {metric: v, f"{metric}_lo": bounds[0].iat[i, j], f"{metric}_hi": bounds[1].iat[i, j]}, metric))
                     for j, (c, v) in enumerate(zip(cells, row.to_numpy(float)))]
        rows.append((str(name), cells))
    return Table(title, [str(c) for c in matrix.columns], rows, caption, corner)


def plain_table(frame: pd.DataFrame, title: str, caption: str = "", max_rows: int = 60) -> Table:
    """A table of any frame; numeric columns named like a known metric are colour-scaled."""
    frame = frame.head(max_rows)
    columns = [str(c) for c in frame.columns[1:]]
    rows = []
    for _, r in frame.iterrows():
        cells = []
        for col in frame.columns[1:]:
            v = r[col]
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and str(col) in tables.METRIC_LABELS:
                cells.append(_colour(float(v), str(col), 0.0, 1.0))
            elif isinstance(v, (float, np.floating)):
                cells.append(Cell(tables._fmt(float(v), "threshold")))
            else:
                cells.append(Cell(str(v)))
        rows.append((str(r.iloc[0]), cells))
    return Table(title, columns, rows, caption, str(frame.columns[0]))


# -- files ------------------------------------------------------------------------------------------------------
def _copy(src: Path, out: Path, rel: str) -> str:
    target = out / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic.write(target, lambda tmp: shutil.copyfile(src, tmp))
    return rel


def _save_png(array: np.ndarray, out: Path, rel: str, max_side: int = 256) -> str:
    """Save an (H, W, 3) float image in [0, 1] as a PNG (downscaled to ``max_side``); return ``rel``."""
    from PIL import Image

    img = Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    target = out / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic.write(target, lambda tmp: img.save(tmp, format="PNG"))
    return rel


def display_path(path: str | os.PathLike, root: str | os.PathLike, anchor: str | None = None) -> str:
    """``path`` as a report shows it: relative to ``root`` (the project, or the traced folder), never an absolute
    path of the machine that built the report.

    A path outside ``root`` (e.g. scores computed in another checkout) is shown from its last ``anchor`` folder
    on (``results/cache/images/kl-a/00001.png`` for ``anchor="results"``), else as ``…/<folder>/<file>``.
    """
    given = Path(path)
    p, root = given.absolute(), Path(root)
    for base in dict.fromkeys((root.absolute(), root.resolve())):
        for candidate in dict.fromkeys((p, p.resolve())):
            try:
                return candidate.relative_to(base).as_posix()
            except ValueError:
                continue
    if not given.is_absolute():
        return given.as_posix()  # already says nothing about the machine
    parts = p.parts
    if anchor and anchor in parts[1:]:
        i = len(parts) - 1 - parts[::-1].index(anchor)
        return Path(*parts[i:]).as_posix()
    return "…/" + Path(*parts[-2:]).as_posix() if len(parts) > 2 else p.name


def _trace_root(frame: pd.DataFrame, config: Mapping[str, Any] | None) -> Path:
    """The traced folder: ``--images`` from the run's arguments, else the folder all traced paths share."""
    images = (config or {}).get("images")
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        return Path(images)
    parents = [str(Path(p).absolute().parent) for p in frame["path"].astype(str)]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def _locate(path: str, results_dir: Path) -> Path | None:
    """``path`` if it exists, else the same file under this checkout's results folder (paths are absolute)."""
    p = Path(path)
    if p.is_file():
        return p
    parts = p.parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == results_dir.name:
            candidate = results_dir.joinpath(*parts[i + 1:])
            if candidate.is_file():
                return candidate
    return None


# -- sections of a run report -----------------------------------------------------------------------------------
def _table1_section(cells: pd.DataFrame | None, metrics: Sequence[str]) -> Section:
    sec = Section("table1", "Table 1", "Rows: inspected model; columns: source of the non-belonging images "
                  "(all: every source pooled). Green is better; losses are on a neutral logarithmic scale.")
    if cells is None:
        sec.missing = "No results/table1.csv yet: run `make reproduce-table1`."
        return sec
    sec.facts.append(("counts", tables._counts_line(cells)))
    for metric in metrics:
        if metric in cells.columns:
            matrix = tables.metric_matrix(cells, metric)
            bounds = (tuple(tables.metric_matrix(cells, f"{metric}{b}").reindex_like(matrix) for b in ("_lo", "_hi"))
                      if tables.has_interval(cells, metric) else None)
            sec.tables.append(metric_table(matrix, metric, tables.METRIC_LABELS.get(metric, metric)
                                           + (" [95% CI]" if bounds else ""), bounds=bounds))
    return sec


def _study_sections(results_dir: Path, figures_dir: Path, out: Path) -> list[Section]:
    """One section per registered study that declares one (:class:`latenttracer.studies.ReportSection`), in its
    ``order``; a study whose results are missing says which command makes them."""
    from latenttracer.studies import STUDIES

    declared = sorted(((study.section, name) for name, study in STUDIES.items() if study.section is not None),
                      key=lambda t: (t[0].order, t[1]))
    sections = []
    for spec, sid in declared:
        csvs, globs, command = spec.tables, spec.figures, spec.command
        sec = Section(sid, spec.title)
        for name in csvs:
            if (results_dir / name).is_file():
                sec.tables.append(plain_table(pd.read_csv(results_dir / name), name))
        for pattern in globs:
            for png in sorted(figures_dir.glob(pattern)):
                sec.figures.append(Figure(_copy(png, out, f"figures/{png.name}"), png.stem, png.stem))
        if not sec.tables and not sec.figures:
            sec.missing = (f"Not produced yet (no {', '.join(csvs)} in {results_dir.name}/): run `{command}`.")
        sections.append(sec)
    return sections


def _ablations_section(results_dir: Path, figures_dir: Path, out: Path) -> Section:
    sec = Section("ablations", "Ablations", "AUC with every non-belonging source pooled, against each ablated "
                  "setting (other settings at their defaults).")
    path = results_dir / "ablations.csv"
    if path.is_file():
        rows = pd.read_csv(path)
        pooled = rows[rows["source"] == "all"] if "source" in rows else rows.iloc[0:0]
        for ablation, group in pooled.groupby("ablation", sort=False) if "ablation" in pooled else ():
            param = {"steps": "steps", "lr": "lr", "init": "init"}.get(str(ablation), str(ablation))
            if param not in group:
                continue
            index = ["inspected", "init"] if param != "init" and group["init"].nunique() > 1 else ["inspected"]
            matrix = group.pivot_table(index=index, columns=param, values="auc", aggfunc="last")
            matrix.index = [" / ".join(map(str, k)) if isinstance(k, tuple) else str(k) for k in matrix.index]
            sec.tables.append(metric_table(matrix, "auc", f"AUC vs {param} (ablation {ablation})",
                                           corner=" / ".join(index) + f" \\ {param}"))
    for name, caption in (("auc_vs_steps", "AUC against the number of inversion steps, per initialisation"),
                          ("auc_vs_lr", "AUC against the learning rate")):
        png = figures_dir / f"{name}.png"
        if png.is_file():
            sec.figures.append(Figure(_copy(png, out, f"figures/{png.name}"), caption, name))
    if not sec.tables and not sec.figures:
        sec.missing = "No results/ablations.csv yet: run `make ablations` then `make figures`."
    return sec


def _models_section(names: Sequence[str], figures_dir: Path, out: Path) -> Section:
    sec = Section("models", "Per-model figures", "Loss histograms (the dashed line is the calibrated threshold), "
                  "ROC curves and the mean loss at each inversion step.")
    for name in names:
        sub = Section(f"model-{name}", name)
        for kind, caption in (("hist", "score histogram"), ("roc", "ROC curves"), ("loss_vs_step", "loss vs step")):
            png = figures_dir / f"{kind}_{name}.png"
            if png.is_file():
                sub.figures.append(Figure(_copy(png, out, f"figures/{png.name}"), f"{name}: {caption}",
                                          f"{kind} {name}"))
        if not sub.figures:
            sub.missing = "No figures for this model: run `make figures`."
        sec.subsections.append(sub)
    if not names:
        sec.missing = "No scores yet: run `make reproduce-table1` (it also draws the figures)."
    return sec


def _reconstruct(row: pd.Series, results_dir: Path, out: Path, rel_stem: str, loader: Callable[[], Any] | None,
                 image_options: Any, gain: float) -> tuple[str | None, str | None, str | None, str]:
    """(image, reconstruction, difference, note) PNGs of one scored image; the note says what is missing."""
    from latenttracer.images import ImageOptions, load_images
    from latenttracer.tracing import latent_from_bytes

    found = _locate(str(row["path"]), results_dir)
    if found is None:
        return None, None, None, ("Image file not found (the image cache is not part of the repository; "
                                  "`make reproduce-table1` regenerates it).")
    latent = row.get("best_latent")
    ae = None
    note = ""
    if not isinstance(latent, (bytes, bytearray)):
        note = ("No stored latent: this image was scored before latents were stored (or the results store is "
                "missing). To store them, rescore it (remove results/cache/scores, then `make reproduce-table1`).")
    elif loader is None:
        note = "No model to decode the stored latent with."
    else:
        try:
            ae = loader()
        except Exception as err:  # noqa: BLE001 - the report still shows the image
            note = f"Could not load the inspected model to decode the latent ({type(err).__name__}: {err})."
    if ae is None:
        from PIL import Image

        with Image.open(found) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255
        return _save_png(array, out, f"{rel_stem}_image.png"), None, None, note
    import torch

    x, _, _ = load_images([found], ae.resolution, image_options or ImageOptions())
    with torch.no_grad():
        recon = ae.decode(latent_from_bytes(latent)[None].to(ae.device, ae.dtype))
    image = x[0].permute(1, 2, 0).numpy()
    rec = recon[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    diff = np.abs(image - rec) * gain
    return (_save_png(image, out, f"{rel_stem}_image.png"), _save_png(rec, out, f"{rel_stem}_recon.png"),
            _save_png(diff, out, f"{rel_stem}_diff.png"), "")


def _with_latents(chosen: pd.DataFrame, inspected: str, store: Any) -> pd.DataFrame:
    """``chosen`` with ``best_latent`` filled from the results store where the scores table lacks it.

    A store row matches when it is the same image (sha256) scored by the same model to exactly the same score,
    so its latent decodes to that score.
    """
    chosen = chosen.copy()
    if "best_latent" not in chosen:
        chosen["best_latent"] = None
    need = ~chosen["best_latent"].map(lambda v: isinstance(v, (bytes, bytearray)))
    if store is None or not need.any() or "sha256" not in chosen:
        return chosen
    stored = store.load(model=inspected)
    if "best_latent" not in stored:
        return chosen
    stored = stored[stored["sha256"].isin(chosen.loc[need, "sha256"])
                    & stored["best_latent"].map(lambda v: isinstance(v, (bytes, bytearray)))]
    found = {(sha, float(score)): latent for sha, score, latent in
             zip(stored["sha256"], stored["score"], stored["best_latent"])}
    chosen.loc[need, "best_latent"] = [found.get((sha, float(score))) for sha, score in
                                       zip(chosen.loc[need, "sha256"], chosen.loc[need, "score"])]
    return chosen


def _hardest_section(cells: pd.DataFrame | None, scores: pd.DataFrame | None, results_dir: Path, out: Path,
                     decoders: DecoderLoader | None, store: Any, image_options: Any, n_cases: int,
                     gain: float) -> Section:
    sec = Section("hardest", "Hardest cases",
                  f"Per inspected model, the belonging images with the highest scores and the non-belonging images "
                  f"with the lowest, judged at the calibrated threshold. Reconstructions are the decoded best latent "
                  f"of each image; the difference is |image − reconstruction| × {gain:g}.")
    if cells is None or scores is None:
        sec.missing = "No results/table1_scores.parquet yet: run `make reproduce-table1`."
        return sec
    ok = scores[(scores["split"] == "evaluation") & (scores["status"] == "ok")]
    for name in tables._ordered(ok["inspected"]):
        pooled = cells[(cells["inspected"] == name) & (cells["source"] == "all")]
        if pooled.empty:
            continue
        threshold = float(pooled["threshold"].iloc[0])
        rows = ok[ok["inspected"] == name]
        cache: dict[str, Any] = {}

        def loader(name=name, cache=cache):
            if "ae" not in cache:
                cache["ae"] = decoders(name)
            return cache["ae"]

        for title, chosen, belongs in (
                ("belonging, highest scores", rows[rows["source"] == name].nlargest(n_cases, "score"), True),
                ("non-belonging, lowest scores", rows[rows["source"] != name].nsmallest(n_cases, "score"), False)):
            cases = []
            for k, (_, row) in enumerate(_with_latents(chosen, name, store).iterrows()):
                predicted = float(row["score"]) <= threshold
                stem = f"cases/{name}/{'belonging' if belongs else 'non_belonging'}_{k}"
                image, recon, diff, note = _reconstruct(row, results_dir, out, stem,
                                                        loader if decoders else None, image_options, gain)
                cases.append(Case(display_path(row["path"], results_dir.absolute().parent, results_dir.name),
                                  str(row["source"]), float(row["score"]),
                                  "belonging" if predicted else "not belonging", predicted == belongs,
                                  image, recon, diff, note))
            wrong = sum(not c.correct for c in cases)
            sec.groups.append(CaseGroup(f"{name}: {title}", f"threshold {threshold:.3g}; {wrong} of {len(cases)} "
                                        "shown are misjudged", cases))
    if not sec.groups:
        sec.missing = "No scored evaluation images in results/table1_scores.parquet."
    return sec


def _provenance_section(results_dir: Path, config: Mapping[str, Any] | None, wall: float | None) -> Section:
    info = provenance.collect(config)
    git = info["git"]
    sec = Section("provenance", "Provenance")
    commit = git["commit"] or "not a git checkout"
    dirty = {True: " (uncommitted changes)", False: " (clean tree)", None: ""}[git["dirty"]]
    sec.facts += [("commit", commit + dirty), ("built", info["date"])]
    m = info["machine"]
    sec.facts.append(("machine", f"{m['platform']}; Python {m['python']}; {m['cpu_count']} CPUs; torch threads "
                                 f"{m['torch_threads']}; device {m['device']}"))
    sec.facts.append(("packages", ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)))
    stages = provenance.load(results_dir)["stages"]
    if wall is not None:  # this build's own time replaces the previous report's
        stages = {k: v for k, v in stages.items() if k.split(" ")[0] != "report"}
    rows = []
    for name, entry in stages.items():
        state = {True: "dirty", False: "clean"}.get(entry.get("dirty"), "?")
        rows.append((name, [Cell(f"{float(entry.get('seconds', math.nan)):.1f}"), Cell(str(entry.get("finished"))),
                            Cell(f"{(entry.get('commit') or '?')[:10]} ({state})")]))
    if wall is not None:
        rows.append(("report", [Cell(f"{wall:.1f}"), Cell(info["date"]), Cell(f"{(git['commit'] or '?')[:10]}")]))
    sec.tables.append(Table("Wall time of each stage", ["seconds", "finished (UTC)", "commit"], rows,
                            "" if stages else f"No {provenance.FILE_NAME} in {results_dir.name}/: stages run before "
                            "it existed recorded no times.", "stage"))
    sec.code = json.dumps(config or {}, indent=2, sort_keys=True, default=str)
    return sec


def build_run_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                     decoders: DecoderLoader | None = None, store: Any = None, image_options: Any = None,
                     config: Mapping[str, Any] | None = None, metrics: Sequence[str] | None = None,
                     n_cases: int = 4, gain: float = 10.0, title: str = "latenttracer report") -> Path:
    """Write ``<out_dir>/index.html`` (and its images) from the files under ``results_dir``; return its path.

    ``decoders(name)`` loads an inspected model's autoencoder to decode the stored best latents of the hardest
    cases (``None``: images only). The latents come from the scores table's ``best_latent`` column or, where it
    has none, from ``store`` (a :class:`~latenttracer.store.ResultStore`). ``image_options``: the
    :class:`~latenttracer.images.ImageOptions` the scores were computed with; ``config`` is shown under provenance.
    """
    import time

    t0 = time.perf_counter()
    results_dir, out = Path(results_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures_dir = results_dir / "figures"
    cells_path, scores_path = results_dir / "table1.csv", results_dir / "table1_scores.parquet"
    cells = pd.read_csv(cells_path) if cells_path.is_file() else None
    scores = pd.read_parquet(scores_path) if scores_path.is_file() else None
    names = tables._ordered(cells["inspected"]) if cells is not None else []
    metrics = list(metrics or ["auc", "ap", "tpr_at_1fpr", "tpr_at_5fpr", "accuracy", "auc_step0",
                               "median_non_belonging"])
    sections = [_table1_section(cells, metrics),
                _hardest_section(cells, scores, results_dir, out, decoders, store, image_options, n_cases, gain),
                *_study_sections(results_dir, figures_dir, out),
                _ablations_section(results_dir, figures_dir, out),
                _models_section(names, figures_dir, out)]
    sections.append(_provenance_section(results_dir, config, time.perf_counter() - t0))
    built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return render(out / "index.html", title=title, sections=sections,
                  subtitle=f"Built on {built} from the cached results in {results_dir.name}/; nothing was recomputed.")


# -- a traced folder --------------------------------------------------------------------------------------------
def build_trace_report(frame: pd.DataFrame, out_html: str | os.PathLike, *, model: str,
                       threshold: float | None = None, config: Mapping[str, Any] | None = None,
                       n_nearest: int = 8, root: str | os.PathLike | None = None) -> Path:
    """Write ``out_html`` for one ``trace`` run (images beside it in ``<stem>_files/``); return its path.

    ``frame``: the rows ``trace`` writes (``path, score, status, belonging, ...``). Paths are shown relative to
    ``root``, the traced folder (default: ``config["images"]``, else the folder the paths share).
    """
    out_html = Path(out_html)
    root = _trace_root(frame, config) if root is None else Path(root)
    files = out_html.parent / f"{out_html.stem}_files"
    rel = files.name
    ok = frame[frame["status"] == "ok"].copy()
    ok["score"] = ok["score"].astype(float)
    summary = Section("summary", "Summary")
    summary.facts += [("inspected model", model), ("images", str(len(frame))), ("scored", str(len(ok))),
                      ("failed", str(int((frame["status"] == "failed").sum()))),
                      ("skipped", str(int((frame["status"] == "skipped").sum())))]
    if threshold is not None:
        n_bel = int((ok["score"] <= threshold).sum())
        summary.facts += [("threshold", f"{threshold:.4g}"), ("belonging", f"{n_bel} of {len(ok)}")]
    else:
        summary.facts.append(("threshold", "none given: no verdicts (use --threshold or --calibrate)"))

    dist = Section("distribution", "Score distribution")
    if len(ok) and (ok["score"] > 0).any():
        fig = tables.score_histogram(ok["score"].to_numpy(float), threshold, title=f"Inspected model {model}")
        tables.save_figure(fig, files / "scores", formats=("png",))
        dist.figures.append(Figure(f"{rel}/scores.png", "Scores (log scale) against the threshold (dashed)",
                                   "score histogram"))
    else:
        dist.missing = "No positive scores to draw."

    near = Section("nearest", "Nearest the threshold")
    if threshold is not None and len(ok):
        gap = np.abs(np.log10(ok["score"].clip(lower=1e-30)) - math.log10(max(threshold, 1e-30)))
        cases = []
        for k, (_, row) in enumerate(ok.assign(gap=gap).nsmallest(n_nearest, "gap").iterrows()):
            image = None
            if Path(row["path"]).is_file():
                from PIL import Image

                with Image.open(row["path"]) as img:
                    array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255
                image = f"{rel}/" + _save_png(array, files, f"near_{k}.png", max_side=160)
            predicted = float(row["score"]) <= threshold
            cases.append(Case(display_path(row["path"], root), "", float(row["score"]),
                              "belonging" if predicted else "not belonging", True, image))
        near.groups.append(CaseGroup("closest scores", f"threshold {threshold:.3g}", cases))
    else:
        near.missing = "No threshold given: nothing to be near."

    verdicts = Section("verdicts", "Verdicts")
    table_rows = []
    for _, row in frame.iterrows():
        score = row.get("score")
        bel = row.get("belonging")
        verdict = "" if bel is None or (isinstance(bel, float) and math.isnan(bel)) else (
            "belonging" if bool(bel) else "not belonging")
        table_rows.append((display_path(row["path"], root), [
            Cell(tables._fmt(float(score), "threshold") if score is not None and score == score else "–"),
            Cell(str(row["status"])),
            Cell(verdict, "#d9f0d3" if verdict == "belonging" else "#f7f7f7" if verdict else "")]))
    verdicts.tables.append(Table("Per image", ["score", "status", "verdict"], table_rows, corner="path"))
    prov = _provenance_section(out_html.parent, config, None)
    prov.tables = []
    return render(out_html, title=f"latenttracer trace: {model}", sections=[summary, dist, near, verdicts, prov],
                  subtitle="Verdicts of one `latenttracer trace` run.")


# -- rendering --------------------------------------------------------------------------------------------------
def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("latenttracer", "templates"),
                              autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def render(path: str | os.PathLike, *, title: str, subtitle: str, sections: Sequence[Section]) -> Path:
    """Render ``sections`` into one page at ``path`` (atomically) with ``templates/page.html.j2``."""
    html = _environment().get_template("page.html.j2").render(title=title, subtitle=subtitle, sections=sections)
    return atomic.write_text(path, html)
