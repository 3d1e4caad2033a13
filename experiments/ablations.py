"""Ablations of the inversion: one job per inversion config (a Hydra multirun), one CSV row per (job, cell).

    python -m experiments.ablations experiment=ablation_steps   # init {encoder, random} x steps {0..200}
    python -m experiments.ablations experiment=ablation_lr      # lr {0.005 .. 0.5}
    python -m experiments.ablations experiment=ablation_init    # init {encoder, random, zeros}
    python -m experiments.ablations experiment=ablation_lr inspected=[kl-a,vq] hydra/launcher=joblib threads=1

Each job evaluates the Table 1 grid of the ``inspected`` models with its inversion config and merges its cells
into ``outputs.ablations`` (rows with the same protocol, inspected model, source and inversion config are
replaced, so a rerun adds no duplicates). With ``ablation.trajectory_steps``, a job inverts once with that many
steps (cached, shared by every job of the sweep with the same other settings) and cuts the trajectory to its
own step count (:func:`latenttracer.protocol.truncate`; exact). Config: ``conf/ablations.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from experiments import common
from latenttracer import atomic, protocol, tables
from latenttracer.locks import locked

log = logging.getLogger(__name__)

KEY = ["protocol", "inspected", "source", "config_hash"]
INVERSION_COLUMNS = ["init", "lr", "steps", "schedule", "distance", "strategy", "seed"]


def rows(cfg: DictConfig, cells: pd.DataFrame) -> pd.DataFrame:
    """The cells with the job's ablation name, protocol and inversion settings in front."""
    front = []
    for name in cells["inspected"]:
        inv = common.inversion_config(cfg, dtype=str(common.model_config(cfg, name).get("dtype", "float32")))
        front.append({"ablation": str(cfg.ablation.name), "protocol": common.protocol_hash(cfg),
                      **common.protocol(cfg), **{k: getattr(inv, k) for k in INVERSION_COLUMNS},
                      "config_hash": inv.hash()})
    return pd.concat([pd.DataFrame(front), cells.reset_index(drop=True)], axis=1)


def run(cfg: DictConfig) -> pd.DataFrame:
    """Evaluate the grid with this job's inversion config; merge its rows into ``outputs.ablations``."""
    out = common.setup(cfg)
    steps = cfg.ablation.trajectory_steps
    with common.tracker(cfg, "ablations") as tracker:
        scorer = common.inversion_scorer(cfg, trajectory_steps=None if steps is None else int(steps))
        cells, _ = protocol.evaluate(common.image_sets(cfg), common.inspected_models(cfg), scorer,
                                     target_tpr=common.split_settings(cfg).target_tpr)
        table = rows(cfg, cells)
        atomic.write_frame(table, out / "ablation_cells.csv")
        target = Path(cfg.outputs.ablations)
        with locked(target.with_name(f".{target.name}.lock")):
            merged = tables.upsert_csv(target, table, KEY)
        log.info("%s: %d rows merged (%d in the file)", target, len(table), len(merged))
        tracker.log_metrics(protocol.flat_metrics(cells, "ablation"))
        tracker.log_table("ablation_cells", table)
    return table


@hydra.main(version_base="1.3", config_path="../conf", config_name="ablations")
def main(cfg: DictConfig) -> float:
    """Returns the pooled AUC of the first inspected model (an objective for Hydra sweepers)."""
    table = run(cfg)
    return float(table.loc[table["source"] == protocol.ALL, "auc"].iloc[0])


if __name__ == "__main__":
    main()
