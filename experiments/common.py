"""Glue shared by the experiment entry points: image sets, splits, scoring through the store, the Table 1 grid.

The protocol (one place, used by ``invert``, ``table1`` and ``ablations``):

* Every model of the suite has its own generated set (``suite.generated``): the first ``n`` images of a seeded,
  resumable set made by :func:`data_gen.generate.generate_set` under ``<generated.dir>/<model>/``.
* The real set (``suite.real``): a seeded subset of ``n`` images, either crops of the shipped evaluation photos
  (:func:`data_gen.real_images.build_eval_set`) or any folder of photos.
* Each generated set is split once, with :func:`latenttracer.metrics.split_calibration`, into a calibration and an
  evaluation part; the split depends only on the set size and ``suite.split.seed``.
* For an inspected model I: its calibration part sets the threshold (``target_tpr`` of it at or below); its
  evaluation part is the belonging class; the evaluation part of every other model S is the non-belonging class
  of cell (I, S) (the same images for every inspected model), and the real set is the cell (I, real). The cell
  (I, all) pools every non-belonging image.

Scores come only from :func:`latenttracer.tracing.score_images` with the one shared :class:`ResultStore`
(``cfg.store``), so nothing is computed twice across jobs, runs or entry points. Jobs that may run in parallel
(a joblib multirun) take a file lock around each (model, inversion config) and around set building, so two jobs
never compute the same thing at once: the second waits and then finds it cached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from latenttracer import provenance
from latenttracer.autoencoders import Autoencoder, load_autoencoder
from latenttracer.images import ImageOptions, list_images
from latenttracer.inversion import InversionConfig
from latenttracer.metrics import calibrate_threshold, detection_metrics, split_calibration
from latenttracer.store import ResultStore
from latenttracer.tracing import run_hash, score_images
from latenttracer.tracking import Tracker, start_run

log = logging.getLogger(__name__)

SPLITS = ("calibration", "evaluation")
REAL = "real"
ALL = "all"
SCORE_COLUMNS = ["inspected", "source", "split", "path", "sha256", "score", "init_loss", "best_step", "status",
                 "reason", "cached", "trajectory"]


# -- configuration ----------------------------------------------------------------------------------------------
def plain(node: Any) -> Any:
    """A config node as plain, resolved Python data (dicts, lists, scalars)."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def setup(cfg: DictConfig) -> Path:
    """Apply ``threads`` and return the job's output directory (created)."""
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def inversion_config(cfg: DictConfig, dtype: str = "float32", **changes: Any) -> InversionConfig:
    """``cfg.inversion`` (plus the job's device and the model's dtype) as a validated :class:`InversionConfig`."""
    values = {**plain(cfg.inversion), "device": str(cfg.device), "dtype": str(dtype), **changes}
    return InversionConfig.from_dict(values)


def image_options(cfg: DictConfig) -> ImageOptions:
    return ImageOptions(**plain(cfg.image_options))


def model_config(cfg: DictConfig, name: str) -> DictConfig:
    models = cfg.suite.models
    if name not in models:
        raise KeyError(f"suite.models: no model {name!r} in suite {cfg.suite.name!r} (models: {list(models)})")
    return models[name]


def inspected_models(cfg: DictConfig) -> list[str]:
    """``cfg.inspected`` (null: every model of the suite), each checked against ``suite.models``."""
    names = list(cfg.inspected) if cfg.get("inspected") else list(cfg.suite.models)
    for name in names:
        model_config(cfg, name)
    return names


def protocol(cfg: DictConfig) -> dict:
    """What decides the sets and splits (not the inversion): recorded beside ablation rows and in table notes."""
    suite = cfg.suite
    return {"suite": suite.name, "n_generated": int(suite.generated.n), "generation_seed": int(suite.generated.seed),
            "calibration_fraction": float(suite.split.calibration_fraction), "split_seed": int(suite.split.seed),
            "target_tpr": float(suite.split.target_tpr), "real_kind": suite.real.kind, "n_real": int(suite.real.n),
            "real_seed": int(suite.real.seed), "resize": cfg.image_options.resize,
            "real_crops": (f"{int(suite.real.crops.n)} crops of {int(suite.real.crops.size)}px, seed "
                           f"{int(suite.real.crops.seed)}" if suite.real.kind == "crops" else "")}


def protocol_hash(cfg: DictConfig) -> str:
    return hashlib.sha256(json.dumps(protocol(cfg), sort_keys=True).encode()).hexdigest()[:12]


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created) for the block; other jobs wait for it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- image sets -------------------------------------------------------------------------------------------------
def _subset(paths: Sequence[Path], n: int, seed: int) -> list[Path]:
    """A seeded random subset of ``n`` paths, in their original order (all of them when there are fewer)."""
    if n >= len(paths):
        return list(paths)
    keep = np.sort(np.random.default_rng(seed).permutation(len(paths))[:n])
    return [paths[i] for i in keep]


def generated_set(cfg: DictConfig, name: str) -> list[Path]:
    """The first ``suite.generated.n`` images of model ``name``'s set, generating what is missing.

    A local source is always checked by :func:`data_gen.generate.generate_set` (it refuses a set made from other
    weights or settings); a hub source whose images are all present is used as is (no hub access needed).
    """
    from data_gen.generate import generate_set, image_name, read_prompts

    model = model_config(cfg, name)
    gen = cfg.suite.generated
    n = int(gen.n)
    set_dir = Path(gen.dir) / name
    files = [set_dir / image_name(i) for i in range(n)]
    if Path(str(model.source)).is_dir() or not all(f.is_file() for f in files):
        with locked(Path(gen.dir) / f".{name}.lock"):
            kind = str(model.get("kind", "auto"))
            generate_set(
                source=str(model.source), out_dir=gen.dir, n=n, seed=int(gen.seed), batch_size=int(gen.batch_size),
                model_name=name, kind=kind, prompts=None if kind == "zoo" else read_prompts(gen.prompts_file),
                pipeline_kwargs=plain(model.get("generation")) or {}, device=str(cfg.device),
                dtype=str(model.get("dtype", "float32")), resolution=model.get("resolution"),
                progress=bool(cfg.progress))
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{set_dir}: {len(missing)} of {n} images missing after generation (first: {missing[0]})")
    return files


def real_set(cfg: DictConfig) -> list[Path]:
    """The real (non-belonging) images: ``suite.real.n`` of them, a seeded subset."""
    real = cfg.suite.real
    folder = Path(real.dir)
    if real.kind == "crops":
        from data_gen.real_images import build_eval_set, read_manifest

        with locked(folder.with_name(f".{folder.name}.lock")):
            build_eval_set(folder, size=int(real.crops.size), n=int(real.crops.n), seed=int(real.crops.seed))
            paths = [folder / row["file"] for row in read_manifest(folder)]
    elif real.kind == "folder":
        if not folder.is_dir():
            raise FileNotFoundError(f"suite.real.dir: {folder} does not exist; put real photos there "
                                    f"(at least suite.real.n={int(real.n)}) or point suite.real.dir elsewhere")
        paths = list_images(folder, recursive=True)
    else:
        raise ValueError(f"suite.real.kind: {real.kind!r} is not one of ['crops', 'folder']")
    if len(paths) < int(real.n):
        log.warning("real set %s holds %d images, fewer than suite.real.n=%d", folder, len(paths), int(real.n))
    return _subset(paths, int(real.n), int(real.seed))


def split(cfg: DictConfig, paths: Sequence[Path]) -> dict[str, list[Path]]:
    """A model's own set -> {"calibration": [...], "evaluation": [...]} (deterministic in the set size and seed)."""
    s = cfg.suite.split
    calibration, evaluation = split_calibration(len(paths), float(s.calibration_fraction), int(s.seed))
    return {"calibration": [paths[i] for i in calibration], "evaluation": [paths[i] for i in evaluation]}


def _rows(source: str, part: str, paths: Sequence[Path]) -> pd.DataFrame:
    return pd.DataFrame({"source": source, "split": part, "path": [str(p) for p in paths]})


def image_sets(cfg: DictConfig) -> dict[str, dict[str, list[Path]]]:
    """Every set of the suite, made if missing: {model: {"calibration": [...], "evaluation": [...]},
    "real": {"evaluation": [...]}}."""
    sets = {name: split(cfg, generated_set(cfg, name)) for name in cfg.suite.models}
    sets[REAL] = {"evaluation": real_set(cfg)}
    return sets


def grid_images(cfg: DictConfig, inspected: str, sets: dict | None = None) -> pd.DataFrame:
    """Every image the Table 1 grid needs for one inspected model: (source, split, path) rows.

    Its own set (both parts), every other model's evaluation part, and the real set (as ``evaluation``).
    ``sets``: :func:`image_sets` when already at hand.
    """
    sets = image_sets(cfg) if sets is None else sets
    frames = [_rows(source, part, sets[source][part]) for source in sets
              for part in (SPLITS if source == inspected else ("evaluation",))]
    return pd.concat(frames, ignore_index=True)


def named_images(cfg: DictConfig, images: str, part: str = "all", inspected: str | None = None,
                 recursive: bool = False) -> pd.DataFrame:
    """The image set an ``invert`` job names: a suite model, ``real``, ``table1`` or a directory."""
    if part not in ("all", *SPLITS):
        raise ValueError(f"split: {part!r} is not one of ['all', 'calibration', 'evaluation']")
    images = str(images)
    if images == "table1":
        if inspected is None or inspected not in cfg.suite.models:
            raise ValueError(f"images=table1 needs the inspected model to be in suite {cfg.suite.name!r} "
                             f"(models: {list(cfg.suite.models)}), got {inspected!r}")
        frame = grid_images(cfg, inspected)
    elif images in cfg.suite.models:
        parts = split(cfg, generated_set(cfg, images))
        frame = pd.concat([_rows(images, p, parts[p]) for p in SPLITS], ignore_index=True)
    elif images == REAL:
        frame = _rows(REAL, "evaluation", real_set(cfg))
    elif Path(images).is_dir():
        return _rows(Path(images).name, "all", list_images(images, recursive=recursive))
    else:
        raise ValueError(f"images: {images!r} is not a model of suite {cfg.suite.name!r} "
                         f"({list(cfg.suite.models)}), 'real', 'table1', or an existing directory")
    return frame if part == "all" else frame[frame["split"] == part].reset_index(drop=True)


# -- scoring ----------------------------------------------------------------------------------------------------
def load_model(cfg: DictConfig, model: DictConfig) -> Autoencoder:
    """The inspected model's autoencoder (on ``cfg.device``)."""
    return load_autoencoder(str(model.source), name=str(model.name), resolution=model.get("resolution"),
                            device=str(cfg.device), dtype=str(model.get("dtype", "float32")))


def truncate(frame: pd.DataFrame, steps: int, strategy: str = "min") -> pd.DataFrame:
    """Rows of a longer run cut to what a ``steps``-step run scores: its first ``max(steps, 1)`` iterations.

    Exact: iteration i of a run depends only on iterations before it (the learning-rate schedule depends only on
    the step index), so a longer run's first iterations are the shorter run's. An image whose loss turned
    non-finite within those iterations is failed, as it would have been in the short run; one that failed only
    later is ``ok``.
    """
    n = max(int(steps), 1)
    out = frame.copy()
    scores, best, status, reasons, trajectories = [], [], [], [], []
    for traj, old_reason in zip(out["trajectory"], out["reason"]):
        t = np.asarray(traj, dtype=float)
        if t.size < n:
            raise ValueError(f"trajectory of {t.size} steps cannot give a {n}-step run")
        t = t[:n]
        bad = np.flatnonzero(~np.isfinite(t))
        trajectories.append(t)
        if bad.size:  # as the engine: the best step before the first failure, no score
            scores.append(np.nan)
            best.append(int(np.argmin(t[:bad[0]])) if bad[0] else 0)
            status.append("failed")
            reasons.append(old_reason or f"non-finite loss at step {int(bad[0])}")
        else:
            k = int(np.argmin(t)) if strategy == "min" else n - 1
            scores.append(float(t[k]))
            best.append(k)
            status.append("ok")
            reasons.append("")
    out["score"], out["best_step"], out["status"], out["reason"] = scores, best, status, reasons
    out["trajectory"] = trajectories
    return out.drop(columns=["best_latent"], errors="ignore")  # the long run's latent is not the cut run's


def score(cfg: DictConfig, ae: Autoencoder, paths: Sequence[str | Path], inv: InversionConfig, *,
          trajectory_steps: int | None = None, on_bad_image: str = "error") -> pd.DataFrame:
    """Scores of ``paths`` through the shared store (see the module docstring); one row per scored path.

    With ``trajectory_steps`` >= ``inv.steps``, the images are inverted with ``trajectory_steps`` steps (cached)
    and cut with :func:`truncate`: one long run serves every shorter step count.
    """
    if trajectory_steps is not None and int(trajectory_steps) >= inv.steps:
        long = dataclasses.replace(inv, steps=int(trajectory_steps))
        return truncate(score(cfg, ae, paths, long, on_bad_image=on_bad_image), inv.steps, inv.strategy)
    options = image_options(cfg)
    store = ResultStore(cfg.store)
    key = run_hash(ae, inv, options)
    with locked(store.root / ".locks" / f"{ae.name}-{key}.lock"):
        frame, skipped = score_images(ae, [str(p) for p in paths], inv, store=store, image_options=options,
                                      on_bad_image=on_bad_image, progress=bool(cfg.progress),
                                      desc=f"{ae.name} ({inv.steps} steps)")
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    return frame


# -- the grid ---------------------------------------------------------------------------------------------------
def cell_metrics(scores: pd.DataFrame, inspected: str, sources: Sequence[str], target_tpr: float) -> list[dict]:
    """Detection metrics of one inspected model against each source (and all of them pooled)."""
    ok = scores[scores["status"] == "ok"]
    failed = scores[scores["status"] != "ok"]
    own = ok[ok["source"] == inspected]
    calibration = own.loc[own["split"] == "calibration", "score"]
    belonging = own.loc[own["split"] == "evaluation", "score"]
    if calibration.empty or belonging.empty:
        raise ValueError(f"inspected model {inspected!r}: no scored calibration or evaluation images of its own")
    threshold = calibrate_threshold(calibration, target_tpr)
    own_eval = own[own["split"] == "evaluation"]
    rows = []
    for source in [*sources, ALL]:
        chosen = list(sources) if source == ALL else [source]
        mask = ok["source"].isin(chosen) & (ok["split"] == "evaluation")
        try:
            metrics = detection_metrics(belonging, ok.loc[mask, "score"], threshold)
        except ValueError as err:
            raise ValueError(f"cell (inspected {inspected!r}, source {source!r}): {err}") from err
        n_failed = int((failed["source"].isin([*chosen, inspected])).sum())
        # Baseline from the same rows: the step-0 loss alone (plain encode/decode error, AEROBLADE-like L2).
        step0 = detection_metrics(own_eval["init_loss"], ok.loc[mask, "init_loss"]).auc
        rows.append({"inspected": inspected, "source": source, **metrics.as_dict(), "n_failed": n_failed,
                     "auc_step0": step0, "median_belonging": float(belonging.median()),
                     "median_non_belonging": float(ok.loc[mask, "score"].median())})
    return rows


def evaluate(cfg: DictConfig, inspected: Sequence[str], trajectory_steps: int | None = None
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score the grid of ``inspected`` models and compute its cells; returns (cells, per-image scores)."""
    cells, scores = [], []
    target_tpr = float(cfg.suite.split.target_tpr)
    sets = image_sets(cfg)
    for name in inspected:
        model = model_config(cfg, name)
        images = grid_images(cfg, name, sets)
        ae = load_model(cfg, model)
        inv = inversion_config(cfg, dtype=str(model.get("dtype", "float32")))
        frame = score(cfg, ae, images["path"], inv, trajectory_steps=trajectory_steps)
        merged = images.merge(frame.drop(columns=[c for c in ("source", "split") if c in frame]), on="path",
                              how="left", validate="one_to_one")
        merged.insert(0, "inspected", name)
        scores.append(merged[[c for c in SCORE_COLUMNS if c in merged]])
        sources = [s for s in [*cfg.suite.models, REAL] if s != name]
        cells.extend(cell_metrics(merged, name, sources, target_tpr))
        log.info("%s: AUC (all sources pooled) %.4f", name, cells[-1]["auc"])
    return pd.DataFrame(cells), pd.concat(scores, ignore_index=True)


def flat_metrics(cells: pd.DataFrame, prefix: str,
                 metrics: Sequence[str] = ("auc", "ap", "tpr_at_1fpr", "tpr_at_5fpr", "accuracy",
                                           "balanced_accuracy", "threshold")) -> dict[str, float]:
    """``{prefix/inspected/source/metric: value}`` for logging."""
    return {f"{prefix}/{r['inspected']}/{r['source']}/{m}": r[m] for _, r in cells.iterrows() for m in metrics
            if r.get(m) is not None and not (isinstance(r[m], float) and np.isnan(r[m]))}


# -- tracking ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def tracker(cfg: DictConfig, job_type: str) -> Iterator[Tracker]:
    """A tracker for this job (see :mod:`latenttracer.tracking`), named after the job and its overrides.

    The job's wall time is recorded in ``<paths.results_dir>/provenance.json`` when it finishes without error
    (stage ``job_type``, plus ``[overrides]`` when there are any).
    """
    from hydra.core.hydra_config import HydraConfig

    name = stage = job_type
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        num = OmegaConf.select(hydra_cfg, "job.num", default=None)  # set in multiruns only
        if str(hydra_cfg.mode) == "RunMode.MULTIRUN" and num is not None:
            name += f"-{num}"
        if hydra_cfg.job.override_dirname:
            name += f" [{hydra_cfg.job.override_dirname}]"
            stage += f" [{hydra_cfg.job.override_dirname}]"
    run = start_run(plain(cfg.logger), config=plain(cfg), name=name, group=job_type, job_type=job_type)
    with run, provenance.stage(cfg.paths.results_dir, stage, plain(cfg)):
        yield run
