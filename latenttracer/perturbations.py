"""Image perturbations for robustness tests, and the content-addressed derived sets they produce.

A :class:`Perturbation` is a kind and a strength; its default grid, :data:`AEROBLADE_GRID`, is AEROBLADE's
published one (21 conditions). Every perturbation works on 8-bit RGB pixels and produces 8-bit RGB pixels,
stored as PNG (lossless, so a JPEG-perturbed image is kept as its decoded pixels):

=========  ============================  ==============================================================
kind       strength                      what is done
=========  ============================  ==============================================================
jpeg       quality, integer 1..100       PIL JPEG encode (PIL's defaults otherwise: 4:2:0 chroma
                                         subsampling, standard tables, no optimisation), then decode
crop       fraction of the side, (0, 1]  centre crop to ``round(fraction * W) x round(fraction * H)``
                                         (when the margin is odd, the extra pixel is taken from the right
                                         or bottom), resized back to ``W x H`` with PIL bicubic
blur       sigma in pixels, > 0          9 x 9 Gaussian kernel (``exp(-x^2 / 2 sigma^2)``, normalised, one
                                         dimension at a time), mirrored borders (``d c b | a b c d``, the
                                         ``reflect`` padding of torch/torchvision, scipy's ``mirror``),
                                         computed in float64 and rounded half to even
noise      std on [0, 1], (0, 1]         additive Gaussian noise on ``pixels / 255``, clamped to [0, 1],
                                         rounded half to even to 8 bits; the noise is drawn from a numpy
                                         PCG64 generator seeded with the source file's SHA-256 and
                                         ``Perturbation.seed``, so it depends on the image only, never on
                                         the order or the company it is processed in
downscale  factor, (0, 1)                PIL bicubic resize to ``round(factor * side)`` (antialiased: PIL
                                         widens the filter when it reduces), then bicubic back to the
                                         original size
=========  ============================  ==============================================================

Images are read with PIL and EXIF orientation applied (as :mod:`latenttracer.images` does); 8-bit RGB is used
as is, grayscale and palette images without transparency are converted to RGB, anything else (alpha, 16-bit)
is refused with an error naming the file.

:func:`perturbed_set` writes each perturbed image to ``root/<perturbation key>/<source sha256>.png``, where the
key names the kind, strength, seed (noise only) and :data:`PERTURBATION_VERSION`; files are written atomically,
and a file that exists is reused without reading its source's pixels again, so a rerun computes nothing.
The JPEG codec is the one PIL is built with: another libjpeg may give other (still deterministic) pixels.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from latenttracer.atomic import write_bytes as atomic_write_bytes
from latenttracer.images import file_sha256

__all__ = [
    "AEROBLADE_GRID",
    "BLUR_KERNEL",
    "KINDS",
    "PERTURBATION_VERSION",
    "Perturbation",
    "apply_perturbation",
    "atomic_write_bytes",
    "load_rgb8",
    "parse_grid",
    "parse_perturbation",
    "perturb_file",
    "perturbed_set",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Bump when the pixels any perturbation produces change: it is part of every cache key.
PERTURBATION_VERSION = 1
#: Side of the Gaussian blur kernel (AEROBLADE's 9).
BLUR_KERNEL = 9
#: Each kind and the name of its strength.
KINDS: dict[str, str] = {"jpeg": "quality", "crop": "fraction", "blur": "sigma", "noise": "std",
                         "downscale": "factor"}
_RANGES = {"jpeg": "an integer from 1 to 100", "crop": "a number in (0, 1]", "blur": "a number > 0",
           "noise": "a number in (0, 1]", "downscale": "a number in (0, 1)"}


@dataclass(frozen=True)
class Perturbation:
    """One perturbed condition: ``kind`` (a key of :data:`KINDS`) at ``strength``; ``seed`` is used by ``noise``."""

    kind: str
    strength: float
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"perturbation.kind: {self.kind!r} is not one of {list(KINDS)}")
        s = self.strength
        what = f"perturbation {self.kind}: {KINDS[self.kind]} must be {_RANGES[self.kind]}, got {s!r}"
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise ValueError(what)
        ok = {"jpeg": float(s).is_integer() and 1 <= s <= 100, "crop": 0 < s <= 1, "blur": s > 0,
              "noise": 0 < s <= 1, "downscale": 0 < s < 1}[self.kind]
        if not ok:
            raise ValueError(what)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"perturbation.seed: must be an integer >= 0, got {self.seed!r}")
        # one canonical value per condition: jpeg 90.0 and 90 are the same perturbation (and cache key)
        object.__setattr__(self, "strength", int(s) if self.kind == "jpeg" else float(s))

    @property
    def name(self) -> str:
        """Short label, e.g. ``jpeg90``, ``crop0.9``, ``blur1``, ``noise0.05``, ``downscale0.5``."""
        return f"{self.kind}{self.strength:g}"

    @property
    def key(self) -> str:
        """Cache directory name: the name, the seed where it matters (noise), the code version."""
        seed = f"-seed{self.seed}" if self.kind == "noise" else ""
        return f"{self.name}{seed}-v{PERTURBATION_VERSION}"


def _grid() -> tuple[Perturbation, ...]:
    return (*(Perturbation("jpeg", q) for q in (90, 80, 70, 60, 50)),
            *(Perturbation("crop", f) for f in (0.9, 0.8, 0.7, 0.6, 0.5)),
            *(Perturbation("blur", s) for s in (1, 2, 3, 4, 5)),
            *(Perturbation("noise", s) for s in (0.05, 0.1, 0.15, 0.2, 0.25)),
            Perturbation("downscale", 0.5))


#: AEROBLADE's published grid: JPEG quality 90..50, centre crop 0.9..0.5, blur sigma 1..5 (kernel 9), noise std
#: 0.05..0.25, downscale 0.5: 21 conditions.
AEROBLADE_GRID: tuple[Perturbation, ...] = _grid()


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


def _check_rgb8(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"perturbation input: expected an (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")


def _round8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def crop_box(width: int, height: int, fraction: float) -> tuple[int, int, int, int]:
    """The centre-crop box ``(left, top, right, bottom)`` keeping ``fraction`` of each side (at least 1 pixel)."""
    w, h = max(1, round(fraction * width)), max(1, round(fraction * height))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def _crop(rgb: np.ndarray, fraction: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    im = Image.fromarray(rgb).crop(crop_box(w, h, fraction))
    return np.asarray(im.resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8).copy()


def gaussian_kernel(sigma: float, size: int = BLUR_KERNEL) -> np.ndarray:
    """The normalised 1-D Gaussian of ``size`` taps (the 2-D kernel is its outer product)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    x = rgb.astype(np.float64)
    for axis in (0, 1):
        if x.shape[axis] <= r:
            raise ValueError(f"blur: the image side {x.shape[axis]} is too small for a {len(k)}-tap kernel")
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        xp = np.pad(x, pad, mode="reflect")
        n = x.shape[axis]
        x = sum(k[i] * np.take(xp, np.arange(i, i + n), axis=axis) for i in range(len(k)))
    return _round8(x)


def noise_generator(sha256: str, seed: int) -> np.random.Generator:
    """The noise stream of one image: PCG64 seeded with the image's content hash and ``seed``."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"noise: expected the image's SHA-256 as 64 lowercase hex digits, got {sha256!r}")
    return np.random.default_rng([int(sha256, 16) % 2**128, int(sha256, 16) >> 128, seed])


def _noise(rgb: np.ndarray, std: float, sha256: str, seed: int) -> np.ndarray:
    noise = noise_generator(sha256, seed).normal(0.0, std, size=rgb.shape)
    return _round8(np.clip(rgb / 255.0 + noise, 0.0, 1.0) * 255.0)


def _downscale(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    small = Image.fromarray(rgb).resize((max(1, round(factor * w)), max(1, round(factor * h))),
                                        Image.Resampling.BICUBIC)
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8).copy()


def apply_perturbation(rgb: np.ndarray, perturbation: Perturbation, sha256: str | None = None) -> np.ndarray:
    """Perturb ``(H, W, 3)`` uint8 pixels; ``sha256`` (of the source file) seeds ``noise`` and is needed by it."""
    _check_rgb8(rgb)
    p = perturbation
    if p.kind == "jpeg":
        return _jpeg(rgb, int(p.strength))
    if p.kind == "crop":
        return _crop(rgb, p.strength)
    if p.kind == "blur":
        return _blur(rgb, p.strength)
    if p.kind == "noise":
        if sha256 is None:
            raise ValueError("noise: pass the source image's sha256 (it seeds the noise)")
        return _noise(rgb, p.strength, sha256, p.seed)
    return _downscale(rgb, p.strength)


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
