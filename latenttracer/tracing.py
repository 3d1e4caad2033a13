"""Score files of images against one inspected model: images -> inversion -> results store.

This is the one path from a list of image files to per-image scores; the CLI, the Hydra entry points and the
benchmarks all use it. Results are keyed on (image content sha256, model name, run hash); the run hash covers
the inversion config, the image preprocessing and a fingerprint of the autoencoder weights, so a rerun skips
every image already scored, and a run killed half-way resumes where it stopped (each batch is written to the
store atomically as soon as it finishes).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from latenttracer.autoencoders import Autoencoder
from latenttracer.images import BadImageError, ImageOptions, file_sha256, load_images
from latenttracer.inversion import InversionConfig, invert
from latenttracer.store import ResultStore

RESULT_COLUMNS = ["path", "sha256", "score", "init_loss", "best_step", "status", "reason", "seconds", "cached"]


def run_hash(ae: Autoencoder, config: InversionConfig, image_options: ImageOptions) -> str:
    """The cache key part that says *how* an image was scored by this model."""
    prep = {k: v for k, v in asdict(image_options).items() if k in ("resize", "alpha_background")}
    return config.hash({"model": ae.fingerprint, "resolution": ae.resolution, "clamp": ae.clamp}, prep)


def latent_to_bytes(latent: torch.Tensor) -> bytes:
    """A latent as the ``best_latent`` store value: ``.npy`` bytes (float32, shape included)."""
    buf = io.BytesIO()
    np.save(buf, latent.detach().float().cpu().numpy(), allow_pickle=False)
    return buf.getvalue()


def latent_from_bytes(value: bytes) -> torch.Tensor:
    """The latent stored by :func:`latent_to_bytes` (one image, no batch dimension)."""
    return torch.from_numpy(np.load(io.BytesIO(bytes(value)), allow_pickle=False))


def image_seed(sha256: str, seed: int) -> int:
    """Random-init seed of one image: fixed by its content, independent of batch and position."""
    return (int(sha256[:12], 16) + int(seed)) % (2**63)


def score_images(
    ae: Autoencoder,
    paths: Sequence[str | Path],
    config: InversionConfig = InversionConfig(),
    *,
    store: ResultStore | None = None,
    image_options: ImageOptions = ImageOptions(),
    on_bad_image: str = "error",
    progress: bool = True,
    desc: str | None = None,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Score every file in ``paths``; return (one row per scored path, [(path, reason) skipped]).

    Rows carry ``path, sha256, score, init_loss, best_step, status, reason, seconds, cached`` and the loss
    trajectory (``trajectory``, one float per scored step) and the latent of the scored step (``best_latent``,
    :func:`latent_to_bytes`; rows cached before it existed have none). With a ``store``, finished images are taken
    from it and new results are appended batch by batch; without one, everything is computed in memory.
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image: {on_bad_image!r} is not one of ['error', 'skip']")
    paths = [str(p) for p in paths]
    key = run_hash(ae, config, image_options)
    skipped: list[tuple[str, str]] = []
    shas: dict[str, str] = {}
    for p in paths:
        try:
            shas[p] = file_sha256(p)
        except OSError as err:
            bad = BadImageError(p, f"cannot read file ({err.strerror or err})")
            if on_bad_image == "error":
                raise bad from err
            skipped.append((p, bad.reason))
    done = store.done(ae.name, key) if store is not None else set()
    todo, seen = [], set(done)
    for p, sha in shas.items():
        if sha not in seen:
            todo.append(p)
            seen.add(sha)

    cfg = InversionConfig(**{**asdict(config), "record_trajectory": True, "record_latent": True})
    fresh: list[dict] = []
    bar = tqdm(total=len(todo), desc=desc or f"trace {ae.name}", unit="img", disable=not progress or not todo)
    for start in range(0, len(todo), config.batch_size):
        chunk = todo[start:start + config.batch_size]
        images, records, bad = load_images(chunk, ae.resolution, image_options, on_bad_image=on_bad_image)
        skipped.extend(bad)
        if not records:
            continue
        t0 = time.perf_counter()
        results = invert(ae, images, cfg, seeds=[image_seed(r.sha256, config.seed) for r in records])
        per_image = (time.perf_counter() - t0) / len(records)
        rows = [{
            "path": r.path, "sha256": r.sha256, "model": ae.name, "config_hash": key,
            "score": res.score, "init_loss": res.init_loss, "best_step": res.best_step, "status": res.status,
            "reason": res.reason, "seconds": per_image, "trajectory": res.trajectory,
            "best_latent": latent_to_bytes(res.best_latent) if res.status == "ok" else None,
            "conversions": ";".join(r.conversions),
        } for r, res in zip(records, results)]
        if store is not None:
            store.append(rows)
        fresh.extend(rows)
        bar.update(len(chunk))
    bar.close()

    skipped_paths = {p for p, _ in skipped}
    by_sha: dict[str, dict] = {row["sha256"]: {**row, "cached": False} for row in fresh}
    if store is not None:
        wanted = [s for p, s in shas.items() if p not in skipped_paths and s not in by_sha]
        if wanted:
            old = store.lookup(ae.name, key, wanted)
            for sha, row in old.iterrows():
                by_sha[sha] = {**row.to_dict(), "sha256": sha, "cached": True}
    out = []
    for p, sha in shas.items():
        if p in skipped_paths or sha not in by_sha:
            continue
        row = dict(by_sha[sha])
        row["path"] = p
        out.append(row)
    frame = pd.DataFrame(out)
    if frame.empty:
        frame = pd.DataFrame(columns=RESULT_COLUMNS + ["trajectory"])
    return frame, skipped


def steps_per_second(frame: pd.DataFrame, config: InversionConfig) -> float:
    """Image-steps per second over the freshly computed rows (NaN when all were cached)."""
    fresh = frame[~frame["cached"].astype(bool)] if "cached" in frame else frame
    total = float(fresh["seconds"].sum()) if len(fresh) else 0.0
    return len(fresh) * config.scored_steps / total if total > 0 else math.nan
