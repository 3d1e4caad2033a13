"""The results table: one row per (image, inspected model, inversion config).

Rows live in a directory of Parquet chunks, ``root/part-*.parquet``. Every :meth:`ResultStore.append` writes
one new chunk to a hidden temporary file in the same directory and then renames it into place with
:func:`os.replace`, so a chunk is either complete or absent: a run killed with ``kill -9`` and started again
loses no finished row, and :meth:`ResultStore.done` tells it which images it can skip.

The key of a row is ``(sha256, model, config_hash)``: the image's content hash, not its path, so the same
picture under two names is scored once. When a key appears more than once, the row written last wins
(a retried failure replaced by an ``ok`` row, say). "Last" is the order of chunk names, which start with the
write time in nanoseconds; within a chunk, the later row wins.

Two processes may append to the same store at once: chunk names carry time, pid, a per-process counter and a
random suffix, so they never collide.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from latenttracer import atomic

__all__ = ["COLUMNS", "KEY", "STATUSES", "ResultStore"]

COLUMNS = ("path", "sha256", "model", "config_hash", "score", "init_loss", "best_step", "status", "reason",
           "seconds")
"""Columns every row must have; rows may carry more (kept as they are)."""

KEY = ("sha256", "model", "config_hash")
"""A row's identity: later rows with the same key replace earlier ones."""

STATUSES = ("ok", "failed")

_STR_COLUMNS = ("path", "sha256", "model", "config_hash", "status", "reason")
_FLOAT_COLUMNS = ("score", "init_loss", "seconds")
_INT_COLUMNS = ("best_step",)  # nullable: a failed row may have no best step

_CHUNK_GLOB = "part-*.parquet"
_counter = itertools.count()  # orders chunks written by one process within the same nanosecond


def _empty_frame() -> pd.DataFrame:
    """An empty results frame with the required columns and their dtypes."""
    return _coerce(pd.DataFrame({c: [] for c in COLUMNS}))


def _coerce(frame: pd.DataFrame) -> pd.DataFrame:
    """Give the required columns their dtypes: text as ``str``, losses as float64, best step as Int64."""
    frame = frame.copy()
    for col in _STR_COLUMNS:
        values = frame[col]
        if col == "reason":
            values = values.where(values.notna(), "")
        elif values.isna().any():
            raise ValueError(f"results column {col!r} has {int(values.isna().sum())} missing value(s)")
        if not pd.api.types.is_string_dtype(values):
            values = values.map(str) if len(values) else values
        frame[col] = values.astype("str")
    for col in _FLOAT_COLUMNS:
        try:
            frame[col] = pd.to_numeric(frame[col], errors="raise").astype("float64")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"results column {col!r} must be numeric (or None): {exc}") from exc
    for col in _INT_COLUMNS:
        try:
            frame[col] = pd.to_numeric(frame[col], errors="raise").astype("Int64")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"results column {col!r} must hold integers (or None): {exc}") from exc
    unknown = ~frame["status"].isin(STATUSES)
    if unknown.any():
        bad = sorted(set(frame.loc[unknown, "status"]))
        raise ValueError(f"results column 'status' must be one of {STATUSES}, got {bad}")
    return frame[list(COLUMNS) + [c for c in frame.columns if c not in COLUMNS]]


class ResultStore:
    """A directory of Parquet chunks holding inversion results; see the module docstring.

    Args:
        root: the directory; created (with parents) if missing.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"result store {self.root} exists and is not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        self._chunk_cache: dict[tuple[str, int, int], pd.DataFrame] = {}
        self._table_cache: tuple[tuple, pd.DataFrame] | None = None

    def __repr__(self) -> str:
        return f"ResultStore({str(self.root)!r})"

    # writing -----------------------------------------------------------------------------------------

    def append(self, rows: Sequence[Mapping]) -> Path | None:
        """Write ``rows`` as one new chunk, atomically; return its path (``None`` when ``rows`` is empty).

        Raises:
            KeyError: a row lacks a required column (the message names it and the row).
            ValueError: a required column has values of the wrong kind, or a status outside ``STATUSES``.
            RuntimeError: the chunk could not be written (no partial file is left behind).
        """
        rows = list(rows)
        if not rows:
            return None
        for i, row in enumerate(rows):
            missing = [c for c in COLUMNS if c not in row]
            if missing:
                raise KeyError(f"result row {i} lacks required column(s) {missing} (path={row.get('path')!r})")
        frame = _coerce(pd.DataFrame.from_records([dict(r) for r in rows]))
        return self._write_chunk(frame, self._new_chunk_name())

    def _new_chunk_name(self, stamp: int | None = None, tag: str | None = None) -> str:
        stamp = time.time_ns() if stamp is None else stamp
        tag = f"{os.getpid()}-{next(_counter):08d}" if tag is None else tag
        return f"part-{stamp:020d}-{tag}-{uuid.uuid4().hex[:12]}.parquet"

    def _write_chunk(self, frame: pd.DataFrame, name: str) -> Path:
        final = self.root / name
        try:
            return atomic.write_frame(frame, final)
        except Exception as exc:
            raise RuntimeError(f"could not write result chunk {final} ({len(frame)} rows): {exc}") from exc

    def compact(self) -> None:
        """Merge all readable chunks into one; :meth:`load` returns the same table before and after.

        The merged chunk is written first, then the chunks it replaces are removed, so a crash in between
        leaves duplicate rows that :meth:`load` already collapses. Corrupt chunks are left where they are.
        The merged chunk takes the time stamp of the newest chunk it merges, so a chunk appended meanwhile by
        another process still sorts after it and keeps winning.
        """
        chunks = self._chunks()
        frames = [(p, self._read_chunk(p)) for p in chunks]
        merged = [p for p, f in frames if f is not None]
        if len(merged) <= 1:
            return
        table = self._combine([f for _, f in frames if f is not None])
        stamp = int(merged[-1].name.split("-")[1])
        new = self._write_chunk(table, self._new_chunk_name(stamp=stamp, tag="compact"))
        for path in merged:
            if path != new:
                path.unlink(missing_ok=True)
        atomic.fsync_dir(self.root)
        self._table_cache = None

    # reading -----------------------------------------------------------------------------------------

    def load(self, model: str | None = None, config_hash: str | None = None) -> pd.DataFrame:
        """All stored rows, newest per key, optionally only those of ``model`` and/or ``config_hash``.

        Leftover temporary files are ignored; a chunk that cannot be read (truncated by a crash, edited by
        hand) is skipped with a warning naming it, and never deleted. With nothing stored, returns an empty
        frame with ``COLUMNS``. Extra columns are kept; a chunk without one gets missing values there.
        """
        chunks, signature = [], []
        for path in self._chunks():
            try:
                signature.append(_signature(path))
                chunks.append(path)
            except FileNotFoundError:  # removed meanwhile (another process compacted)
                pass
        signature = tuple(signature)
        if self._table_cache is not None and self._table_cache[0] == signature:
            table = self._table_cache[1]
        else:
            table = self._combine([f for f in (self._read_chunk(p) for p in chunks) if f is not None])
            self._table_cache = (signature, table)
            live = set(signature)
            self._chunk_cache = {k: v for k, v in self._chunk_cache.items() if k in live}
        mask = pd.Series(True, index=table.index)
        if model is not None:
            mask &= table["model"] == model
        if config_hash is not None:
            mask &= table["config_hash"] == config_hash
        return table[mask].reset_index(drop=True)

    def done(self, model: str, config_hash: str, include_failed: bool = False) -> set[str]:
        """The sha256s already finished for ``(model, config_hash)``: ``ok`` rows, plus failed ones if asked."""
        table = self.load(model, config_hash)
        if not include_failed:
            table = table[table["status"] == "ok"]
        return set(table["sha256"])

    def lookup(self, model: str, config_hash: str, sha256s: Iterable[str]) -> pd.DataFrame:
        """Rows of ``(model, config_hash)`` for the given sha256s, indexed by sha256, in the order asked.

        Hashes with no stored row are simply absent from the result.
        """
        wanted = list(dict.fromkeys(sha256s))
        table = self.load(model, config_hash).set_index("sha256")
        return table.loc[[h for h in wanted if h in table.index]]

    def _chunks(self) -> list[Path]:
        return sorted(self.root.glob(_CHUNK_GLOB), key=lambda p: p.name)

    def _read_chunk(self, path: Path) -> pd.DataFrame | None:
        try:
            sig = _signature(path)
        except FileNotFoundError:  # removed meanwhile (another process compacted)
            return None
        if sig in self._chunk_cache:
            return self._chunk_cache[sig]
        try:
            frame = pd.read_parquet(path)
            missing = [c for c in COLUMNS if c not in frame.columns]
            if missing:
                raise KeyError(f"missing required column(s) {missing}")
            frame = _coerce(frame)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - any unreadable chunk is skipped, never fatal
            warnings.warn(f"skipping unreadable result chunk {path}: {type(exc).__name__}: {exc}",
                          RuntimeWarning, stacklevel=3)
            return None
        self._chunk_cache[sig] = frame
        return frame

    @staticmethod
    def _combine(frames: list[pd.DataFrame]) -> pd.DataFrame:
        frames = [f for f in frames if len(f)]
        if not frames:
            return _empty_frame()
        table = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        return table.drop_duplicates(subset=list(KEY), keep="last").reset_index(drop=True)


def _signature(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (path.name, st.st_mtime_ns, st.st_size)
