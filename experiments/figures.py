"""Figures from cached files only (no inversion): PNG and PDF under ``outputs.figures``.

    python -m experiments.figures

From ``outputs.table1`` + ``_scores.parquet`` (and ``.csv``, for the thresholds): per inspected model, belonging
vs non-belonging loss histograms (log-x), ROC curves and the mean loss at each inversion step. From
``outputs.ablations``: AUC against the number of steps (one line per initialisation) and AUC against the learning
rate, for rows of the current suite whose other inversion settings equal ``cfg.inversion``. A missing input file
skips its figures; nothing to draw at all is an error. Config: ``conf/figures.yaml``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments import common
from latenttracer import atomic, tables

log = logging.getLogger(__name__)


def matching(rows: pd.DataFrame, cfg: DictConfig, free: list[str]) -> pd.DataFrame:
    """Ablation rows of this suite whose inversion settings equal ``cfg.inversion`` except the ``free`` ones."""
    inv = common.inversion_config(cfg)
    keep = rows["suite"] == cfg.suite.name
    for key in ("init", "lr", "steps", "schedule", "distance", "strategy"):
        if key in free:
            continue
        value = getattr(inv, key)
        if key == "lr":
            keep &= np.isclose(rows[key].astype(float), float(value))
        else:
            keep &= rows[key].astype(str) == str(value)
    return rows[keep].drop_duplicates(["inspected", "source", *free], keep="last")


def summary_markdown(steps: pd.DataFrame, lr: pd.DataFrame) -> str:
    """The pooled cells (``source == all``) of the steps and lr sweeps as Markdown: AUC and TPR@1%FPR, each with
    its 95% interval where the rows have one."""
    parts = []
    for title, rows, index, columns in (("steps x init", steps, "steps", "init"), ("learning rate", lr, "lr", None)):
        pooled = rows[rows["source"] == "all"]
        if pooled.empty or pooled[index].nunique() < 2:
            continue
        for metric in ("auc", "tpr_at_1fpr"):
            keys = [columns] if columns else []
            table = tables.pivot_formatted(pooled, ["inspected", *keys], index, metric, sort=True)
            header = ["inspected", *keys, *table.columns]
            body = [[*(key if isinstance(key, tuple) else (key,)), *row] for key, row in table.iterrows()]
            ci = " [95% CI]" if tables.has_interval(pooled, metric) else ""
            parts += [f"### {tables.METRIC_LABELS.get(metric, metric)}{ci} (all sources pooled) vs {title}", "",
                      tables.markdown_table(body, header), ""]
    return "\n".join(parts)


def draw(cfg: DictConfig, out: Path) -> dict[str, list[Path]]:
    """Every figure the cached files allow, saved under ``out``; returns {name: [files]}."""
    formats = list(cfg.formats)
    made: dict[str, list[Path]] = {}
    stem = Path(cfg.outputs.table1)
    scores_path, cells_path = stem.with_name(stem.name + "_scores.parquet"), stem.with_name(stem.name + ".csv")
    if scores_path.is_file():
        scores = pd.read_parquet(scores_path)
        cells = pd.read_csv(cells_path) if cells_path.is_file() else None
        for name in scores["inspected"].unique():
            threshold = None if cells is None else float(cells.loc[cells["inspected"] == name, "threshold"].iloc[0])
            for kind, fig in (("hist", tables.loss_histograms(scores, name, threshold)),
                              ("roc", tables.roc_curves(scores, name)),
                              ("loss_vs_step", tables.mean_loss_vs_step(scores, name))):
                made[f"{kind}_{name}"] = tables.save_figure(fig, out / f"{kind}_{name}", formats)
    else:
        log.warning("%s not found: no histograms, ROC curves or loss curves (run experiments.table1)", scores_path)
    ablations = Path(cfg.outputs.ablations)
    if ablations.is_file():
        rows = pd.read_csv(ablations)
        steps = matching(rows, cfg, ["steps", "init"])
        if steps["steps"].nunique() > 1:
            made["auc_vs_steps"] = tables.save_figure(tables.metric_vs_param(
                steps, "steps", hue="init", xscale="symlog", title=f"AUC vs inversion steps (lr {cfg.inversion.lr})"),
                out / "auc_vs_steps", formats)
        lr = matching(rows, cfg, ["lr"])
        summary = summary_markdown(steps, lr)
        if summary:
            atomic.write_text(out / "ablations.md", summary)
            print(summary, flush=True)
        if lr["lr"].nunique() > 1:
            made["auc_vs_lr"] = tables.save_figure(tables.metric_vs_param(
                lr, "lr", xscale="log", title=f"AUC vs learning rate ({cfg.inversion.steps} steps, "
                                               f"{cfg.inversion.init} init)"), out / "auc_vs_lr", formats)
    else:
        log.warning("%s not found: no ablation figures (run experiments.ablations)", ablations)
    if not made:
        raise FileNotFoundError(f"nothing to draw: neither {scores_path} nor usable rows in {ablations}; run "
                                "experiments.table1 and/or experiments.ablations first")
    return made


def run(cfg: DictConfig) -> dict[str, list[Path]]:
    """Draw into the job's output directory, then publish copies under ``outputs.figures``."""
    out = common.setup(cfg)
    with common.tracker(cfg, "figures") as tracker:
        made = draw(cfg, out / "figures")
        target = Path(cfg.outputs.figures)
        published = {}
        for name, files in made.items():
            published[name] = [atomic.write(target / f.name, lambda tmp, f=f: shutil.copyfile(f, tmp))
                               for f in files]
        summary = out / "figures" / "ablations.md"  # the ablation tables, when there are ablations
        if summary.is_file():
            atomic.write(target / summary.name, lambda tmp: shutil.copyfile(summary, tmp))
        log.info("%d figures published to %s", len(published), target)
        tracker.log_images({f"figures/{name}": files[0] for name, files in made.items() if files[0].suffix == ".png"})
    return published


@hydra.main(version_base="1.3", config_path="../conf", config_name="figures")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
