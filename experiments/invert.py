"""One inspected model x one image set -> scores in the results store (cached, resumable).

    python -m experiments.invert model=kl-a images=kl-b            # a model's generated set
    python -m experiments.invert model=kl-a images=/path/to/photos  # any folder
    python -m experiments.invert -m hydra/launcher=joblib hydra.launcher.n_jobs=2 threads=1 \\
        model=kl-a,kl-b,kl-a-ft,vq,tiny,kl16 images=table1           # everything Table 1 needs, in parallel

Writes ``scores.csv`` (one row per image) into the job's output directory; the scores themselves live in the
shared store (``store``), where ``table1`` and ``ablations`` find them. Config: ``conf/invert.yaml``.
"""

from __future__ import annotations

import logging
import time

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from experiments import common
from latenttracer.atomic import write_frame as atomic_write_frame

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> pd.DataFrame:
    """Score ``cfg.images`` with ``cfg.model``; return one row per image (source, split, path, score, ...)."""
    out = common.setup(cfg)
    images = common.named_images(cfg, cfg.images, str(cfg.split), inspected=str(cfg.model.name),
                                 recursive=bool(cfg.recursive))
    images = shard(images, int(cfg.shards), int(cfg.shard))
    with common.tracker(cfg, "invert") as tracker:
        ae = common.load_model(cfg, cfg.model)
        inv = common.inversion_config(cfg, dtype=str(cfg.model.get("dtype", "float32")))
        t0 = time.perf_counter()
        frame = common.invert_paths(cfg, ae, images["path"], inv, on_bad_image=str(cfg.on_bad_image))
        seconds = time.perf_counter() - t0
        rows = images.merge(frame.drop(columns=["trajectory"], errors="ignore"), on="path", how="inner")
        rows.insert(0, "inspected", ae.name)
        atomic_write_frame(rows, out / "scores.csv")
        fresh = int((~rows["cached"].astype(bool)).sum())
        summary = {"invert/images": len(rows), "invert/computed": fresh, "invert/cached": len(rows) - fresh,
                   "invert/failed": int((rows["status"] != "ok").sum()), "invert/seconds": seconds,
                   "invert/image_steps_per_s": fresh * inv.scored_steps / seconds if fresh else float("nan")}
        for (source, split), group in rows.groupby(["source", "split"], sort=False):
            summary[f"invert/median_score/{source}/{split}"] = float(np.nanmedian(group["score"]))
        tracker.log_metrics(summary)
        tracker.log_table("scores", rows)
    log.info("%s x %s: %d images (%d computed, %d cached) in %.1fs -> %s", ae.name, cfg.images, len(rows), fresh,
             len(rows) - fresh, seconds, out / "scores.csv")
    return rows


def shard(images: pd.DataFrame, shards: int, index: int) -> pd.DataFrame:
    """Rows ``index, index + shards, ...`` of ``images``: ``shards`` jobs together score every image once.

    Jobs of one inspected model then share its work, so a multirun's last job is short (scores do not depend on
    which images are inverted together).
    """
    if shards < 1 or not 0 <= index < shards:
        raise ValueError(f"shard={index}, shards={shards}: need shards >= 1 and 0 <= shard < shards")
    return images.iloc[index::shards].reset_index(drop=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="invert")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
