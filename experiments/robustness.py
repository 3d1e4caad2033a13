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
Publishes ``<out>.{md,csv}`` and ``<report.figures>/<out name>.{png,pdf}`` (one panel per perturbation kind,
AUC against strength, one line per method, averaged over the inspected models).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments import common
from latenttracer import protocol, report
from latenttracer.metrics import detection_metrics
from latenttracer.perturbations import Perturbation, kind_of, parse_grid, perturbed_set
from latenttracer.store import ResultStore

log = logging.getLogger(__name__)

CLEAN = "clean"
COLUMNS = ["method", "inspected", "perturbation", "strength", "condition", "auc", "accuracy", "tpr", "fpr",
           "threshold", "n_belonging", "n_non_belonging", "n_failed"]


def grid(cfg: DictConfig) -> tuple[Perturbation, ...]:
    """The conditions of ``cfg.perturbation`` (errors name the YAML's key)."""
    try:
        return parse_grid(list(cfg.perturbation.conditions))
    except (TypeError, ValueError) as err:
        raise ValueError(f"perturbation {cfg.perturbation.name!r} (conf/perturbation/), key conditions: {err}") from err


def cell_images(sets: protocol.ImageSets, inspected: str, entry: DictConfig, seed: int) -> dict[str, list[Path]]:
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
    return {"auc": m.auc, "accuracy": m.accuracy, "tpr": m.tpr, "fpr": m.fpr, "threshold": threshold,
            "n_belonging": m.n_belonging, "n_non_belonging": m.n_non_belonging, "n_failed": failed}


def run_model(cfg: DictConfig, sets: protocol.ImageSets, inspected: str, conditions: tuple[Perturbation, ...],
              store: ResultStore) -> list[dict]:
    """Every (method, condition) row of one inspected model."""
    spec = common.model_spec(cfg, inspected)
    ae = common.load_model(cfg, spec)
    rows = []
    for entry in cfg.methods:
        method = common.listed_method(cfg, entry, dtype=spec.dtype)
        calibration = common.score_method(cfg, ae, sets[inspected]["calibration"], method, store=store)
        threshold = float(method.calibrate(calibration.loc[calibration["status"] == "ok", "score"],
                                           common.split_settings(cfg).target_tpr))
        images = cell_images(sets, inspected, entry, int(cfg.subset_seed))
        for condition in (None, *conditions):
            if condition is None:
                chosen = images
            else:
                chosen = {k: perturbed_set(v, condition, cfg.perturbed_dir) for k, v in images.items()}
            paths = list(dict.fromkeys(str(p) for v in chosen.values() for p in v))
            scores = common.score_method(cfg, ae, paths, method, store=store)
            row = {"method": method.label, "inspected": inspected,
                   "perturbation": CLEAN if condition is None else condition.kind,
                   "strength": np.nan if condition is None else float(condition.strength),
                   "condition": CLEAN if condition is None else condition.name,
                   **condition_row(scores, chosen, threshold)}
            log.info("%s %s %s: AUC %.3f, accuracy %.3f", row["method"], inspected, row["condition"], row["auc"],
                     row["accuracy"])
            rows.append(row)
    return rows


def notes(cfg: DictConfig, conditions: tuple[Perturbation, ...], rows: pd.DataFrame) -> list[str]:
    p = common.protocol(cfg)
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
        "Threshold per (method, inspected model): calibrated on the model's CLEAN calibration half at "
        f"{p['target_tpr']:.0%} TPR (the method's own rule); every evaluation image, belonging and non-belonging, "
        "is perturbed. AUC pools every non-belonging source; accuracy, TPR and FPR are at the clean threshold.",
        "Images per cell: " + "; ".join(sizes) + ".",
    ]


def table_markdown(rows: pd.DataFrame, cfg: DictConfig, conditions: tuple[Perturbation, ...]) -> str:
    """One table per metric: rows (method, inspected), columns the conditions in grid order (clean first)."""
    order = [CLEAN, *[c.name for c in conditions]]
    parts = ["# Robustness", "", *notes(cfg, conditions, rows)]
    for metric in ("auc", "accuracy", "tpr", "fpr"):
        wide = rows.pivot_table(index=["method", "inspected"], columns="condition", values=metric, sort=False)
        wide = wide[[c for c in order if c in wide.columns]]
        body = [[m, i, *(f"{v:.3f}" for v in r)] for (m, i), r in wide.iterrows()]
        parts += ["", f"## {metric}", "", report.markdown_table(body, ["method", "inspected", *wide.columns])]
    return "\n".join(parts) + "\n"


def figure(rows: pd.DataFrame):
    """One panel per perturbation kind: AUC against strength, one line per method (mean over inspected models,
    the range over them shaded); the clean AUC as the dotted line of the same colour."""
    plt = report._pyplot()
    kinds = [k for k in dict.fromkeys(rows["perturbation"]) if k != CLEAN]  # grid order
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


def run(cfg: DictConfig) -> pd.DataFrame:
    out = common.setup(cfg)
    conditions = grid(cfg)
    sets = common.image_sets(cfg)
    store = ResultStore(cfg.store)
    stem = Path(cfg.out)
    with common.tracker(cfg, "robustness") as tracker:
        rows = []
        for name in common.inspected_models(cfg):
            rows += run_model(cfg, sets, name, conditions, store)
        frame = pd.DataFrame(rows, columns=COLUMNS)
        text = table_markdown(frame, cfg, conditions)
        report.publish(stem, out, text, {"": frame})
        pngs = report.save_figure(figure(frame), Path(cfg.report.figures) / stem.name, list(cfg.formats))
        print(text, flush=True)
        log.info("published %s.{md,csv} and %s", stem, pngs[0])
        tracker.log_table("robustness", frame)
        tracker.log_images({"figures/robustness": pngs[0]} if pngs and pngs[0].suffix == ".png" else {})
    return frame


@hydra.main(version_base="1.3", config_path="../conf", config_name="robustness")
def main(cfg: DictConfig) -> float:
    """Returns the mean AUC over the perturbed conditions."""
    frame = run(cfg)
    return float(frame.loc[frame["perturbation"] != CLEAN, "auc"].mean())


if __name__ == "__main__":
    main()
