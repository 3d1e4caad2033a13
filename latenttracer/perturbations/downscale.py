"""``downscale``: factor, in (0, 1). PIL bicubic resize to ``round(factor * side)`` (antialiased: PIL widens the
filter when it reduces), then bicubic back to the original size."""

from __future__ import annotations

import numpy as np
from PIL import Image

from latenttracer.perturbations.base import PERTURBATIONS, PerturbationKind, Range


@PERTURBATIONS.register
class Downscale(PerturbationKind):
    name = "downscale"
    parameter = "factor"
    valid = Range(0, 1, low_open=True, high_open=True)

    @staticmethod
    def apply(rgb: np.ndarray, strength: float, sha256: str | None, seed: int) -> np.ndarray:
        h, w = rgb.shape[:2]
        small = Image.fromarray(rgb).resize((max(1, round(strength * w)), max(1, round(strength * h))),
                                            Image.Resampling.BICUBIC)
        return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8).copy()
