"""Atomic file and directory writes: a reader sees the old content or the new one, never a half-written file.

Every writer in the project goes through here. A file is written to a temporary sibling (same directory, so the
rename stays on one file system), flushed and fsynced, moved onto the target with :func:`os.replace`, and the
directory is fsynced so that the rename itself survives a crash. Temporary names start with ``.`` and end with
:data:`TMP_SUFFIX`; :func:`remove_stale` deletes the ones a killed writer left behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["TMP_SUFFIX", "fsync_dir", "remove_stale", "replace_dir", "restore_dir", "write", "write_bytes",
           "write_frame", "write_text"]

TMP_SUFFIX = ".tmp"


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames in ``path`` durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp)`` on a temporary path beside ``path``, fsync it, then move it onto ``path`` in one step.

    On any error (or interrupt) the temporary file is removed and ``path`` keeps its old content; the error is
    re-raised. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        writer(tmp)
        _fsync_file(tmp)  # the rename must not land before the data does
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` as is (no newline translation: the file holds exactly ``text`` encoded)."""
    return write_bytes(path, text.encode(encoding))


def write_frame(frame, path: str | os.PathLike) -> Path:
    """Write a pandas ``frame`` (without its index) as CSV or Parquet, chosen by the suffix of ``path``."""
    suffix = Path(path).suffix
    if suffix == ".csv":
        return write(path, lambda tmp: frame.to_csv(tmp, index=False))
    if suffix == ".parquet":
        return write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    raise ValueError(f"{path}: cannot write a table as {suffix!r}; use .csv or .parquet")


def remove_stale(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and directories a killed writer left in ``directory``; return them."""
    directory = Path(directory)
    stale = sorted(directory.glob(f".*{TMP_SUFFIX}")) if directory.is_dir() else []
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    return stale


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            _fsync_file(p)
    for d in sorted({p.parent for p in root.rglob("*")} | {root}, key=lambda d: -len(d.parts)):
        fsync_dir(d)


def replace_dir(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Build a directory with ``writer(tmp_dir)`` beside ``path``, then swap it in place of ``path``.

    The new tree is written into a temporary sibling and fsynced; the old ``path`` (if any) is renamed aside,
    the new tree renamed onto ``path``, and only then the old tree removed. ``path`` therefore always names a
    complete tree: the old one until the swap, the new one after it. A crash between the two renames (two
    ``rename`` calls on one directory, microseconds apart) leaves the old tree in the ``.<name>.old-*.tmp``
    sibling, from where :func:`restore_dir` puts it back; a failing ``writer`` leaves ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    new = path.with_name(f".{path.name}.new-{tag}{TMP_SUFFIX}")
    old = path.with_name(f".{path.name}.old-{tag}{TMP_SUFFIX}")
    new.mkdir()
    try:
        writer(new)
        _fsync_tree(new)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    had_old = path.exists()
    if had_old:
        os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        if had_old:
            os.replace(old, path)
        shutil.rmtree(new, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    if had_old:
        shutil.rmtree(old)
    return path


def restore_dir(path: str | os.PathLike) -> Path | None:
    """Put back the old tree of an interrupted :func:`replace_dir` when ``path`` is missing; return what was used."""
    path = Path(path)
    if path.exists():
        return None
    olds = sorted(path.parent.glob(f".{path.name}.old-*{TMP_SUFFIX}"), key=lambda p: p.stat().st_mtime_ns)
    if not olds:
        return None
    os.replace(olds[-1], path)
    fsync_dir(path.parent)
    return olds[-1]
