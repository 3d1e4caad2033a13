"""``noise``: std on [0, 1], in (0, 1]. Additive Gaussian noise on ``pixels / 255``, clamped to [0, 1], rounded half
to even to 8 bits. The noise is drawn from a numpy PCG64 generator seeded with the source file's SHA-256 and
``Perturbation.seed``, so it depends on the image only, never on the order or the company it is processed in."""

from __future__ import annotations

import numpy as np

from latenttracer.perturbations.base import PERTURBATIONS, PerturbationKind, Range, round8


def noise_generator(sha256: str, seed: int) -> np.random.Generator:
    """The noise stream of one image: PCG64 seeded with the image's content hash and ``seed``."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"noise: expected the image's SHA-256 as 64 lowercase hex digits, got {sha256!r}")
    return np.random.default_rng([int(sha256, 16) % 2**128, int(sha256, 16) >> 128, seed])


@PERTURBATIONS.register
class Noise(PerturbationKind):
    name = "noise"
    parameter = "std"
    valid = Range(0, 1, low_open=True)
    seeded = True

    @staticmethod
    def apply(rgb: np.ndarray, strength: float, sha256: str | None, seed: int) -> np.ndarray:
        noise = noise_generator(sha256, seed).normal(0.0, strength, size=rgb.shape)
        return round8(np.clip(rgb / 255.0 + noise, 0.0, 1.0) * 255.0)
