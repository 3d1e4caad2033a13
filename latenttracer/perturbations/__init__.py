"""Image perturbations for robustness tests, and the content-addressed derived sets they produce.

A :class:`Perturbation` is a kind and a strength. Each kind is one module of this package that registers a
:class:`PerturbationKind` (its strength's name, its valid :class:`Range` and ``apply``) in :data:`PERTURBATIONS`;
its module docstring says exactly what it does to the pixels. The built-in kinds, AEROBLADE's:

=========  ===========================  ===================================================================
kind       strength                     module
=========  ===========================  ===================================================================
jpeg       quality, integer 1..100      :mod:`latenttracer.perturbations.jpeg` (PIL encode + decode)
crop       fraction of the side, (0,1]  :mod:`latenttracer.perturbations.crop` (centre crop, bicubic back)
blur       sigma in pixels, > 0         :mod:`latenttracer.perturbations.blur` (9 x 9 Gaussian, mirrored)
noise      std on [0, 1], (0, 1]        :mod:`latenttracer.perturbations.noise` (seeded by the image's hash)
downscale  factor, (0, 1)               :mod:`latenttracer.perturbations.downscale` (bicubic down and up)
=========  ===========================  ===================================================================

A new kind is one module here (or a plugin file, see :mod:`latenttracer.registry`) plus, to use it in the
robustness study, a grid YAML under ``conf/perturbation/`` (docs/extending_studies.md shows one). The default
grid, :data:`AEROBLADE_GRID`, is AEROBLADE's published one (21 conditions). Shared machinery (parsing, pixel I/O,
:func:`perturbed_set`): :mod:`latenttracer.perturbations.base`.
"""

from __future__ import annotations

from latenttracer.perturbations.base import (
    AEROBLADE_SPECS,
    PERTURBATION_VERSION,
    PERTURBATIONS,
    Perturbation,
    PerturbationKind,
    Range,
    aeroblade_grid,
    apply_perturbation,
    kind_of,
    load_rgb8,
    parse_grid,
    parse_perturbation,
    perturb_file,
    perturbed_set,
)

__all__ = ["AEROBLADE_GRID", "AEROBLADE_SPECS", "PERTURBATIONS", "PERTURBATION_VERSION", "Perturbation",
           "PerturbationKind", "Range", "aeroblade_grid", "apply_perturbation", "kind_of", "load_rgb8", "parse_grid",
           "parse_perturbation", "perturb_file", "perturbed_set"]


def __getattr__(name: str):
    # AEROBLADE_GRID is built on first use: its kinds are found by importing this package's modules, which
    # cannot happen while the package itself is still being imported.
    if name == "AEROBLADE_GRID":
        return aeroblade_grid()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
