"""Image complexity and brightness measures, to look at where a detector's scores go wrong.

Each function takes an image file (read as 8-bit RGB by :func:`latenttracer.perturbations.load_rgb8`: EXIF
orientation applied, grayscale copied to three channels) or an ``(H, W, 3)`` / ``(H, W)`` uint8 array.
"""

from __future__ import annotations

import io
import os
from typing import Union

import numpy as np
from PIL import Image

from latenttracer.perturbations import load_rgb8

PathLike = Union[str, "os.PathLike[str]"]
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
