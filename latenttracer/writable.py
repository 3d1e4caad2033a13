"""Where the commands write: output paths checked before any work (:func:`check_writable`, used by
``latenttracer trace``, ``attribute`` and ``attack``), and folders for intermediate files (:func:`scratch_folder`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["check_writable", "scratch_folder"]


def check_writable(path: Path, flag: str, *, folder: bool = False) -> None:
    """A one-line error unless ``path`` (a file, or a folder with ``folder``) can be written: no part of it is a
    file where a folder is needed, and its nearest existing folder takes a new file. ``flag`` names the path in
    the error (``--out``)."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        want, got = ("folder", "file") if folder else ("file", "folder")
        raise ValueError(f"{flag} {path}: is a {got}, not a {want}")
    probe = path if folder and path.exists() else path.parent
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{flag} {path}: {probe} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".latenttracer-write-check-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot write in {probe} ({err.strerror or err})") from err


def scratch_folder(cache: Path | None, name: str) -> Path:
    """The folder for intermediate files called ``name`` (perturbed copies): next to the results store ``cache``
    (kept, reused by the next run), or a fresh temporary folder without one."""
    if cache is None:
        return Path(tempfile.mkdtemp(prefix=f"latenttracer-{name}-"))
    return Path(cache).parent / name
