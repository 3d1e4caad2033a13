"""Settings dataclasses from plain mappings (YAML, JSON, Hydra nodes): one place that names unknown keys."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["from_mapping"]


def from_mapping(cls: type[T], values: Mapping[str, Any] | None, where: str, **converted: Any) -> T:
    """``cls(**values)``; a key ``cls`` has no field for is an error naming ``where``, the key(s) and the known
    ones. ``converted`` replaces values after the check (e.g. a YAML list turned into a tuple)."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**{**values, **converted})
