"""What every perturbation shares: the registry of kinds, the :class:`Perturbation` condition, parsing, pixel I/O
and the content-addressed writer of perturbed sets.

A kind is a :class:`PerturbationKind` subclass registered with ``@PERTURBATIONS.register`` in its own module of
this package (``jpeg.py``, ``crop.py``...): its ``name``, the name of its strength (``parameter``), the valid range
of the strength (``valid``, a :class:`Range`: checked here, once, for every kind, and put in words in the error)
and ``apply``. Every kind works on 8-bit RGB pixels and
produces 8-bit RGB pixels, stored as PNG (lossless, so a JPEG-perturbed image is kept as its decoded pixels).

Images are read with PIL and EXIF orientation applied (as :mod:`latenttracer.images` does); 8-bit RGB is used as
is, grayscale and palette images without transparency are converted to RGB, anything else (alpha, 16-bit) is
refused with an error naming the file.

:func:`perturbed_set` writes each perturbed image to ``root/<perturbation key>/<source sha256>.png``, where the key
names the kind, strength, seed (seeded kinds only) and :data:`PERTURBATION_VERSION`; files are written atomically,
and a file that exists is reused without reading its source's pixels again, so a rerun computes nothing.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Union

import numpy as np
from PIL import Image, ImageOps

from latenttracer.atomic import write_bytes as atomic_write_bytes
from latenttracer.images import file_sha256
from latenttracer.registry import Registry, RegistryError

__all__ = ["AEROBLADE_SPECS", "PERTURBATIONS", "PERTURBATION_VERSION", "Perturbation", "PerturbationKind", "Range",
           "aeroblade_grid", "apply_perturbation", "load_rgb8", "parse_grid", "parse_perturbation", "perturb_file",
           "perturbed_set", "round8"]

PathLike = Union[str, "os.PathLike[str]"]

#: Bump when the pixels any perturbation produces change: it is part of every cache key.
PERTURBATION_VERSION = 1


@dataclass(frozen=True)
class Range:
    """The valid strengths of a kind: from ``low`` to ``high`` (``None``: no bound on that side), each end included
    unless ``low_open`` / ``high_open``; ``integer``: whole numbers only (``jpeg 90.0`` and ``jpeg 90`` are then one
    condition and one cache key). ``Range(0, 1, low_open=True)`` is (0, 1]; ``Range(low=0, low_open=True)`` is > 0."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def __contains__(self, strength: float) -> bool:
        """Whether ``strength`` (a finite number) is in the range."""
        if self.integer and not float(strength).is_integer():
            return False
        if self.low is not None and (strength <= self.low if self.low_open else strength < self.low):
            return False
        return self.high is None or (strength < self.high if self.high_open else strength <= self.high)

    def __str__(self) -> str:
        """The range in words, for errors: ``an integer from 1 to 100``, ``a number in (0, 1]``, ``a number > 0``."""
        what = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            if self.integer and not self.low_open and not self.high_open:
                return f"{what} from {self.low:g} to {self.high:g}"
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{what} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {self.high:g}"
        return what


class PerturbationKind:
    """One kind of perturbation. Subclass it in a module of this package (or a plugin) and register it with
    ``@PERTURBATIONS.register``; :class:`Perturbation` then accepts ``kind=<name>``."""

    #: the kind's name, as written in ``kind:strength`` (``jpeg:90``)
    name: ClassVar[str]
    #: what the strength means (``quality``, ``sigma``...): names it in errors, labels the robustness figure
    parameter: ClassVar[str]
    #: the valid strengths (checked by :class:`Perturbation`; an error names the kind, the range and the value)
    valid: ClassVar[Range] = Range()
    #: random kinds: ``apply`` gets the source's SHA-256 and the condition's seed, and the seed is in the key
    seeded: ClassVar[bool] = False
    #: plot the strength axis reversed (stronger to the right), e.g. JPEG quality and crop fraction
    descending: ClassVar[bool] = False

    @staticmethod
    def apply(rgb: np.ndarray, strength: float, sha256: str | None, seed: int) -> np.ndarray:
        """The perturbed ``(H, W, 3)`` uint8 pixels of ``rgb`` (same shape and dtype)."""
        raise NotImplementedError


PERTURBATIONS: Registry[type[PerturbationKind]] = Registry("perturbation", "latenttracer.perturbations")


def kind_of(name: str) -> type[PerturbationKind]:
    """The registered kind ``name``; an unknown one is an error listing the known kinds."""
    try:
        return PERTURBATIONS.get(name)
    except RegistryError:
        raise ValueError(f"perturbation.kind: {name!r} is not one of {PERTURBATIONS.names()}") from None


@dataclass(frozen=True)
class Perturbation:
    """One perturbed condition: ``kind`` (a registered :class:`PerturbationKind`) at ``strength``; ``seed`` is
    used by seeded kinds (``noise``)."""

    kind: str
    strength: float
    seed: int = 0

    def __post_init__(self) -> None:
        kind = kind_of(self.kind)
        s = self.strength
        what = f"perturbation {self.kind}: {kind.parameter} must be {kind.valid}, got {s!r}"
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s not in kind.valid:
            raise ValueError(what)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"perturbation.seed: must be an integer >= 0, got {self.seed!r}")
        # one canonical value per condition: jpeg 90.0 and 90 are the same perturbation (and cache key)
        object.__setattr__(self, "strength", int(s) if kind.valid.integer else float(s))

    @property
    def name(self) -> str:
        """Short label, e.g. ``jpeg90``, ``crop0.9``, ``blur1``, ``noise0.05``, ``downscale0.5``."""
        return f"{self.kind}{self.strength:g}"

    @property
    def key(self) -> str:
        """Cache directory name: the name, the seed where it matters (seeded kinds), the code version."""
        seed = f"-seed{self.seed}" if kind_of(self.kind).seeded else ""
        return f"{self.name}{seed}-v{PERTURBATION_VERSION}"


#: AEROBLADE's published grid: JPEG quality 90..50, centre crop 0.9..0.5, blur sigma 1..5 (kernel 9), noise std
#: 0.05..0.25, downscale 0.5: 21 conditions (``conf/perturbation/aeroblade_grid.yaml`` lists the same).
AEROBLADE_SPECS: tuple[str, ...] = (
    *(f"jpeg:{q}" for q in (90, 80, 70, 60, 50)), *(f"crop:{f}" for f in (0.9, 0.8, 0.7, 0.6, 0.5)),
    *(f"blur:{s}" for s in (1, 2, 3, 4, 5)), *(f"noise:{s}" for s in (0.05, 0.1, 0.15, 0.2, 0.25)), "downscale:0.5")


def aeroblade_grid() -> tuple[Perturbation, ...]:
    """:data:`AEROBLADE_SPECS` as conditions."""
    return parse_grid(AEROBLADE_SPECS)


def parse_perturbation(spec: str | Mapping | Perturbation) -> Perturbation:
    """A :class:`Perturbation` from ``"kind:strength"`` (``"jpeg:90"``), a mapping with keys ``kind``,
    ``strength`` and optionally ``seed``, or a :class:`Perturbation`; errors name what is wrong."""
    if isinstance(spec, Perturbation):
        return spec
    if isinstance(spec, str):
        kind, sep, value = spec.partition(":")
        if not sep or not kind.strip() or not value.strip():
            raise ValueError(f"perturbation {spec!r}: expected 'kind:strength', e.g. 'jpeg:90' or 'blur:2'")
        try:
            strength = float(value)
        except ValueError:
            raise ValueError(f"perturbation {spec!r}: strength {value.strip()!r} is not a number") from None
        return Perturbation(kind.strip(), strength)
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"kind", "strength", "seed"})
        if unknown:
            raise ValueError(f"perturbation: unknown key(s) {unknown}; known: ['kind', 'seed', 'strength']")
        missing = [k for k in ("kind", "strength") if k not in spec]
        if missing:
            raise ValueError(f"perturbation: missing key(s) {missing}")
        return Perturbation(spec["kind"], spec["strength"], spec.get("seed", 0))
    raise TypeError(f"perturbation: expected 'kind:strength', a mapping or a Perturbation, got {type(spec).__name__}")


def parse_grid(specs: Sequence[str | Mapping | Perturbation]) -> tuple[Perturbation, ...]:
    """Several perturbations (see :func:`parse_perturbation`); duplicates are an error."""
    grid = tuple(parse_perturbation(s) for s in specs)
    dupes = sorted({p.key for p in grid if sum(q.key == p.key for q in grid) > 1})
    if dupes:
        raise ValueError(f"perturbation grid: duplicate condition(s) {dupes}")
    return grid


# -- pixels --------------------------------------------------------------------------------------------------------
def load_rgb8(path: PathLike) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB (EXIF orientation applied; see the module docstring)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("L", "1") or (im.mode == "P" and "transparency" not in im.info):
            im = im.convert("RGB")
        if im.mode != "RGB":
            raise ValueError(f"{path}: perturbations need 8-bit RGB or grayscale pixels, got PIL mode {im.mode!r}")
        return np.asarray(im, dtype=np.uint8).copy()


def round8(x: np.ndarray) -> np.ndarray:
    """Float pixels on 0..255 to uint8: rounded half to even, clipped."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def apply_perturbation(rgb: np.ndarray, perturbation: Perturbation, sha256: str | None = None) -> np.ndarray:
    """Perturb ``(H, W, 3)`` uint8 pixels; ``sha256`` (of the source file) seeds the seeded kinds (``noise``),
    which need it."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"perturbation input: expected an (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    kind = kind_of(perturbation.kind)
    if kind.seeded and sha256 is None:
        raise ValueError(f"{kind.name}: pass the source image's sha256 (it seeds the {kind.name})")
    return kind.apply(rgb, perturbation.strength, sha256, perturbation.seed)


def perturb_file(path: PathLike, perturbation: Perturbation, sha256: str | None = None) -> np.ndarray:
    """Load ``path`` (see :func:`load_rgb8`) and perturb it; ``sha256`` defaults to the file's."""
    return apply_perturbation(load_rgb8(path), perturbation, sha256 or file_sha256(path))


# -- the derived sets ------------------------------------------------------------------------------------------------
def _png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def perturbed_set(paths: Sequence[PathLike], perturbation: Perturbation, root: PathLike) -> list[Path]:
    """The perturbed copies of ``paths``, in the same order, cached under ``root/<perturbation.key>/``.

    Each output is named by its source's SHA-256 (so identical sources share one file) and written atomically;
    one that already exists is reused as is. A source that cannot be read raises an error naming it.
    """
    out_dir = Path(root) / perturbation.key
    out = []
    for src in paths:
        sha = file_sha256(src)
        dst = out_dir / f"{sha}.png"
        if not dst.is_file():
            try:
                pixels = perturb_file(src, perturbation, sha)
            except (OSError, Image.DecompressionBombError) as exc:
                raise ValueError(f"{src}: cannot perturb ({perturbation.name}): {exc}") from exc
            atomic_write_bytes(dst, _png_bytes(pixels))
        out.append(dst)
    return out
