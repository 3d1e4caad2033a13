"""Image complexity and brightness measures, to look at where a detector's scores go wrong.

:func:`jpeg_bytes_per_pixel` (AEROBLADE's measure) and :func:`brightness` take an image file (read as 8-bit RGB
by :func:`latenttracer.perturbations.load_rgb8`) or an ``(H, W, 3)`` / ``(H, W)`` uint8 array.

All measures are computed on the file as given (its own size, before any resizing for a model).

:func:`glcm_homogeneity` is AEDR's complexity term ``c``: the homogeneity of the grey-level co-occurrence
matrix (GLCM) of the image's 8-bit luma, reduced to 32 levels (``luma // 8``), for pixel pairs at distance 1,
angle 0 (each pixel and its right-hand neighbour), symmetric and normalised, computed with scikit-image's
``graycomatrix`` / ``graycoprops``:

    homogeneity = sum_{i,j} P[i, j] / (1 + (i - j)^2)

Luma (:func:`read_luma`) reproduces what AEDR's ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)`` gives, without
OpenCV, because OpenCV's grayscale read does not convert the same way for every format:

* **PNG** (libpng's ``png_set_rgb_to_gray(0.299, 0.587)``, which OpenCV's PNG decoder asks for): 15-bit
  fixed-point coefficients ``R 9797, G 19234, B 9737`` (``int(0.299 * 32768)``, ``int(0.587 * 32768)`` and the
  rest of 32768), the sum shifted right by 15, i.e. **truncated**; grey pixels (R = G = B) keep their value.
* **JPEG**: the decoder's own luma channel (libjpeg decoding straight to grayscale; Pillow's ``draft("L")``
  does the same), with no colour conversion at all.
* **other formats** (BMP, TIFF, WebP, ...): OpenCV's reader-side BGR->grey conversion, ITU-R 601 weights in
  14-bit fixed point with rounding: ``Y = (R*4899 + G*9617 + B*1868 + 8192) >> 14``.

Checked once against ``opencv-python-headless`` 5.0 (not a dependency): identical luma for PNG (RGB, RGBA,
palette, grey), JPEG, BMP and TIFF files; WebP within one level at a few pixels (decoder differences).

Alpha is dropped (not composited), 16-bit samples keep their high byte, EXIF orientation is applied, the first
frame of a multi-frame file is used: all as OpenCV's default read does. Grayscale files are used as stored.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from latenttracer.perturbations import load_rgb8

__all__ = ["GLCM_LEVELS", "LUMA_WEIGHTS", "brightness", "bt601_luma", "glcm_homogeneity", "jpeg_bytes_per_pixel",
           "libpng_luma", "read_luma"]

PathLike = Union[str, "os.PathLike[str]"]

GLCM_LEVELS = 32
"""AEDR quantises 8-bit luma to 32 grey levels (``luma // 8``) before counting pixel pairs."""


def bt601_luma(rgb: np.ndarray) -> np.ndarray:
    """OpenCV ``cvtColor(..., BGR2GRAY)`` on uint8: ITU-R 601 weights, 14-bit fixed point, rounded."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return ((r * 4899 + g * 9617 + b * 1868 + 8192) >> 14).astype(np.uint8)


def libpng_luma(rgb: np.ndarray) -> np.ndarray:
    """libpng's ``rgb_to_gray`` with OpenCV's coefficients (0.299, 0.587): 15-bit fixed point, truncated."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rc, gc = 29900 * 32768 // 100000, 58700 * 32768 // 100000  # 9797, 19234
    bc = 32768 - rc - gc
    y = ((r * rc + g * gc + b * bc) >> 15).astype(np.uint8)
    grey = (r == g) & (g == b)
    return np.where(grey, r.astype(np.uint8), y)


def read_luma(path: PathLike) -> np.ndarray:
    """The file's 8-bit luma at its own size, as ``cv2.imread(path, IMREAD_GRAYSCALE)`` gives it (see above).

    Raises:
        ValueError: the file cannot be read as an image (the message names it).
    """
    name = str(path)
    try:
        with Image.open(path) as img:
            fmt = img.format
            if fmt == "JPEG" and img.mode in ("RGB", "YCbCr"):
                img.draft("L", img.size)  # the decoder's luma channel, no colour conversion
            img.seek(0)
            img = ImageOps.exif_transpose(img)
            img.load()
            return _to_luma(name, img, fmt)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"{name}: cannot read image for GLCM homogeneity ({type(err).__name__}: {err})") from err


def _to_luma(name: str, img: Image.Image, fmt: str | None) -> np.ndarray:
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return (np.asarray(img).astype(np.int64).clip(0, 65535) >> 8).astype(np.uint8)
    if mode in ("1", "LA", "La"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode not in ("RGB", "RGBA"):
        try:
            img = img.convert("RGB")
        except ValueError as err:
            raise ValueError(f"{name}: unsupported image mode {mode!r} for GLCM homogeneity") from err
    rgb = np.asarray(img)[..., :3]
    return libpng_luma(rgb) if fmt == "PNG" else bt601_luma(rgb)


def glcm_homogeneity(image: PathLike | np.ndarray) -> float:
    """AEDR's ``c``: GLCM homogeneity of an image file (read by :func:`read_luma`) or of a 2-D uint8 luma array.

    The luma is reduced to 32 levels (``// 8``); pairs at distance 1, angle 0; symmetric; normalised.
    """
    from skimage.feature import graycomatrix, graycoprops

    if isinstance(image, (str, os.PathLike, Path)):
        luma = read_luma(image)
    else:
        luma = np.asarray(image)
        if luma.ndim != 2 or luma.dtype != np.uint8:
            raise ValueError(f"glcm_homogeneity: expected a 2-D uint8 luma array, got {luma.dtype} {luma.shape}")
    if luma.shape[1] < 2:
        raise ValueError(f"glcm_homogeneity: an image {luma.shape[1]} pixel(s) wide has no horizontal pixel pairs")
    reduced = (luma // 8).astype(np.uint8)
    glcm = graycomatrix(reduced, distances=[1], angles=[0], levels=GLCM_LEVELS, symmetric=True, normed=True)
    return float(graycoprops(glcm, "homogeneity")[0, 0])


ImageLike = Union[str, "os.PathLike[str]", np.ndarray]


def _rgb8(image: ImageLike) -> np.ndarray:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"expected an (H, W, 3) or (H, W) uint8 array, got {image.dtype} {image.shape}")
        if min(image.shape[:2]) < 1:
            raise ValueError(f"expected a non-empty image, got shape {image.shape}")
        return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    return load_rgb8(image)


# -- JPEG size and brightness ---------------------------------------------------------------------------------------
def jpeg_bytes_per_pixel(image: ImageLike, quality: int = 50) -> float:
    """Size in bytes of the image's JPEG at ``quality`` (PIL's encoder and defaults otherwise: 4:2:0 chroma
    subsampling, standard tables, no optimisation), divided by its pixel count: AEROBLADE's complexity measure
    (quality 50). Headers are included, so compare images of one size only."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"jpeg_bytes_per_pixel: quality must be an integer from 1 to 100, got {quality!r}")
    rgb = _rgb8(image)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.tell() / (rgb.shape[0] * rgb.shape[1])


#: ITU-R BT.601 luma weights (those of PIL's ``convert("L")``).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def brightness(image: ImageLike) -> float:
    """Mean luma in [0, 1]: ``(0.299 R + 0.587 G + 0.114 B) / 255`` averaged over pixels (BT.601, no gamma)."""
    rgb = _rgb8(image).astype(np.float64)
    return float((rgb @ np.array(LUMA_WEIGHTS)).mean() / 255.0)
