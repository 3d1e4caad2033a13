"""``crop``: fraction of the side, in (0, 1]. Centre crop to ``round(fraction * W) x round(fraction * H)`` (when the
margin is odd, the extra pixel is taken from the right or bottom), resized back to ``W x H`` with PIL bicubic."""

from __future__ import annotations

import numpy as np
from PIL import Image

from latenttracer.perturbations.base import PERTURBATIONS, PerturbationKind, Range


def crop_box(width: int, height: int, fraction: float) -> tuple[int, int, int, int]:
    """The centre-crop box ``(left, top, right, bottom)`` keeping ``fraction`` of each side (at least 1 pixel)."""
    w, h = max(1, round(fraction * width)), max(1, round(fraction * height))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


@PERTURBATIONS.register
class Crop(PerturbationKind):
    name = "crop"
    parameter = "fraction"
    valid = Range(0, 1, low_open=True)
    descending = True

    @staticmethod
    def apply(rgb: np.ndarray, strength: float, sha256: str | None, seed: int) -> np.ndarray:
        h, w = rgb.shape[:2]
        im = Image.fromarray(rgb).crop(crop_box(w, h, strength))
        return np.asarray(im.resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8).copy()
