"""Where a result came from: git commit, package versions, machine, date, and the wall time of each stage.

:func:`collect` describes the current process (nothing here fails because git or a package is missing: the
value is then ``None``). :func:`stage` times one stage of the pipeline and records it in
``<results_dir>/provenance.json``::

    with provenance.stage(results_dir, "table1", config=resolved_config):
        ...

The file holds one entry per stage (the latest run of it wins): its wall time, when it finished, and the
commit, dirty flag and config it ran with. It is rewritten atomically under a lock, so stages running in
parallel never lose each other's entries.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "collect", "git_state", "load", "machine", "package_versions", "record_stage", "stage"]

PACKAGES = ("latenttracer", "torch", "diffusers", "numpy", "pandas", "hydra-core", "wandb", "jinja2")
FILE_NAME = "provenance.json"
_REPO = Path(__file__).resolve().parents[1]


def git_state(repo: str | os.PathLike = _REPO) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout holding ``repo`` (None: not a repo)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit.strip() if commit else None, "dirty": bool(status.strip()) if status is not None else None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    """Platform, Python, CPU count, torch threads and the accelerator torch sees."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "processor": platform.machine(), "cpu_count": os.cpu_count(), "hostname": platform.node()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 - provenance never breaks a run
        info["torch_threads"] = info["device"] = None
    return info


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def collect(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything about this process: ``git``, ``packages``, ``machine``, ``date`` (UTC) and ``config``."""
    return {"git": git_state(), "packages": package_versions(), "machine": machine(), "date": _now(),
            "config": dict(config) if config is not None else None}


def load(results_dir: str | os.PathLike) -> dict[str, Any]:
    """``<results_dir>/provenance.json`` (``{"stages": {}}`` when absent or unreadable)."""
    path = Path(results_dir) / FILE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"stages": {}}
    return data if isinstance(data, dict) and isinstance(data.get("stages"), dict) else {"stages": {}}


def record_stage(results_dir: str | os.PathLike, name: str, seconds: float,
                 config: Mapping[str, Any] | None = None) -> Path:
    """Set stage ``name``'s entry in ``<results_dir>/provenance.json`` (atomic, under a lock); return the path."""
    from latenttracer.atomic import write_text as atomic_write_text

    root = Path(results_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / FILE_NAME
    entry = {"seconds": round(float(seconds), 3), "finished": _now(), **git_state(), "config": config}
    lock = os.open(root, os.O_RDONLY)  # lock the folder itself: no lock file left beside the results
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load(root)
        data["stages"][name] = entry
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    finally:
        os.close(lock)  # releases the lock
    return path


@contextlib.contextmanager
def stage(results_dir: str | os.PathLike, name: str, config: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Time the block and record it as stage ``name`` (only when it finishes without an exception)."""
    t0 = time.perf_counter()
    yield
    record_stage(results_dir, name, time.perf_counter() - t0, config)
