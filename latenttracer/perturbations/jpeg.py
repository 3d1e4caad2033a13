"""``jpeg``: quality, an integer 1..100. PIL JPEG encode (PIL's defaults otherwise: 4:2:0 chroma subsampling,
standard tables, no optimisation), then decode. The codec is the one PIL is built with: another libjpeg may give
other (still deterministic) pixels."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from latenttracer.perturbations.base import PERTURBATIONS, PerturbationKind, Range


@PERTURBATIONS.register
class Jpeg(PerturbationKind):
    name = "jpeg"
    parameter = "quality"
    valid = Range(1, 100, integer=True)
    descending = True

    @staticmethod
    def apply(rgb: np.ndarray, strength: float, sha256: str | None, seed: int) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=int(strength))
        buf.seek(0)
        with Image.open(buf) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
