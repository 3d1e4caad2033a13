"""``blur``: sigma in pixels, > 0. A 9 x 9 Gaussian kernel (``exp(-x^2 / 2 sigma^2)``, normalised, one dimension
at a time; AEROBLADE's size), mirrored borders (``d c b | a b c d``, the ``reflect`` padding of torch/torchvision,
scipy's ``mirror``), computed in float64 and rounded half to even."""

from __future__ import annotations

import numpy as np

from latenttracer.perturbations.base import PERTURBATIONS, PerturbationKind, Range, round8

#: Side of the Gaussian blur kernel (AEROBLADE's 9).
BLUR_KERNEL = 9


def gaussian_kernel(sigma: float, size: int = BLUR_KERNEL) -> np.ndarray:
    """The normalised 1-D Gaussian of ``size`` taps (the 2-D kernel is its outer product)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


@PERTURBATIONS.register
class Blur(PerturbationKind):
    name = "blur"
    parameter = "sigma"
    valid = Range(low=0, low_open=True)

    @staticmethod
    def apply(rgb: np.ndarray, strength: float, sha256: str | None, seed: int) -> np.ndarray:
        k = gaussian_kernel(strength)
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
        return round8(x)
