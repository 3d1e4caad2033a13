"""Adaptive attacks: what it costs to evade each method, and to frame a model with an image it never made.

    python -m experiments.study --config-name attacks          # `make attacks` (conf/attacks.yaml)

For each inspected model (members of the job's suite or of a further suite under ``suites`` such as the CelebA VAEs,
and real decoders without a prior such as taef2, whose belonging images are decodes of latents made by
:mod:`data_gen.real_decoder`) and each method: the threshold is calibrated on the model's
calibration images (the method's own rule at the suite's target TPR); a seeded subset of its own evaluation images is
attacked to be judged not belonging (evasion) and a seeded subset of real crops and other models' images to be judged
belonging (forgery), with the attacks of :mod:`latenttracer.attacks`. Every attacked image is a PNG under
``attacked_dir`` scored through the shared results store (a rerun recomputes nothing). Only images the clean verdict
gets right count (own images judged belonging, others judged not belonging).

Publishes ``<out>.md``, ``<out>.csv`` (success rate with its Wilson interval at each budget), ``<out>_budgets.csv``
(the smallest budget at which 50% and 90% of the images flip, with an interval), ``<out>_images.csv`` (per image:
clean and attacked score, PSNR, L-infinity, LatentTracer's forgery bound), ``<out>_defences.csv`` (threshold, FPR and
evasion budget under each calibration) and figures ``<figures>/<out name>.{png,pdf}`` (success against PSNR) and
``<out name>_examples.png`` (originals, attacked images and the magnified difference).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import MISSING, OmegaConf, open_dict

from latenttracer import attacks as A
from latenttracer import protocol, tables
from latenttracer.images import load_images
from latenttracer.intervals import fmt_ci, wilson
from latenttracer.methods import LatentTracer
from latenttracer.reencoding import CLEAN, calibration_sets, family_name, parse_family, pooled_threshold
from latenttracer.studies.base import STUDIES, Context, FigureOut, MethodEntry, ReportSection, Study, StudyResult

log = logging.getLogger(__name__)

COLUMNS = ["method", "inspected", "goal", "attack", "norm", "gradient", "calibration", "budget", "budget_psnr",
           "success_rate", "success_lo", "success_hi", "k", "n", "threshold"]


@dataclass
class AttackMethodEntry(MethodEntry):
    """A method and its attacks; ``n_belonging``: own images attacked (evasion), ``n_per_source``: images per
    non-belonging source (forgery; real crops get ``n_real``)."""

    evade: list[str] = field(default_factory=lambda: ["noise", "pgd", "pgd_linf", "jpeg"])
    forge: list[str] = field(default_factory=lambda: ["projection", "projection_iter", "pgd"])
    n_real: int | None = None
    pgd_iters: int = 1                   # projected steps per budget (each one a gradient of the stand-in)
    inspected: list[str] | None = None   # null: every inspected model


@dataclass
class DecodedModel:
    """A real decoder without a prior: its belonging set is decodes of latents (data_gen.real_decoder)."""

    name: str = MISSING
    weights: str = MISSING
    resolution: int = 64
    n: int = 16                          # decodes: half calibration, half evaluation (the suite's split)
    n_real: int = 8                      # real crops (non-belonging)
    seed: int = 0


@dataclass
class DefenceConfig:
    methods: list[str] = field(default_factory=lambda: ["latenttracer"])  # labels of `methods`
    inspected: list[str] | None = None   # null: every inspected model
    family: str = "jpeg:90..70,downscale:0.5"  # --calibrate-perturb (latenttracer.calibration)
    n: int = 10                          # perturbed copies of this many calibration images
    attacks: list[str] = field(default_factory=lambda: ["noise", "pgd"])


@dataclass
class AttacksConfig:
    inspected: list[str] | None = None   # models of `suite` or of a suite of `suites` (null: every model of `suite`)
    suites: dict[str, Any] = field(default_factory=dict)  # further suites (conf/suite/), each a suite node
    decoded: list[DecodedModel] = field(default_factory=list)
    methods: list[AttackMethodEntry] = field(default_factory=list)
    calibration_n: int | None = None     # calibration images per model (seeded subset; null: all)
    psnr_range: list[float] = field(default_factory=lambda: [16.0, 64.0])
    rungs: int = 4
    steps: int = 4
    linf_max: int = 64
    jpeg_qualities: list[int] = field(default_factory=lambda: [95, 85, 70, 50])
    rounds: int = 3
    budgets: list[float] = field(default_factory=lambda: [60, 55, 50, 47, 44, 40, 35, 30, 25, 20])
    linf_budgets: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    defence: DefenceConfig = field(default_factory=DefenceConfig)
    subset_seed: int = 0
    seed: int = 0
    examples: dict[str, Any] = field(default_factory=lambda: {"method": "latenttracer", "n": 3, "magnify": 20})
    attacked_dir: str = MISSING
    decoded_dir: str = MISSING
    perturbed_dir: str = MISSING
    out: str = MISSING
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])


# -- images of one inspected model ---------------------------------------------------------------------------------
@dataclass
class Cell:
    name: str
    ae: Any
    calibration: list[Path]
    own: list[Path]
    others: dict[str, list[Path]]
    ctx: Any = None                      # the Context of the model's suite (its sets, splits, target TPR)
    suite: str = ""


def suite_contexts(cfg: Any, ctx: Context) -> dict[str, Context]:
    """Each model ``inspected`` names -> the Context of its suite: the job's ``suite``, or one of ``suites`` (the
    job's config with that suite in place of ``suite``: its sets, splits and models). A model name must be in exactly
    one suite."""
    owners: dict[str, tuple[str, Context]] = {str(m): ("suite", ctx) for m in cfg.suite.models}
    for key, suite in (cfg.get("suites") or {}).items():
        sub_cfg = copy.deepcopy(cfg)
        with open_dict(sub_cfg):
            kind = OmegaConf.get_type(cfg, "suite")  # a typed suite node is replaced by one of its type
            sub_cfg.suite = OmegaConf.merge(OmegaConf.structured(kind), suite) if is_dataclass(kind) else suite
        sub = type(ctx)(sub_cfg)
        for name in suite.models:
            if str(name) in owners:
                raise ValueError(f"suites.{key}: model {name!r} is also a model of {owners[str(name)][0]}; "
                                 "a model name must be in one suite only")
            owners[str(name)] = (f"suites.{key}", sub)
    names = list(cfg.inspected) if cfg.inspected else list(cfg.suite.models)
    missing = [n for n in names if str(n) not in owners]
    if missing:
        raise KeyError(f"inspected: {missing} are not models of suite {cfg.suite.name!r} or of `suites` "
                       f"(models: {list(owners)})")
    return {str(n): owners[str(n)][1] for n in names}


def zoo_cell(ctx: Context, sets: dict, name: str, seed: int) -> Cell:
    spec = ctx.model_spec(name)
    others = {src: list(parts["evaluation"]) for src, parts in sets.items() if src != name}
    return Cell(name, ctx.load_model(spec), list(sets[name]["calibration"]), list(sets[name]["evaluation"]), others,
                ctx, str(ctx.cfg.suite.name))


def decoded_cell(cfg: Any, ctx: Context, entry: Any) -> Cell:
    from data_gen.real_decoder import DecodedSetSettings, build_sets
    from latenttracer.autoencoders import load_autoencoder

    ae = load_autoencoder(str(entry.weights), name=str(entry.name), resolution=int(entry.resolution),
                          device=str(cfg.device) if str(cfg.device) != "auto" else "cpu")
    settings = DecodedSetSettings.from_dict({"resolution": int(entry.resolution), "n": int(entry.n),
                                             "n_real": int(entry.n_real), "seed": int(entry.seed)})
    folder = Path(cfg.decoded_dir) / f"{entry.name}-r{entry.resolution}-n{entry.n}-{entry.n_real}-s{entry.seed}"
    paths = build_sets(folder, ae, {str(entry.name): ae}, settings)
    split = protocol.split(paths[str(entry.name)], ctx.split_settings())
    return Cell(str(entry.name), ae, list(split["calibration"]), list(split["evaluation"]),
                {protocol.REAL: list(paths[protocol.REAL])}, ctx, "decoded")


def pick(paths: list[Path], n: int | None, seed: int) -> list[Path]:
    return protocol.subset(paths, int(n), seed) if n is not None and n < len(paths) else list(paths)


def as_uint8(paths: list[Path], resolution: int) -> np.ndarray:
    images, _, _ = load_images([str(p) for p in paths], resolution)
    return A.to_uint8(images)


# -- one (model, method) -----------------------------------------------------------------------------------------
def run_cell(cfg: Any, ctx: Context, cell: Cell, entry: Any, store, target: float) -> dict:
    method = ctx.method(entry)
    ae = cell.ae
    folder = Path(cfg.attacked_dir) / cell.name

    def score_paths(m):
        return lambda paths: ctx.score_paths(ae, paths, m, store=store)

    scorer = A.file_scorer(folder, score_paths(method))
    projector_method = (method if isinstance(method, LatentTracer)
                        else ctx.method(OmegaConf.create({"name": "latenttracer"})))
    projector = A.file_scorer(folder, score_paths(projector_method))
    seed = int(cfg.subset_seed)
    cal_paths = pick(cell.calibration, cfg.calibration_n, seed)
    cal = ctx.score_paths(ae, [str(p) for p in cal_paths], method, store=store)
    cal_ok = cal.loc[cal["status"] == "ok", "score"]
    threshold = float(method.calibrate(cal_ok.to_numpy(), target))
    own = as_uint8(pick(cell.own, entry.n_belonging, seed), ae.resolution)
    foreign_paths = []
    for src, paths in cell.others.items():
        n = entry.n_real if src == protocol.REAL and entry.n_real is not None else entry.n_per_source
        foreign_paths += pick(paths, n, seed)
    foreign = as_uint8(foreign_paths, ae.resolution)
    clean_own, clean_foreign = scorer(own), scorer(foreign)
    common = dict(psnr_range=tuple(cfg.psnr_range), steps=int(cfg.steps), rungs=int(cfg.rungs),
                  pgd_iters=int(entry.pgd_iters), seed=int(cfg.seed))
    results = {}
    for attack in entry.evade:
        t0 = time.time()
        results[("evade", attack)] = A.evade(method, ae, own, scorer, threshold, attack, clean=clean_own,
                                             linf_max=int(cfg.linf_max), jpeg_qualities=list(cfg.jpeg_qualities),
                                             **common)
        log.info("%s / %s evade %s: %.0f s", method.label, cell.name, attack, time.time() - t0)
    for attack in entry.forge:
        t0 = time.time()
        results[("forge", attack)] = A.forge(method, ae, foreign, scorer, threshold, attack, clean=clean_foreign,
                                             projector=projector, projector_method=projector_method,
                                             rounds=int(cfg.rounds), **common)
        log.info("%s / %s forge %s: %.0f s", method.label, cell.name, attack, time.time() - t0)
    return {"method": method, "threshold": threshold, "own": own, "foreign": foreign, "clean_own": clean_own,
            "clean_foreign": clean_foreign, "results": results, "cal": cal_ok.to_numpy(), "cal_paths": cal_paths,
            "scorer": scorer, "common": common}


def eligible(goal: str, res: A.AttackResult, threshold: float) -> np.ndarray:
    belongs = np.isfinite(res.clean_scores) & (res.clean_scores <= threshold)
    return belongs if goal == "evade" else np.isfinite(res.clean_scores) & ~belongs


def curve_rows(cfg: Any, label: str, inspected: str, calibration: str, threshold: float, results: dict) -> list[dict]:
    rows = []
    for (goal, attack), res in results.items():
        keep = eligible(goal, res, threshold)
        if res.norm == "linf":
            curve = A.success_curve(res, list(cfg.linf_budgets), eligible=keep)
            curve["budget_psnr"] = A.psnr((curve["budget"] / 255.0) ** 2)
        else:
            curve = A.success_curve(res, list(cfg.budgets), eligible=keep)
            curve["budget"] = A.mse_of_psnr(curve["budget_psnr"])
        for r in curve.to_dict("records"):
            rows.append({"method": label, "inspected": inspected, "goal": goal, "attack": attack, "norm": res.norm,
                         "gradient": res.gradient, "calibration": calibration, "threshold": threshold, **r})
    return rows


def budget_rows(label: str, inspected: str, calibration: str, threshold: float, results: dict,
                analytic: dict) -> list[dict]:
    rows = []
    for (goal, attack), res in results.items():
        keep = eligible(goal, res, threshold)
        for q in (0.5, 0.9):
            b = A.budget_quantile(res, q, eligible=keep)
            linf = res.norm == "linf"
            to_psnr = (lambda v: float(A.psnr((v / 255.0) ** 2))) if linf else float
            row = {"method": label, "inspected": inspected, "goal": goal, "attack": attack, "norm": res.norm,
                   "gradient": res.gradient, "calibration": calibration, "quantile": q,
                   "budget": b["budget"] if linf else float(A.mse_of_psnr(b["budget"])),
                   "budget_psnr": to_psnr(b["budget"]), "budget_psnr_small": to_psnr(b["budget_small"]),
                   "budget_psnr_large": to_psnr(b["budget_large"]), "n": b["n"], "threshold": threshold,
                   "analytic_psnr": analytic.get((goal, attack), math.nan)}
            rows.append(row)
    return rows


def image_rows(label: str, inspected: str, threshold: float, results: dict) -> list[dict]:
    rows = []
    for (goal, attack), res in results.items():
        keep = eligible(goal, res, threshold)
        bound = A.forgery_bound_mse(res.clean_scores, threshold)
        for i in range(len(res.success)):
            rows.append({"method": label, "inspected": inspected, "goal": goal, "attack": attack, "norm": res.norm,
                         "image": i, "eligible": bool(keep[i]), "clean_score": res.clean_scores[i],
                         "attacked_score": res.scores[i], "success": bool(res.success[i]),
                         "budget_psnr": res.budget_psnr[i], "linf": res.linf[i], "threshold": threshold,
                         "bound_psnr": float(A.psnr(bound[i])) if goal == "forge" and label == "latenttracer"
                         else math.nan})
    return rows


def analytic_budgets(label: str, threshold: float, out: dict) -> dict:
    """LatentTracer: the evasion budget of an orthogonal perturbation (MSE = t - s per image, median) for the noise
    and pgd rows, and the forgery bound (median over images) for the forgery rows."""
    if label != "latenttracer":
        return {}
    s = pd.to_numeric(out["clean_own"]["score"], errors="coerce").to_numpy(float)
    s = s[np.isfinite(s) & (s <= threshold)]
    f = pd.to_numeric(out["clean_foreign"]["score"], errors="coerce").to_numpy(float)
    f = f[np.isfinite(f) & (f > threshold)]
    evade = float(A.psnr(np.median(threshold - s))) if len(s) else math.nan
    forge = float(A.psnr(np.median(A.forgery_bound_mse(f, threshold)))) if len(f) else math.nan
    return {("evade", "noise"): evade, ("evade", "pgd"): evade, ("forge", "projection"): forge,
            ("forge", "projection_iter"): forge, ("forge", "pgd"): forge}


def defence_rows(cfg: Any, ctx: Context, cell: Cell, out: dict, store, target: float) -> tuple[list[dict], dict]:
    """The method's threshold calibrated on clean + perturbed copies (``--calibrate-perturb``): its FPR on the clean
    foreign images and its evasion results; with the clean threshold's, for the trade-off."""
    family = parse_family(str(cfg.defence.family))
    name = family_name(str(cfg.defence.family))
    some = pick(out["cal_paths"], int(cfg.defence.n), int(cfg.subset_seed))
    scores = {CLEAN: out["cal"]}
    for cond, paths in calibration_sets(some, family, cfg.perturbed_dir).items():
        if cond != CLEAN:
            frame = ctx.score_paths(cell.ae, [str(p) for p in paths], out["method"], store=store)
            scores[cond] = frame.loc[frame["status"] == "ok", "score"].to_numpy()
    t_def = pooled_threshold(out["method"], scores, target)
    results = {}
    for attack in cfg.defence.attacks:
        results[("evade", attack)] = A.evade(out["method"], cell.ae, out["own"], out["scorer"], t_def, attack,
                                             clean=out["clean_own"], **out["common"])
    return [{"t": t_def, "name": name}], results


def fpr_row(label: str, inspected: str, calibration: str, threshold: float, clean_foreign: pd.DataFrame,
            results: dict) -> dict:
    accepted = A.verdicts(clean_foreign, threshold)
    n, k = len(accepted), int(accepted.sum())
    lo, hi = wilson(k, n)
    row = {"method": label, "inspected": inspected, "calibration": calibration, "threshold": threshold, "fpr": k / n,
           "fpr_lo": lo, "fpr_hi": hi, "n_non_belonging": n}
    for (goal, attack), res in results.items():
        if goal == "evade" and attack in ("noise", "pgd"):
            b = A.budget_quantile(res, 0.5, eligible=eligible(goal, res, threshold))
            row[f"evade_{attack}_psnr50"] = b["budget"]
            row[f"evade_{attack}_psnr50_small"] = b["budget_small"]
            row[f"evade_{attack}_psnr50_large"] = b["budget_large"]
    return row


def suites_note(cells: list[Cell]) -> str:
    """The inspected models by suite, each suite with its split seed and target TPR."""
    parts = []
    for suite in dict.fromkeys(c.suite for c in cells if c.suite != "decoded"):
        members = [c for c in cells if c.suite == suite]
        p = members[0].ctx.protocol()
        parts.append(f"suite `{suite}` ({', '.join(c.name for c in members)}; split seed {p['split_seed']}, "
                     f"target TPR {p['target_tpr']:.0%}, {p['n_generated']} generated images per model)")
    return "Inspected: " + ("; ".join(parts) or "no suite model")


def analytic_check(row: pd.Series) -> str:
    """Whether LatentTracer's analytic evasion budget lies within the measured 50% budget's interval."""
    an, lo, hi = row["analytic_psnr"], row["budget_psnr_large"], row["budget_psnr_small"]
    if not np.isfinite(an):
        return "no analytic budget"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"not resolved at n = {int(row['n'])}"
    return "within the interval" if lo <= an <= hi else "outside the interval"


def analytic_note(budgets: pd.DataFrame) -> str:
    """One sentence per model: LatentTracer's noise evasion budget (50%) against the analytic one, MSE = t - s."""
    rows = budgets if budgets.empty else budgets[
        (budgets["method"] == "latenttracer") & (budgets["goal"] == "evade") & (budgets["attack"] == "noise")
        & (budgets["calibration"] == CLEAN) & (budgets["quantile"] == 0.5)]
    if rows.empty:
        return "LatentTracer's analytic evasion budget: no LatentTracer noise evasion in this run."
    parts = [f"{r['inspected']}: measured "
             f"{fmt_budget(r['budget_psnr'], r['budget_psnr_large'], r['budget_psnr_small'])} dB, "
             f"analytic {r['analytic_psnr']:.1f} dB, {analytic_check(r)}" for _, r in rows.iterrows()]
    return ("LatentTracer's noise evasion budget (50% of own images) against the analytic one (median MSE t - s): "
            + "; ".join(parts) + ".")


# -- figures and text --------------------------------------------------------------------------------------------
def figure(curves: pd.DataFrame):
    """Success rate against PSNR per (goal, inspected model): one line per method (white-box pgd solid, the best
    black-box baseline dotted: noise for evasion, the iterated projection for forgery), Wilson error bars."""
    plt = tables._pyplot()
    l2 = curves[(curves["norm"] == "l2") & (curves["calibration"] == CLEAN)]
    models = list(dict.fromkeys(l2["inspected"]))
    methods = list(dict.fromkeys(l2["method"]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, max(1, len(models)), figsize=(3.3 * max(1, len(models)), 6.2), sharex=True,
                             sharey=True, squeeze=False)
    for row, (goal, dotted) in enumerate((("evade", "noise"), ("forge", "projection_iter"))):
        for col, model in enumerate(models):
            ax = axes[row][col]
            for i, method in enumerate(methods):
                for attack, style in (("pgd", "-"), (dotted, ":")):
                    c = l2[(l2["goal"] == goal) & (l2["inspected"] == model) & (l2["method"] == method)
                           & (l2["attack"] == attack)].sort_values("budget_psnr")
                    if c.empty:
                        continue
                    err = np.vstack([c["success_rate"] - c["success_lo"], c["success_hi"] - c["success_rate"]])
                    ax.errorbar(c["budget_psnr"] + 0.25 * (i - len(methods) / 2), c["success_rate"], yerr=err,
                                ls=style, marker="o", ms=3, lw=1, capsize=1.5, color=colours[i % len(colours)],
                                label=method if attack == "pgd" else None)
            ax.set_title(f"{'evasion' if goal == 'evade' else 'forgery'}: {model}", fontsize=9)
            ax.invert_xaxis() if col == 0 and row == 0 else None
            ax.grid(alpha=0.3)
            ax.set_ylim(-0.03, 1.03)
            if row == 1:
                ax.set_xlabel("budget: PSNR to the original (dB)")
        axes[row][0].set_ylabel("success rate (95% Wilson)")
    labels = {}
    for ax in axes.flat:  # a method may be on some models only: one legend for the figure
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    fig.suptitle("Attack success against budget (solid: white-box pgd; dotted: noise / iterated projection)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(list(labels.values()), list(labels), loc="lower center", ncol=max(1, len(labels)), fontsize=7)
    return fig


def examples_figure(examples: list[tuple[str, np.ndarray, np.ndarray]], magnify: float):
    """One row per example: original, attacked, |difference| magnified (at least ``magnify``, and so that the
    largest difference reaches half the scale)."""
    plt = tables._pyplot()
    fig, axes = plt.subplots(len(examples), 3, figsize=(5.4, 1.9 * len(examples)), squeeze=False)
    for ax_row, (title, orig, att) in zip(axes, examples):
        diff = np.abs(att.astype(np.float64) - orig.astype(np.float64))
        gain = max(float(magnify), 255.0 / max(float(diff.max()), 1.0) / 2)  # at least half the scale
        for ax, img, name in zip(ax_row, (orig, att, np.clip(diff * gain, 0, 255).astype(np.uint8)),
                                 ("original", "attacked", f"|difference| x {gain:.0f}")):
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(name, fontsize=7)
        ax_row[0].set_ylabel(title, fontsize=7)
    fig.tight_layout()
    return fig


def pick_examples(cells: dict, label: str, n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    for (model, method), out_ in cells.items():
        if method != label:
            continue
        for goal, attack in (("evade", "pgd"), ("forge", "projection_iter")):
            res = out_["results"].get((goal, attack))
            if res is None:
                continue
            keep = np.flatnonzero(res.success & eligible(goal, res, out_["threshold"]))[:1]
            src = out_["own"] if goal == "evade" else out_["foreign"]
            for i in keep:
                out.append((f"{model} {goal} {attack}\n{res.budget_psnr[i]:.1f} dB, score {res.clean_scores[i]:.2g}"
                            f"->{res.scores[i]:.2g}", src[i], res.attacked[i]))
    return out[: 2 * n]


def fmt_budget(value: float, large: float, small: float) -> str:
    """A budget (dB) with its interval, every number to 0.1 dB; a side the Wilson interval never reaches within the
    search is ``-``."""
    side = lambda v: f"{v:.1f}" if np.isfinite(v) else "-"  # noqa: E731
    return f"{value:.1f} [{side(large)}, {side(small)}]"


def markdown(budgets: pd.DataFrame, defences: pd.DataFrame, notes: list[str]) -> str:
    parts = ["# Adaptive attacks", "", *notes, "", "## Smallest budget that flips 50% / 90% of the images", "",
             "PSNR to the original in dB (higher = a smaller, less visible change; L-infinity rows: 8-bit levels), "
             "with the interval of budgets at which the success rate's 95% Wilson interval contains the fraction. "
             "`analytic`: LatentTracer's predicted budget (evasion: median MSE t - s; forgery: the bound "
             "(sqrt(s) - sqrt(t))^2). `-`: fewer images flip within the range.", ""]
    clean = budgets[budgets["calibration"] == CLEAN]
    body = []
    for key, g in clean.groupby(["method", "inspected", "goal", "attack", "norm"], sort=False):
        cells = []
        for q in (0.5, 0.9):
            r = g[g["quantile"] == q].iloc[0]
            if r["norm"] == "linf":
                v = r["budget"]
                cells.append("-" if not np.isfinite(v) else f"{v:.0f} levels")
            else:
                cells.append("-" if not np.isfinite(r["budget_psnr"]) else
                             fmt_budget(r["budget_psnr"], r["budget_psnr_large"], r["budget_psnr_small"]))
        r0 = g.iloc[0]
        an = r0["analytic_psnr"]
        body.append([*key, r0["gradient"], int(r0["n"]), *cells, "" if not np.isfinite(an) else f"{an:.1f}",
                     f"{r0['threshold']:.3g}"])
    parts.append(tables.markdown_table(body, ["method", "inspected", "goal", "attack", "norm", "gradient", "n",
                                              "50%", "90%", "analytic", "threshold"]))
    if len(defences):
        parts += ["", "## Defences: the evasion budget and the false-positive rate under each calibration", "",
                  "FPR: clean foreign images (real crops, other models) accepted, with its Wilson interval.", ""]
        body = []
        for r in defences.to_dict("records"):
            def fmt(k: str, r: dict = r) -> str:
                return "-" if not np.isfinite(r.get(k, math.nan)) else fmt_budget(r[k], r[k + "_large"],
                                                                                   r[k + "_small"])

            body.append([r["method"], r["inspected"], r["calibration"], f"{r['threshold']:.3g}",
                         fmt_ci(r["fpr"], r["fpr_lo"], r["fpr_hi"]), int(r["n_non_belonging"]),
                         fmt("evade_noise_psnr50"), fmt("evade_pgd_psnr50")])
        parts.append(tables.markdown_table(body, ["method", "inspected", "calibration", "threshold", "FPR", "n",
                                                  "noise 50% (dB)", "pgd 50% (dB)"]))
    return "\n".join(parts) + "\n"


@STUDIES.register
class Attacks(Study):
    name = "attacks"
    config = AttacksConfig
    section = ReportSection("Adaptive attacks", ("attacks_budgets.csv", "attacks_defences.csv"),
                            ("attacks.png", "attacks_examples.png"), "make attacks", order=50)

    def run(self, cfg: Any, ctx: Context) -> StudyResult:
        from data_gen.zoo.speed import machine_speed

        start = time.time()
        store = ctx.store()
        cells, sets = [], {}
        if cfg.inspected:  # each model with its own suite's sets (made through data_gen if missing)
            for name, suite_ctx in suite_contexts(cfg, ctx).items():
                if id(suite_ctx) not in sets:
                    sets[id(suite_ctx)] = suite_ctx.image_sets()
                cells.append(zoo_cell(suite_ctx, sets[id(suite_ctx)], name, int(cfg.subset_seed)))
        cells += [decoded_cell(cfg, ctx, e) for e in cfg.decoded]
        curves, budgets, images, defences, done = [], [], [], [], {}
        defended = set(cfg.defence.methods)
        for cell in cells:
            for entry in cfg.methods:
                if entry.inspected is not None and cell.name not in list(entry.inspected):
                    continue
                out = run_cell(cfg, cell.ctx, cell, entry, store, cell.ctx.split_settings().target_tpr)
                label, t = out["method"].label, out["threshold"]
                out["options"] = dict(entry.options)
                done[(cell.name, label)] = out
                curves += curve_rows(cfg, label, cell.name, CLEAN, t, out["results"])
                budgets += budget_rows(label, cell.name, CLEAN, t, out["results"], analytic_budgets(label, t, out))
                images += image_rows(label, cell.name, t, out["results"])
                defences.append(fpr_row(label, cell.name, CLEAN, t, out["clean_foreign"], out["results"]))
                if label in defended and (cfg.defence.inspected is None or cell.name in cfg.defence.inspected):
                    (d,), res = defence_rows(cfg, cell.ctx, cell, out, store, cell.ctx.split_settings().target_tpr)
                    curves += curve_rows(cfg, label, cell.name, d["name"], d["t"], res)
                    budgets += budget_rows(label, cell.name, d["name"], d["t"], res, {})
                    defences.append(fpr_row(label, cell.name, d["name"], d["t"], out["clean_foreign"], res))
        curves_f = pd.DataFrame(curves)[COLUMNS]
        budgets_f, images_f, defences_f = pd.DataFrame(budgets), pd.DataFrame(images), pd.DataFrame(defences)
        wall = time.time() - start
        sizes = "; ".join(f"`{e.name}`{'' if not e.options else ' ' + str(dict(e.options))}"
                          f"{'' if e.inspected is None else ' on ' + ', '.join(e.inspected)}: "
                          f"{e.n_belonging or 'all'} own, {e.n_per_source or 'all'} per other source, "
                          f"{e.n_real if e.n_real is not None else e.n_per_source or 'all'} real; "
                          f"evade {list(e.evade)}, "
                          f"forge {list(e.forge)}" for e in cfg.methods)
        notes = [
            f"{suites_note(cells)}; decoded sets ({', '.join(e.name for e in cfg.decoded) or 'none'}) from "
            "data_gen.real_decoder (decodes of encoded crops and interpolated latents; real crops of the same photos).",
            "Threshold per (method, model): the method's own rule on the model's calibration images"
            + (f" (a seeded subset of {cfg.calibration_n})" if cfg.calibration_n else "") + ". Attacked: a "
            "seeded subset of its own evaluation images (evasion) and of the real crops and other models' evaluation "
            "images (forgery); only images the clean verdict gets right count (n).",
            f"Images per method: {sizes}.",
            f"Budget search: {cfg.rungs} rungs from {cfg.psnr_range[0]:g} to {cfg.psnr_range[1]:g} dB, then "
            f"{cfg.steps} halvings (resolution "
            f"{(cfg.psnr_range[1] - cfg.psnr_range[0]) / cfg.rungs / 2 ** cfg.steps:.2f} dB); "
            f"L-infinity: bisection over 1..{cfg.linf_max} levels; JPEG qualities {list(cfg.jpeg_qualities)}; "
            f"{cfg.rounds} projection rounds. Every attacked image is 8-bit and its PSNR is measured on it.",
            f"Defence: `{family_name(str(cfg.defence.family))}` = the threshold on the clean calibration scores and "
            f"perturbed copies of {cfg.defence.n} of them, pooled (trace --calibrate-perturb).",
            f"Wall time of this run {wall:.0f} s (cached scores cost nothing); machine speed: {machine_speed(1)}.",
        ]
        notes.append(analytic_note(budgets_f))
        stem = Path(cfg.out)
        figs = [FigureOut(figure(curves_f), [Path(cfg.outputs.figures) / stem.name], list(cfg.formats),
                          log_key="attacks")]
        ex = pick_examples(done, str(cfg.examples.get("method", "latenttracer")), int(cfg.examples.get("n", 3)))
        if ex:
            figs.append(FigureOut(examples_figure(ex, float(cfg.examples.get("magnify", 20))),
                                  [Path(cfg.outputs.figures) / f"{stem.name}_examples"], ["png"]))
        return StudyResult(
            curves_f, objective=float(budgets_f["budget_psnr"].mean()), stem=stem,
            markdown=markdown(budgets_f, defences_f, notes),
            tables={"": curves_f, "_budgets": budgets_f, "_images": images_f, "_defences": defences_f},
            log_tables={"attacks_budgets": budgets_f}, figures=figs)
