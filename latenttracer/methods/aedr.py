"""AEDR (AAAI 2026): the ratio of two successive autoencoder reconstruction losses, times image homogeneity.

For an image ``x`` in the model's pixel space [-1, 1] and the inspected autoencoder ``AE``:

* ``loss_1`` = ``a`` = MSE(x, AE(x)) and ``loss_2`` = ``b`` = MSE(AE(x), AE(AE(x))), both in [-1, 1] units,
  reconstructions not clamped, VQ latents quantised by the decoder (as AEDR's code does);
* ``homogeneity`` = ``c``: GLCM homogeneity of the input **file as given**, at its own size
  (:func:`latenttracer.complexity.glcm_homogeneity`);
* ``score`` = a * c / b (lower = more likely belonging);
* threshold: the ``target_tpr`` (default 0.95, AEDR's alpha = 0.05) quantile of a Gaussian KDE of the
  calibration scores (:func:`latenttracer.metrics.kde_threshold`).

KL latents are sampled from the posterior (``posterior="sample"``, AEDR's choice) with a generator seeded with
``seed`` (1, as theirs). Deviation, for batch independence: AEDR seeds one generator for a whole folder, so an
image's noise depends on its position in the folder; here every image gets its own generator seeded with
``seed`` (its two reconstructions draw one after the other from it), which equals AEDR's noise for the first
image of a folder. ``posterior="mean"`` uses the posterior mean instead (deterministic, no noise).
The autoencoder sees the image after the harness's preprocessing (resized to the model's resolution, a no-op
for images already at that size); AEDR feeds images at their own size rounded to a multiple of 8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from latenttracer.autoencoders import Autoencoder, resolve_dtype
from latenttracer.complexity import glcm_homogeneity
from latenttracer.images import ImageRecord
from latenttracer.methods.base import METHODS, Method, failed_row, scored_row

__all__ = ["AEDR"]


@METHODS.register
@dataclass(frozen=True)
class AEDR(Method):
    """AEDR's score; see the module docstring."""

    posterior: Literal["sample", "mean"] = field(
        default="sample", metadata={"help": "KL latent: sampled from the posterior (the authors') or its mean"})
    seed: int = field(default=1, metadata={"help": "seed of each image's posterior sample"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, mps or auto"})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16"})

    name = "aedr"
    components = ("loss_1", "loss_2", "homogeneity")
    calibration = "kde"

    def __post_init__(self) -> None:
        if self.posterior not in ("sample", "mean"):
            raise ValueError(f"method aedr: posterior {self.posterior!r} is not one of ['sample', 'mean']")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"method aedr: seed must be an integer, got {self.seed!r}")
        resolve_dtype(self.dtype)

    def identity(self) -> dict:
        out = {"posterior": self.posterior, "dtype": self.dtype}
        if self.posterior == "sample":
            out["seed"] = self.seed
        return out

    def compute(self, ae: Autoencoder, images: torch.Tensor, records: Sequence[ImageRecord]) -> list[dict]:
        n = len(records)
        gens = ([torch.Generator().manual_seed(self.seed) for _ in range(n)]
                if self.posterior == "sample" else None)
        x = images.to(ae.device, ae.dtype) * 2 - 1
        first = ae.reconstruct(x, generators=gens)
        second = ae.reconstruct(first, generators=gens)
        loss_1 = (first.float() - x.float()).square().flatten(1).mean(1).tolist()
        loss_2 = (second.float() - first.float()).square().flatten(1).mean(1).tolist()
        rows = []
        for rec, a, b in zip(records, loss_1, loss_2):
            try:
                c = glcm_homogeneity(rec.path)
            except ValueError as err:
                rows.append(failed_row(f"homogeneity: {err}", loss_1=a, loss_2=b, homogeneity=None))
                continue
            parts = {"loss_1": a, "loss_2": b, "homogeneity": c}
            score = a * c / b if b != 0 else math.inf
            if not math.isfinite(score):
                rows.append(failed_row(f"non-finite score (loss_1={a:.3g}, loss_2={b:.3g})", **parts))
                continue
            rows.append(scored_row(score, **parts))
        return rows
