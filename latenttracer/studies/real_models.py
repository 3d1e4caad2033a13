"""Table 1 on eight real pretrained VAEs (suite ``celeba``), every method, with intervals, and why some inspectors
reproduce their siblings' samples.

    python -m experiments.real_models            # `make real-models` runs the whole chain, then this

Scores are read, never computed here: LatentTracer's from the suite's Table 1 (``outputs.table1``), the other
methods' from the methods study's runs (``outputs.method_runs``), attribution accuracies from the attribution study
(``outputs.attribution``): the experiment ``conf/experiment/table1_celeba.yaml`` points all of them at this suite.
Per (method, inspected model, source): the inspected model's own evaluation half is the belonging class, the
source's evaluation half (or the real crops) the non-belonging class; ``all`` pools every other source. Metrics
and their 95% intervals come from :func:`latenttracer.metrics.detection_metrics` (AUC: DeLong; AP and TPR at 5%
FPR: seeded stratified bootstrap), accuracy intervals from :func:`latenttracer.intervals.wilson`.

The investigation (per inspected model, LatentTracer's loop and the suite's images):

* distance to the inspector's range: the median best loss of each source's evaluation images (the score itself);
* the decoder's local Lipschitz estimate: ``||J v|| / ||v||`` of the decoder's Jacobian at prior samples, for
  random unit directions ``v`` (``torch.autograd.functional.jvp``), as an RMS pixel change per unit latent step;
* latent coverage: ``||z*||^2`` of the inverted latents (the store's ``best_latent`` of LatentTracer's rows)
  against the prior's chi2 with L degrees of freedom: its median and the fraction beyond the chi2 99% point.

Publishes ``<out>.{md,csv}`` (one row per method / inspected / source), ``<out>_attribution.csv``,
``<out>_investigation.csv`` and the figures ``<outputs.figures>/../real_models_{auc,investigation}.png``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from latenttracer import protocol, tables
from latenttracer.intervals import fmt_ci, wilson
from latenttracer.metrics import detection_metrics
from latenttracer.studies.base import STUDIES, Context, FigureOut, ReportSection, Study, StudyResult

log = logging.getLogger(__name__)

COLUMNS = ["method", "inspected", "source", "auc", "auc_lo", "auc_hi", "ap", "ap_lo", "ap_hi", "tpr_at_5fpr",
           "tpr_at_5fpr_lo", "tpr_at_5fpr_hi", "n_belonging", "n_non_belonging", "n_failed", "median_belonging",
           "median_non_belonging", "seconds_per_image"]
CHI2_99 = {10: 23.209251}  # chi2 99% point by degrees of freedom (scipy.stats.chi2.ppf(0.99, 10))


@dataclass
class RealModelsConfig:
    out: str = "results/real_models"       # publishes <out>.{md,csv}, <out>_attribution.csv, <out>_investigation.csv
    figures: str = "results/figures"       # real_models_auc.png, real_models_investigation.png go here
    since: float | None = None             # Unix time the make target started: its wall time goes on the page
    lipschitz_samples: int = 32            # prior samples per inspected model
    lipschitz_directions: int = 8          # random unit directions per sample
    seed: int = 0
    n_boot: int = 1000
    formats: list[str] = field(default_factory=lambda: ["png"])


# -- the table --------------------------------------------------------------------------------------------------
def seconds_lookup(runs: Path) -> dict[tuple[str, str], float]:
    """(method label, inspected) -> seconds per image, from every method run's cells."""
    from latenttracer.studies.methods import load_runs

    out = {}
    for cells, _ in load_runs(runs).values():
        if "seconds_per_image" in cells:
            for r in cells.drop_duplicates("inspected").itertuples():
                out[(str(r.method), str(r.inspected))] = float(r.seconds_per_image)
    return out


def cell_rows(method: str, scores: pd.DataFrame, models: list[str], seconds: dict, *, n_boot: int,
              seed: int) -> list[dict]:
    """One row per (inspected, source) and per inspected pooled (``all``) for one method's per-image scores."""
    ev = scores[scores["split"] == "evaluation"]
    rows = []
    for m in models:
        mine = ev[ev["inspected"] == m]
        if mine.empty:
            continue
        ok = mine[(mine["status"] == "ok") & np.isfinite(mine["score"].astype(float))]
        own = ok.loc[ok["source"] == m, "score"].to_numpy(float)
        sources = [s for s in dict.fromkeys(mine["source"]) if s != m]
        for s in [*sources, protocol.ALL]:
            other = ok.loc[ok["source"] != m if s == protocol.ALL else ok["source"] == s, "score"].to_numpy(float)
            n_failed = int(((mine["source"] != m) if s == protocol.ALL else (mine["source"] == s)).sum()
                           - other.size + (mine["source"] == m).sum() - own.size)
            if not own.size or not other.size:
                continue
            d = detection_metrics(own, other, n_boot=n_boot, seed=seed)
            rows.append({"method": method, "inspected": m, "source": s, "auc": d.auc, "auc_lo": d.auc_lo,
                         "auc_hi": d.auc_hi, "ap": d.ap, "ap_lo": d.ap_lo, "ap_hi": d.ap_hi,
                         "tpr_at_5fpr": d.tpr_at_5fpr, "tpr_at_5fpr_lo": d.tpr_at_5fpr_lo,
                         "tpr_at_5fpr_hi": d.tpr_at_5fpr_hi, "n_belonging": own.size,
                         "n_non_belonging": other.size, "n_failed": n_failed,
                         "median_belonging": float(np.median(own)), "median_non_belonging": float(np.median(other)),
                         "seconds_per_image": seconds.get((method, m), math.nan)})
    return rows


def attribution_rows(path: Path) -> pd.DataFrame:
    """The attribution study's accuracies with Wilson intervals (``accuracy`` of ``n`` evaluation images)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no attribution results for this suite; run experiments.attribution "
                                "with the same experiment first (make real-models does)")
    acc = pd.read_csv(path)
    acc = acc[["method", "source", "n", "accuracy"]].dropna(subset=["accuracy"]).copy()
    k = (acc["accuracy"] * acc["n"]).round()
    bounds = [wilson(kk, nn) for kk, nn in zip(k, acc["n"])]
    acc["accuracy_lo"] = [b[0] for b in bounds]
    acc["accuracy_hi"] = [b[1] for b in bounds]
    return acc.reset_index(drop=True)


# -- the investigation ------------------------------------------------------------------------------------------
def lipschitz(ae: Any, n: int, directions: int, seed: int) -> np.ndarray:
    """Per prior sample: the mean over random unit directions of ``||J v||`` (RMS over pixels): the pixel change
    one unit latent step makes there."""
    from torch.autograd.functional import jvp

    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    z = ae.sample_prior(gens).detach()
    g = torch.Generator().manual_seed(seed + 10_000)
    out = np.zeros(n)
    clamp, ae.clamp = ae.clamp, False  # the Jacobian of the decoder itself, not of the clamp
    try:
        for _ in range(directions):
            v = torch.randn(z.shape, generator=g)
            v = v / v.norm(dim=1, keepdim=True)
            _, jv = jvp(ae.decode, (z,), (v.to(z.dtype),))
            out += jv.flatten(1).square().mean(1).sqrt().numpy() / directions
    finally:
        ae.clamp = clamp
    return out


def latent_norms(ctx: Context, ae: Any, paths: list[str]) -> np.ndarray:
    """``||z*||^2`` of LatentTracer's stored best latents of ``paths`` under ``ae`` (from the store)."""
    from latenttracer.inversion import latent_from_bytes

    frame = ctx.score_paths(ae, paths, ctx.method(), store=ctx.store())
    if "best_latent" not in frame:
        return np.full(len(paths), np.nan)
    return np.array([float(latent_from_bytes(v).double().square().sum()) if isinstance(v, (bytes, bytearray))
                     else np.nan for v in frame["best_latent"]])


STALLED = 1e-5  # a best loss above this (about 8x the 8-bit floor of ~1.3e-6) leaves an own sample unreproduced


def own_latent_errors(ctx: Context, ae: Any, paths: list[str], seed: int) -> dict[str, float]:
    """For a model's own samples (image ``NNNNN.png`` decodes the prior sample seeded ``seed + N``): the median
    squared distance of the encoder mean and of LatentTracer's best latent to the true latent, and the fraction of
    images whose best loss stays above :data:`STALLED`, overall and among those whose encoder start is farther
    than the median."""
    from latenttracer.images import load_images
    from latenttracer.inversion import latent_from_bytes

    truth = ae.sample_prior([torch.Generator().manual_seed(seed + int(Path(p).stem)) for p in paths]).double()
    images, _, _ = load_images(paths, ae.resolution, ctx.image_options())
    start = ae.encode(images).double()
    frame = ctx.score_paths(ae, paths, ctx.method(), store=ctx.store())
    best = torch.stack([latent_from_bytes(v).double() for v in frame["best_latent"]])
    enc_err = (start - truth).square().sum(1).numpy()
    best_err = (best - truth).square().sum(1).numpy()
    stalled = frame["score"].to_numpy(float) > STALLED
    far = enc_err > np.median(enc_err)
    return {"own_encoder_err2_median": float(np.median(enc_err)), "own_best_err2_median": float(np.median(best_err)),
            "own_stalled": float(stalled.mean()), "own_stalled_far_start": float(stalled[far].mean()),
            "own_stalled_near_start": float(stalled[~far].mean()), "n_own": len(paths)}


def investigation(ctx: Context, cfg: Any, models: list[str], lt: pd.DataFrame) -> pd.DataFrame:
    """Per (inspected, source): sibling AUC, median score, the inspector's Lipschitz estimate, ``||z*||^2``."""
    sets = ctx.image_sets()
    rows = []
    for m in models:
        ae = ctx.load_model(ctx.model_spec(m))
        lip = lipschitz(ae, int(cfg.lipschitz_samples), int(cfg.lipschitz_directions), int(cfg.seed))
        dof = int(np.prod(ae.latent_shape))
        own_errors = own_latent_errors(ctx, ae, [str(p) for p in sets[m]["evaluation"]],
                                       int(ctx.generation_settings().seed))
        tail = CHI2_99.get(dof)
        for s in [*models, "real"]:
            paths = [str(p) for p in (sets[s]["evaluation"] if s in sets else [])]
            if not paths:
                continue
            norms = latent_norms(ctx, ae, paths)
            cell = lt[(lt["inspected"] == m) & (lt["source"] == s)]
            own = s == m
            rows.append({
                "inspected": m, "source": s, "own": own,
                "auc": float(cell["auc"].iloc[0]) if len(cell) else math.nan,
                "auc_lo": float(cell["auc_lo"].iloc[0]) if len(cell) else math.nan,
                "auc_hi": float(cell["auc_hi"].iloc[0]) if len(cell) else math.nan,
                "median_score": (float(cell["median_non_belonging"].iloc[0]) if len(cell)
                                 else float(lt.loc[lt["inspected"] == m, "median_belonging"].iloc[0])),
                "lipschitz_median": float(np.median(lip)), "lipschitz_q10": float(np.quantile(lip, 0.1)),
                "lipschitz_q90": float(np.quantile(lip, 0.9)),
                "z_norm2_median": float(np.nanmedian(norms)) if np.isfinite(norms).any() else math.nan,
                "z_beyond_chi2_99": (float(np.nanmean(norms > tail)) if tail and np.isfinite(norms).any()
                                     else math.nan),
                "n_latents": int(np.isfinite(norms).sum()), "latent_dim": dof,
                **(own_errors if own else {}),
            })
        log.info("%s: Lipschitz median %.3g", m, float(np.median(lip)))
    return pd.DataFrame(rows)


# -- rendering --------------------------------------------------------------------------------------------------
def auc_figure(table: pd.DataFrame, methods: list[str], models: list[str]):
    """One AUC heat map per method (rows: inspected, columns: source), each cell ``auc`` over its interval."""
    plt = tables._pyplot()
    cols = 4
    rows = math.ceil(len(methods) / cols)
    sources = [*models, "real", protocol.ALL]
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.2 * rows), squeeze=False)
    for ax, method in zip(axes.flat, methods):
        t = table[table["method"] == method]
        grid = np.full((len(models), len(sources)), np.nan)
        for r in t.itertuples():
            if r.inspected in models and r.source in sources:
                i, j = models.index(r.inspected), sources.index(r.source)
                grid[i, j] = r.auc
                ax.text(j, i, f"{r.auc:.2f}\n[{r.auc_lo:.2f},\n{r.auc_hi:.2f}]", ha="center", va="center",
                        fontsize=4.6, color="white" if r.auc < 0.75 else "black")
        ax.imshow(grid, cmap="viridis", vmin=0.5, vmax=1.0)
        ax.set_xticks(range(len(sources)), sources, rotation=60, ha="right", fontsize=6)
        ax.set_yticks(range(len(models)), models, fontsize=6)
        ax.set_title(method, fontsize=9)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.suptitle("AUC (own evaluation images vs each source; 95% interval below); rows: inspected model", fontsize=10)
    fig.tight_layout()
    return fig


def investigation_figure(inv: pd.DataFrame):
    """Sibling AUC (with its interval) against the inspector's Lipschitz estimate and the siblings' ||z*||^2."""
    plt = tables._pyplot()
    sib = inv[(~inv["own"]) & (inv["source"] != "real")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.0))
    err = np.vstack([sib["auc"] - sib["auc_lo"], sib["auc_hi"] - sib["auc"]])
    for ax, x, label, log_x in ((axes[0], sib["lipschitz_median"], "inspector's decoder: median ||Jv|| "
                                 "(RMS pixel per unit latent step)", False),
                                (axes[1], sib["z_norm2_median"], "sibling samples' median ||z*||^2 under the "
                                 "inspector", True),
                                (axes[2], sib["median_score"], "sibling samples' median best loss (distance to "
                                 "the inspector's range)", True)):
        ax.errorbar(x, sib["auc"], yerr=err, fmt="o", ms=4, alpha=0.7, elinewidth=0.6)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("AUC vs that sibling (95% interval)", fontsize=8)
        if log_x:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    dof = int(inv["latent_dim"].iloc[0])
    axes[1].axvline(dof, color="gray", ls="--", lw=0.8)
    axes[1].text(dof, 0.02, f" prior mean ({dof})", fontsize=7, color="gray", transform=axes[1].get_xaxis_transform())
    for ax in axes[1:]:
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
    fig.suptitle("LatentTracer: one point per (inspector, sibling) pair", fontsize=10)
    fig.tight_layout()
    return fig


def markdown(table: pd.DataFrame, attribution: pd.DataFrame, inv: pd.DataFrame, methods: list[str],
             models: list[str], notes: list[str]) -> str:
    lines = ["# Table 1 on eight real pretrained VAEs (suite celeba)", "", *notes, ""]
    sources = [*models, "real", protocol.ALL]
    lines += ["## Pooled AUC per method (own evaluation images vs every other source)", ""]
    body = []
    for method in methods:
        t = table[(table["method"] == method) & (table["source"] == protocol.ALL)].set_index("inspected")
        body.append([method, *(fmt_ci(t.at[m, "auc"], t.at[m, "auc_lo"], t.at[m, "auc_hi"]) if m in t.index
                               else "–" for m in models)])
    lines += [tables.markdown_table(body, ["method \\ inspected", *models]), ""]
    lines += ["## Hardest pair per method (lowest AUC against one other model)", ""]
    body = []
    for method in methods:
        t = table[(table["method"] == method) & table["source"].isin(models)]
        if len(t):
            r = t.loc[t["auc"].idxmin()]
            body.append([method, f"{r['inspected']} vs {r['source']}", fmt_ci(r["auc"], r["auc_lo"], r["auc_hi"]),
                         f"{int(r['n_belonging'])} + {int(r['n_non_belonging'])}"])
    lines += [tables.markdown_table(body, ["method", "pair (inspected vs source)", "AUC [95%]", "n"]), ""]
    if len(attribution):
        lines += ["## Attribution among the eight (and real -> none)", ""]
        a = attribution[attribution["source"] == protocol.ALL]
        lines += [tables.markdown_table([[r.method, fmt_ci(r.accuracy, r.accuracy_lo, r.accuracy_hi), int(r.n)]
                                         for r in a.itertuples()], ["method", "accuracy [95% Wilson]", "n"]), ""]
    if len(inv):
        lines += ["## Why some inspectors reproduce their siblings' samples (LatentTracer)", "",
                  "Per inspected model: its pooled AUC; its decoder's local Lipschitz estimate at prior samples; "
                  "the median `||z*||^2` of its own and of its siblings' samples inverted through it (the prior's "
                  f"mean is {int(inv['latent_dim'].iloc[0])}); the fraction of sibling latents beyond the chi2 99% "
                  "point; the median best loss of its own and its siblings' samples.", ""]
        body = []
        for m in models:
            g = inv[inv["inspected"] == m]
            if g.empty:
                continue
            own, sib = g[g["own"]], g[(~g["own"]) & (g["source"] != "real")]
            pooled = table[(table["method"] == "latenttracer") & (table["inspected"] == m)
                           & (table["source"] == protocol.ALL)]
            auc = (fmt_ci(pooled["auc"].iloc[0], pooled["auc_lo"].iloc[0], pooled["auc_hi"].iloc[0])
                   if len(pooled) else "–")
            o = own.iloc[0]
            k = round(o["own_stalled"] * o["n_own"])
            lo, hi = wilson(k, o["n_own"])
            body.append([m, auc, f"{g['lipschitz_median'].iloc[0]:.3g}", f"{o['z_norm2_median']:.3g}",
                         f"{sib['z_norm2_median'].median():.3g}", f"{sib['z_beyond_chi2_99'].mean():.2f}",
                         f"{o['median_score']:.3g}", f"{sib['median_score'].median():.3g}",
                         f"{int(k)}/{int(o['n_own'])} {fmt_ci(o['own_stalled'], lo, hi)}",
                         f"{o['own_stalled_far_start']:.2f} / {o['own_stalled_near_start']:.2f}",
                         f"{o['own_encoder_err2_median']:.3g}", f"{o['own_best_err2_median']:.3g}"])
        lines += [tables.markdown_table(body, ["inspected", "pooled AUC [95%]", "Lipschitz (median ||Jv||)",
                                               "own ||z*||^2", "siblings ||z*||^2", "siblings beyond chi2 99%",
                                               "own median loss", "siblings median loss",
                                               f"own stalled (loss > {STALLED:g}) [95% Wilson]",
                                               "stalled: far / near encoder start",
                                               "own ||E(x) - z||^2", "own ||z* - z||^2"]), ""]
    for method in methods:
        t = table[table["method"] == method]
        body = []
        for m in models:
            row = t[t["inspected"] == m].set_index("source")
            body.append([m, *(fmt_ci(row.at[s, "auc"], row.at[s, "auc_lo"], row.at[s, "auc_hi"]) if s in row.index
                              else "–" for s in sources)])
        lines += [f"## AUC: {method} (rows: inspected; columns: source; 95% interval)", "",
                  tables.markdown_table(body, ["inspected \\ source", *sources]), ""]
    return "\n".join(lines) + "\n"


@STUDIES.register
class RealModels(Study):
    name = "real_models"
    config = RealModelsConfig
    section = ReportSection("Real models: eight pretrained CelebA VAEs", ("real_models.csv",),
                            ("real_models_*.png", "real_models/confusion_*.png"), "make real-models", order=15)

    def run(self, cfg: Any, ctx: Context) -> StudyResult:
        """The table, attribution intervals and the investigation; the objective is LatentTracer's mean pooled
        AUC."""
        from latenttracer.studies.attribution import method_runs

        models = list(cfg.suite.models)
        runs = method_runs(cfg)
        seconds = seconds_lookup(Path(cfg.outputs.method_runs))
        rows = []
        for method, (_cells, scores) in runs.items():
            rows += cell_rows(method, scores, models, seconds, n_boot=int(cfg.n_boot), seed=int(cfg.seed))
        table = pd.DataFrame(rows, columns=COLUMNS)
        methods = list(dict.fromkeys(table["method"]))
        attribution = attribution_rows(Path(str(cfg.outputs.attribution) + ".csv"))
        lt = table[table["method"] == "latenttracer"]
        inv = investigation(ctx, cfg, models, lt) if len(lt) else pd.DataFrame()
        p = ctx.protocol()
        from data_gen.zoo.speed import machine_speed

        speed = machine_speed(1)
        wall = (f"Wall time of `make real-models` up to this study: {time.time() - float(cfg.since):.0f} s; "
                if cfg.since else "Wall time: not recorded (run through `make real-models`); ")
        sizes = table.groupby("method")[["n_belonging"]].max()["n_belonging"].to_dict()
        notes = [
            f"Suite `{p['suite']}`: eight VAEs trained on CelebA by a third party (models/disvae-celeba/, MIT), one "
            "architecture and one data set, eight objectives. Each model's set samples its prior N(0, I) (seeded); "
            "the calibration half sets each method's threshold, the evaluation half is the belonging class; each "
            "other model's evaluation half and the real class are non-belonging. The real class is crops of the "
            "project's evaluation photos (a cat, coffee, flowers) at 64 px: **not faces**.",
            "Belonging images per inspected model (evaluation half): "
            + ", ".join(f"`{m}` {int(n)}" for m, n in sizes.items())
            + " (RONAN scores a subset: conf/method/ronan.yaml).",
            "Cells read `AUC [95% interval]`: DeLong for the AUC (conservative at 0 or 1); AP and TPR at 5% FPR: "
            f"seeded stratified bootstrap ({int(cfg.n_boot)} resamples) in the CSV; accuracy: Wilson.",
            f"{wall}machine speed {speed}. Seconds per image: each method's probe in its job (one thread per job).",
        ]
        figures = [FigureOut(auc_figure(table, methods, models), [Path(cfg.figures) / "real_models_auc"],
                             list(cfg.formats))]
        if len(inv):
            figures.append(FigureOut(investigation_figure(inv), [Path(cfg.figures) / "real_models_investigation"],
                                     list(cfg.formats)))
        pooled = table[(table["method"] == "latenttracer") & (table["source"] == protocol.ALL)]
        return StudyResult(
            table, objective=float(pooled["auc"].mean()) if len(pooled) else math.nan, stem=Path(cfg.out),
            markdown=markdown(table, attribution, inv, methods, models, notes),
            tables={"": table, "_attribution": attribution, "_investigation": inv}, figures=figures,
            log_tables={"real_models": table})
