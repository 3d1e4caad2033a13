"""Score files of images against one inspected model: images -> a method -> results store.

This is the one path from a list of image files to per-image scores, for every method
(:mod:`latenttracer.methods`); the CLI, the Hydra entry points and the benchmarks all use it. Results are
keyed on (image content sha256, model name, run hash); the run hash covers the method and its settings, the
image preprocessing and a fingerprint of the autoencoder weights, so a rerun skips every image already scored,
and a run killed half-way resumes where it stopped (each batch is written to the store atomically as soon as
it finishes). The default method is LatentTracer with the given :class:`InversionConfig`.

Batches: ``batch_size="auto"`` picks the first batch from the model's resolution and the device's free memory
(:mod:`latenttracer.memory`; 64 on CPU). On an out-of-memory error the batch is halved and the same images are
tried again (logged); batches already finished are in the store and are kept.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from latenttracer.autoencoders import Autoencoder
from latenttracer.images import BadImageError, ImageOptions, file_sha256, load_images
from latenttracer.inversion import InversionConfig, image_seed, latent_from_bytes, latent_to_bytes  # noqa: F401
from latenttracer.memory import auto_batch_size, is_out_of_memory
from latenttracer.methods import LatentTracer, Method, get_method
from latenttracer.store import ResultStore

__all__ = ["RESULT_COLUMNS", "as_method", "image_seed", "run_hash", "score_images", "steps_per_second"]

log = logging.getLogger(__name__)

RESULT_COLUMNS = ["path", "sha256", "score", "init_loss", "best_step", "status", "reason", "seconds", "cached"]


def as_method(method: Method | str | InversionConfig | None, config: InversionConfig | None = None) -> Method:
    """A :class:`Method` from a method, a method name, an inversion config (LatentTracer) or ``None``."""
    if isinstance(method, Method):
        return method
    if isinstance(method, InversionConfig):
        return LatentTracer(method)
    if isinstance(method, str):
        return get_method(method)
    if method is None:
        return LatentTracer(config if config is not None else InversionConfig())
    raise TypeError(f"method: expected a Method, a method name or an InversionConfig, got {type(method).__name__}")


def run_hash(ae: Autoencoder, config: InversionConfig | Method, image_options: ImageOptions) -> str:
    """The cache key part that says *how* an image was scored by this model (any method)."""
    return as_method(config).run_hash(ae, image_options)


def score_images(
    ae: Autoencoder,
    paths: Sequence[str | Path],
    config: InversionConfig | None = None,
    *,
    method: Method | str | None = None,
    batch_size: int | str | None = None,
    store: ResultStore | None = None,
    image_options: ImageOptions = ImageOptions(),
    on_bad_image: str = "error",
    progress: bool = True,
    desc: str | None = None,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Score every file in ``paths``; return (one row per scored path, [(path, reason) skipped]).

    ``method`` (a :class:`Method` or a name) defaults to LatentTracer with ``config`` (give one or the other).
    ``batch_size`` defaults to the method's (``config.batch_size`` for LatentTracer, else ``"auto"``).
    Rows carry ``path, sha256, score, init_loss, best_step, status, reason, seconds, cached``, the loss
    trajectory (``trajectory``, one float per scored step; inversion methods only) and the method's component
    columns (e.g. AEDR's ``loss_1, loss_2, homogeneity``); inversion methods also store the latent of the scored
    step (``best_latent``, :func:`latent_to_bytes`; rows cached before it existed have none). With a
    ``store``, finished images are taken from it and new results are appended batch by batch; without one,
    everything is computed in memory.
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image: {on_bad_image!r} is not one of ['error', 'skip']")
    if method is not None and config is not None:
        raise ValueError("score_images: give either config (LatentTracer) or method, not both")
    method = as_method(method, config)
    paths = [str(p) for p in paths]
    key = method.run_hash(ae, image_options)
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

    fresh: list[dict] = []
    if todo:
        method.prepare(ae)
        size = batch_size if batch_size is not None else method.batch_size
        if size == "auto":
            size = auto_batch_size(ae, ae.resolution, ae.device, backward=method.needs_grad, dtype=ae.dtype)
        elif isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batch_size: must be an integer >= 1 or 'auto', got {size!r}")
        fresh = _score_todo(ae, method, todo, key, int(size), store, image_options, on_bad_image, skipped,
                            tqdm(total=len(todo), desc=desc or f"{method.label} {ae.name}", unit="img",
                                 disable=not progress))

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
        frame = pd.DataFrame(columns=RESULT_COLUMNS + ["trajectory", *method.components])
    return frame, skipped


def _score_todo(ae: Autoencoder, method: Method, todo: list[str], key: str, size: int, store: ResultStore | None,
                image_options: ImageOptions, on_bad_image: str, skipped: list[tuple[str, str]], bar) -> list[dict]:
    """Score ``todo`` in batches of ``size``, halving the batch on out-of-memory errors."""
    fresh: list[dict] = []
    start = 0
    while start < len(todo):
        chunk = todo[start:start + size]
        images, records, bad = load_images(chunk, ae.resolution, image_options, on_bad_image=on_bad_image)
        if records:
            t0 = time.perf_counter()
            try:
                results = method.score_batch(ae, images, records)
            except Exception as err:
                if not is_out_of_memory(err) or len(chunk) == 1:
                    raise
                del images
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                size = max(1, len(chunk) // 2)
                log.warning("out of memory with a batch of %d images (%s); retrying with batches of %d",
                            len(chunk), type(err).__name__, size)
                continue
            per_image = (time.perf_counter() - t0) / len(records)
            rows = [{"path": r.path, "sha256": r.sha256, "model": ae.name, "config_hash": key, **res,
                     "seconds": per_image, "conversions": ";".join(r.conversions)}
                    for r, res in zip(records, results)]
            if store is not None:
                store.append(rows)
            fresh.extend(rows)
        skipped.extend(bad)
        start += len(chunk)
        bar.update(len(chunk))
    bar.close()
    return fresh


def steps_per_second(frame: pd.DataFrame, config: InversionConfig) -> float:
    """Image-steps per second over the freshly computed rows (NaN when all were cached)."""
    fresh = frame[~frame["cached"].astype(bool)] if "cached" in frame else frame
    total = float(fresh["seconds"].sum()) if len(fresh) else 0.0
    return len(fresh) * config.scored_steps / total if total > 0 else math.nan
