"""A small Weights & Biases wrapper: offline by default, a no-op when tracking is off, never fatal.

    with start_run({"backend": "wandb", "mode": "offline", "dir": out}, config=cfg_dict, name="table1") as run:
        run.log_metrics({"table1/kl-a/kl-b/auc": 0.97})
        run.log_table("table1", cells)
        run.log_images({"roc/kl-a": "roc_kl-a.png"})
        run.log_artifact("table1_scores.parquet", name="table1-scores", type="scores")

* ``backend: none`` gives a :class:`Tracker` whose methods do nothing; W&B is not even imported, and no file is
  written.
* ``backend: wandb``: one W&B run per call (``reinit="create_new"``, so several runs in one process, e.g. the jobs of
  a Hydra multirun with the basic launcher, never merge). ``mode`` defaults to ``offline``: the run is written to
  ``<dir>/wandb/offline-run-*`` and uploaded later with ``wandb sync``.
* Every W&B call is wrapped: an exception inside W&B becomes a ``RuntimeWarning`` naming the call, and the
  caller carries on. Callers write their results to disk *before* logging them, so a W&B failure loses nothing.
* Used as a context manager, the run is always finished (``exit_code=1`` when the block raised).

Pass the config as plain, resolved data (``OmegaConf.to_container(cfg, resolve=True)``), never a ``DictConfig``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Tracker", "WandbTracker", "start_run"]

_LOGGER_KEYS = {"backend", "project", "entity", "mode", "group", "tags", "dir"}


class Tracker:
    """The no-op tracker (``backend: none``); :class:`WandbTracker` overrides every method."""

    active = False
    run_dir: Path | None = None

    def log_metrics(self, metrics: Mapping[str, Any], summary: bool = True) -> None:
        """Log scalar metrics (history) and, with ``summary``, also set them in the run summary."""

    def log_table(self, key: str, frame) -> None:
        """Log a pandas DataFrame as a ``wandb.Table`` under ``key``."""

    def log_images(self, images: Mapping[str, str | os.PathLike]) -> None:
        """Log image files (PNG) under their keys."""

    def log_artifact(self, path: str | os.PathLike, name: str, type: str) -> None:
        """Log one file (or a whole folder, e.g. an HTML report) as a versioned artifact."""

    def finish(self, exit_code: int = 0) -> None:
        """End the run (idempotent)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


def _warn(what: str, err: BaseException) -> None:
    warnings.warn(f"W&B {what} failed ({type(err).__name__}: {err}); results on disk are not affected",
                  RuntimeWarning, stacklevel=3)


def _artifact_name(name: str) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "artifact"


class WandbTracker(Tracker):
    """One W&B run; see the module docstring. Build it with :func:`start_run`."""

    active = True

    def __init__(self, run: Any, wandb: Any):
        self._run = run
        self._wandb = wandb
        self._finished = False
        self.run_dir = Path(run.dir).parent if getattr(run, "dir", None) else None

    def _safe(self, what: str, call: Callable[[], object]) -> None:
        if self._finished:
            return
        try:
            call()
        except Exception as err:  # noqa: BLE001 - tracking must never break an experiment
            _warn(what, err)

    def log_metrics(self, metrics: Mapping[str, Any], summary: bool = True) -> None:
        values = {str(k): v for k, v in metrics.items()}

        def call() -> None:
            self._run.log(values)
            if summary:
                self._run.summary.update(values)

        self._safe("log_metrics", call)

    def log_table(self, key: str, frame) -> None:
        def call() -> None:
            plain = frame.copy()
            for col in plain.columns:  # wandb.Table takes scalars: keep lists (trajectories) and blobs (latents) out
                if plain[col].map(lambda v: isinstance(v, (list, tuple, bytes, bytearray))
                                  or hasattr(v, "__array__")).any():
                    plain = plain.drop(columns=col)
            self._run.log({key: self._wandb.Table(dataframe=plain.reset_index(drop=True))})

        self._safe(f"log_table({key!r})", call)

    def log_images(self, images: Mapping[str, str | os.PathLike]) -> None:
        self._safe("log_images", lambda: self._run.log(
            {k: self._wandb.Image(str(p)) for k, p in images.items()}))

    def log_artifact(self, path: str | os.PathLike, name: str, type: str) -> None:
        def call() -> None:
            artifact = self._wandb.Artifact(_artifact_name(name), type=type)
            if Path(path).is_dir():
                artifact.add_dir(str(path))
            else:
                artifact.add_file(str(path))
            self._run.log_artifact(artifact)

        self._safe(f"log_artifact({name!r})", call)

    def finish(self, exit_code: int = 0) -> None:
        if self._finished:
            return
        try:
            self._run.finish(exit_code=exit_code)
        except Exception as err:  # noqa: BLE001
            _warn("finish", err)
        finally:
            self._finished = True


def start_run(
    logger: Mapping[str, Any] | None,
    *,
    config: Mapping[str, Any] | None = None,
    name: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
    tags: Sequence[str] = (),
) -> Tracker:
    """Start tracking as ``logger`` says (a mapping like ``conf/logger/*.yaml``); never raises for W&B errors.

    ``logger`` keys: ``backend`` (``none`` or ``wandb``), ``project``, ``entity``, ``mode`` (``offline``, ``online`` or
    ``disabled``), ``group``, ``tags``, ``dir`` (the run goes to ``<dir>/wandb/``). ``group``/``tags`` arguments
    apply where the logger config leaves them empty. When W&B cannot start, a warning is issued and the no-op
    :class:`Tracker` is returned.
    """
    logger = dict(logger or {"backend": "none"})
    unknown = sorted(set(logger) - _LOGGER_KEYS)
    if unknown:
        raise ValueError(f"logger: unknown key(s) {unknown}; known: {sorted(_LOGGER_KEYS)}")
    backend = logger.get("backend", "none")
    if backend == "none":
        return Tracker()
    if backend != "wandb":
        raise ValueError(f"logger.backend: {backend!r} is not one of ['none', 'wandb']")
    mode = logger.get("mode") or "offline"
    if mode not in ("offline", "online", "disabled"):
        raise ValueError(f"logger.mode: {mode!r} is not one of ['offline', 'online', 'disabled']")
    try:
        import wandb

        run_root = Path(logger.get("dir") or ".")
        run_root.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=logger.get("project") or "latenttracer",
            entity=logger.get("entity"),
            dir=str(run_root),
            mode=mode,
            name=name,
            group=logger.get("group") or group,
            job_type=job_type,
            tags=list(logger.get("tags") or tags) or None,
            config=dict(config or {}),
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, save_code=False),
        )
    except Exception as err:  # noqa: BLE001 - no tracking is better than no results
        _warn("init", err)
        return Tracker()
    return WandbTracker(run, wandb)
