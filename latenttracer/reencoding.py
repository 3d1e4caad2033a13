"""Calibration under re-encoding (perturbation families): thresholds that survive re-encoding (``docs/deployment.md``).

A *family* is a comma-separated list of ``kind:strength`` conditions (kinds from the perturbation registry,
:mod:`latenttracer.perturbations`), where a strength may be a range ``a..b``:

    jpeg:90..70,downscale:0.5      ->  jpeg:90, jpeg:80, jpeg:70, downscale:0.5

A range expands to the strengths of that kind in AEROBLADE's published grid (``conf/perturbation/aeroblade_grid.yaml``,
:data:`latenttracer.perturbations.AEROBLADE_SPECS`: jpeg 90, 80, .., 50; crop 0.9, .., 0.5; blur 1, .., 5; noise
0.05, .., 0.25; downscale 0.5) that lie between ``a`` and ``b``, both included, in either order; a range with no
grid point in it, or over a kind that is not in that grid, is an error. The family's text, normalised (spaces
dropped), is its name: the ``calibration`` column of ``results/robustness.csv``.

The threshold is set on the calibration images **and** their perturbed copies, pooled: every clean calibration
score and every perturbed one count once, and the method's own rule (:meth:`~latenttracer.methods.Method.calibrate`,
the target-TPR quantile or AEDR's KDE) runs on the pooled scores. So the target TPR holds on a mixture of clean and
re-encoded belonging images, and the threshold rises by what the family adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from latenttracer.perturbations import AEROBLADE_SPECS, Perturbation, parse_perturbation, perturbed_set

__all__ = ["CLEAN", "calibration_sets", "family_name", "parse_family", "pooled_threshold"]

CLEAN = "clean"


def _grid_strengths(kind: str) -> list[float]:
    return [float(s.partition(":")[2]) for s in AEROBLADE_SPECS if s.partition(":")[0] == kind]


def parse_family(spec: str) -> tuple[Perturbation, ...]:
    """The conditions of a family (module docstring); an error names the part that is wrong."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"calibration family {spec!r}: expected 'kind:strength[,kind:a..b...]', e.g. "
                         "'jpeg:90..70,downscale:0.5'")
    out: list[Perturbation] = []
    for part in (p.strip() for p in spec.split(",")):
        kind, sep, value = part.partition(":")
        if ".." not in value:
            try:
                out.append(parse_perturbation(part))
            except (TypeError, ValueError) as err:
                raise ValueError(f"calibration family {spec!r}: {err}") from None
            continue
        lo_text, _, hi_text = value.partition("..")
        try:
            a, b = float(lo_text), float(hi_text)
        except ValueError:
            raise ValueError(f"calibration family {spec!r}: range {value!r} of {kind.strip()!r} is not "
                             "'number..number'") from None
        grid = _grid_strengths(kind.strip())
        if not grid:
            raise ValueError(f"calibration family {spec!r}: a range needs a kind of AEROBLADE's grid "
                             f"({sorted({s.partition(':')[0] for s in AEROBLADE_SPECS})}); list the strengths of "
                             f"{kind.strip()!r} one by one instead")
        points = [s for s in grid if min(a, b) <= s <= max(a, b)]
        if not points:
            raise ValueError(f"calibration family {spec!r}: no point of AEROBLADE's {kind.strip()} grid "
                             f"{[f'{s:g}' for s in grid]} lies in {value}")
        for s in points:
            try:
                out.append(parse_perturbation(f"{kind.strip()}:{s:g}"))
            except ValueError as err:  # a plugin kind that shadows a grid kind with another range
                raise ValueError(f"calibration family {spec!r}: {err}") from None
    keys = [p.key for p in out]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"calibration family {spec!r}: duplicate condition(s) {dupes}")
    return tuple(out)


def family_name(spec: str | None) -> str:
    """``clean`` for no family, else the family's text without spaces (checked)."""
    if spec is None or spec == CLEAN:
        return CLEAN
    parse_family(spec)
    return "".join(spec.split())


def calibration_sets(paths: Sequence[str | Path], family: Sequence[Perturbation],
                     root: str | Path) -> dict[str, list[Path]]:
    """{"clean": paths, "<condition name>": perturbed copies, ...}: the images a family calibrates on
    (perturbed copies written once under ``root``, :func:`latenttracer.perturbations.perturbed_set`)."""
    sets = {CLEAN: [Path(p) for p in paths]}
    for p in family:
        sets[p.name] = perturbed_set(paths, p, root)
    return sets


def pooled_threshold(method, scores_by_set: dict[str, Sequence[float]], target_tpr: float) -> float:
    """``method``'s threshold on the clean and perturbed calibration scores pooled (module docstring)."""
    pooled = np.concatenate([np.asarray(list(s), dtype=float) for s in scores_by_set.values()])
    pooled = pooled[np.isfinite(pooled)]
    if pooled.size == 0:
        raise ValueError("calibration: no calibration image could be scored")
    return float(method.calibrate(pooled, target_tpr))
