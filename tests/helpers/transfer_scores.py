"""Tiny synthetic per-image score frames in the Table 1 layout (shared by the transfer study's tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def score_frame(shift: float, models=("a", "b"), n: int = 6, seed: int = 0, method: str | None = None,
                shifts: dict | None = None) -> pd.DataFrame:
    """Every inspected model of ``models`` scores its own calibration and evaluation images (normal, mean 0) and
    every other model's and the real crops' evaluation images (mean ``shift``, or ``shifts[source]``): higher
    ``shift`` separates better (lower score = belonging). sha256 names the image, so two frames of the same
    ``models`` and ``n`` score the same images."""
    rng = np.random.default_rng(seed)
    rows = []
    for inspected in models:
        for source in (*models, "real"):
            own = source == inspected
            mean = 0.0 if own else (shifts or {}).get(source, shift)
            for split in (("calibration", "evaluation") if own else ("evaluation",)):
                for k in range(n):
                    rows.append({"inspected": inspected, "source": source, "split": split,
                                 "path": f"/images/{source}/{split}{k}.png", "sha256": f"{source}-{split}-{k}",
                                 "score": float(rng.normal(mean, 1.0)), "status": "ok", "reason": ""})
    frame = pd.DataFrame(rows)
    if method is not None:
        frame.insert(0, "method", method)
    return frame


def write_domain(root: Path, latenttracer: pd.DataFrame, runs: dict[str, pd.DataFrame]) -> tuple[Path, Path]:
    """Table 1's parquet (LatentTracer) and a method-runs folder (one ``<preset>_{cells.csv,scores.parquet}`` per
    entry of ``runs``, the frame's ``method`` column its label) under ``root``; returns (parquet, folder)."""
    root.mkdir(parents=True, exist_ok=True)
    table1 = root / "table1_scores.parquet"
    latenttracer.to_parquet(table1)
    folder = root / "methods"
    folder.mkdir()
    for preset, frame in runs.items():
        frame.to_parquet(folder / f"{preset}_scores.parquet")
        frame[["method", "inspected"]].drop_duplicates().to_csv(folder / f"{preset}_cells.csv", index=False)
    return table1, folder
