"""Table 1: every inspected model against every model's images and real images.

    python -m experiments.table1                          # the zoo (experiment=table1_zoo)
    python -m experiments.table1 experiment=table1_paper device=cuda
    python -m experiments.table1 debug=default            # a smoke run in seconds

Scores come from the shared store, computing only what is missing. Writes into the job's output directory and
publishes ``outputs.table1`` + ``.md``, ``.csv`` and ``.tex`` (the cells) and ``_scores.parquet`` (one row per
(inspected model, image): inspected, source, split, path, score, init_loss, best_step, trajectory, ...); prints
the Markdown table. The protocol is :mod:`latenttracer.protocol`; config: ``conf/table1.yaml``.
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
from latenttracer import atomic, protocol, tables

log = logging.getLogger(__name__)


def notes(cfg: DictConfig) -> list[str]:
    """How the table was made, for the Markdown header."""
    p, inv = common.protocol(cfg), cfg.inversion
    n_cal = round(p["calibration_fraction"] * p["n_generated"])
    return [
        (f"Suite `{p['suite']}`: {p['n_generated']} generated images per model"
         + (f" (generation seed {p['generation_seed']})" if p["generation_seed"] else "")
         + f", split {n_cal} calibration / "
         f"{p['n_generated'] - n_cal} evaluation (seed {p['split_seed']}); {p['n_real']} real images "
         f"({p['real_kind']}). Threshold per inspected model: {p['target_tpr']:.0%} TPR on its calibration half."),
        (f"Inversion: init={inv.init}, lr={inv.lr}, steps={inv.steps}, schedule={inv.schedule}, "
         f"distance={inv.distance}, strategy={inv.strategy}; images resized `{p['resize']}`."),
        "Rows: inspected model; columns: source of the non-belonging images (`all`: every source pooled).",
    ]


def figures(cells: pd.DataFrame, scores: pd.DataFrame, out: Path) -> dict[str, Path]:
    """Loss histograms and ROC curves per inspected model (PNG + PDF); returns {key: png}."""
    made = {}
    for name in cells["inspected"].unique():
        threshold = float(cells.loc[cells["inspected"] == name, "threshold"].iloc[0])
        png, _ = tables.save_figure(tables.loss_histograms(scores, name, threshold), out / f"hist_{name}")
        made[f"figures/hist/{name}"] = png
        png, _ = tables.save_figure(tables.roc_curves(scores, name), out / f"roc_{name}")
        made[f"figures/roc/{name}"] = png
    return made


def run(cfg: DictConfig) -> pd.DataFrame:
    """Compute (or read from the store) the grid, write and publish the tables; return the cells."""
    out = common.setup(cfg)
    stem = Path(cfg.outputs.table1)
    title = f"Table 1 ({cfg.suite.name})"
    with common.tracker(cfg, "table1") as tracker:
        cells, scores = protocol.evaluate(common.image_sets(cfg), common.inspected_models(cfg),
                                          common.inversion_scorer(cfg),
                                          target_tpr=common.split_settings(cfg).target_tpr)
        metrics = list(cfg.outputs.metrics)
        tables.write_tables(cells, out / stem.name, metrics, title, notes(cfg))
        parquet = atomic.write_frame(scores, out / f"{stem.name}_scores.parquet")
        tables.write_tables(cells, stem, metrics, title, notes(cfg))  # published copies
        atomic.write(stem.with_name(parquet.name), lambda tmp: shutil.copyfile(parquet, tmp))
        print(tables.tables_markdown(cells, metrics, title, notes(cfg)), flush=True)
        log.info("published %s.{md,csv,tex} and %s", stem, stem.with_name(parquet.name))
        images = figures(cells, scores, out / "figures") if cfg.figures else {}
        tracker.log_metrics(protocol.flat_metrics(cells, "table1"))
        tracker.log_table("table1", cells)
        tracker.log_images(images)
        tracker.log_artifact(parquet, name=f"{stem.name}-scores", type="scores")
    return cells


@hydra.main(version_base="1.3", config_path="../conf", config_name="table1")
def main(cfg: DictConfig) -> float:
    """Returns the mean AUC of the pooled cells (an objective for Hydra sweepers)."""
    cells = run(cfg)
    return float(np.mean(cells.loc[cells["source"] == protocol.ALL, "auc"]))


if __name__ == "__main__":
    main()
