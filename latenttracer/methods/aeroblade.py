"""AEROBLADE (CVPR 2024): the distance between an image and its one-pass autoencoder reconstruction.

As AEROBLADE's code does: the image in [-1, 1] goes through the inspected autoencoder once, the KL latent
**sampled** from the posterior with a generator seeded with ``seed`` (1; here one generator per image, for
batch independence: theirs runs through a folder), VQ latents decoded without quantisation; the output is
clamped to [0, 1] and, with ``quantize_output`` (default), truncated to 8 bits as their PNG save does
(``floor(255 x) / 255``). The score is the distance between image and reconstruction, lower = more belonging;
the threshold is the 95%-TPR quantile of the calibration scores (as every quantile-calibrated method).

``distance``:

* ``lpips_vgg_2`` (AEROBLADE's default, label ``aeroblade``): LPIPS-VGG, 2nd layer only (relu2_2), averaged
  over space. Needs VGG16 and LPIPS weights from local files (``vgg_weights``, ``lpips_weights``; see
  :mod:`latenttracer.methods.lpips_vgg`): none can be downloaded here.
* ``l2`` (label ``aeroblade[l2]``): per-image MSE on [0, 1] pixels, from AEROBLADE's distance ablation.
* ``ssim`` (label ``aeroblade[ssim]``): ``1 - SSIM`` from scikit-image's ``structural_similarity`` (Gaussian
  window sigma 1.5, population covariances, data range 1, over RGB channels), from the same ablation;
  their code uses pyiqa's SSIM, whose colour handling differs. MS-SSIM is not offered: its 5 scales need
  images larger than 160 px, and the zoo's are 32 px.

The weight-free distances are **not** LPIPS; results with them must be labelled ``aeroblade[l2]`` /
``aeroblade[ssim]`` (:attr:`Aeroblade.label`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from latenttracer.autoencoders import Autoencoder, resolve_dtype
from latenttracer.images import ImageRecord
from latenttracer.methods.base import METHODS, Method, failed_row, scored_row
from latenttracer.methods.lpips_vgg import file_fingerprint, load_lpips_vgg, missing_weights

__all__ = ["DISTANCES", "Aeroblade"]

DISTANCES = ("lpips_vgg_2", "l2", "ssim")


@functools.lru_cache(maxsize=4)
def _lpips(vgg_weights: str, lpips_weights: str, device: str):
    return load_lpips_vgg(vgg_weights, lpips_weights, layers=(2,)).to(device)


def ssim_distance(x01: torch.Tensor, y01: torch.Tensor) -> list[float]:
    """``1 - SSIM`` per image (scikit-image, Gaussian window sigma 1.5, RGB, data range 1)."""
    from skimage.metrics import structural_similarity

    a = x01.detach().float().cpu().numpy()
    b = y01.detach().float().cpu().numpy()
    return [1.0 - float(structural_similarity(p, q, data_range=1.0, channel_axis=0, gaussian_weights=True,
                                              sigma=1.5, use_sample_covariance=False))
            for p, q in zip(a.astype(np.float64), b.astype(np.float64))]


@METHODS.register
@dataclass(frozen=True)
class Aeroblade(Method):
    """AEROBLADE's score; see the module docstring."""

    distance: Literal["lpips_vgg_2", "l2", "ssim"] = field(
        default="lpips_vgg_2", metadata={"help": "image-reconstruction distance: LPIPS-VGG layer 2 (AEROBLADE's; "
                                                 "needs the two weight files), or l2 / ssim from its ablation"})
    vgg_weights: str | None = field(default=None, metadata={"help": "lpips_vgg_2: torchvision VGG16 weights file"})
    lpips_weights: str | None = field(
        default=None, metadata={"help": "lpips_vgg_2: the lpips package's v0.1 vgg.pth linear weights file"})
    posterior: Literal["sample", "mean"] = field(
        default="sample", metadata={"help": "KL latent: sampled from the posterior (the authors') or its mean"})
    seed: int = field(default=1, metadata={"help": "seed of each image's posterior sample"})
    quantize_output: bool = field(
        default=True, metadata={"help": "round the reconstruction down to 8 bits before the distance, as "
                                        "AEROBLADE's PNG save does"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, mps or auto"})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16"})

    name = "aeroblade"

    @classmethod
    def contract_options(cls) -> dict:
        return {"distance": "l2"}  # lpips_vgg_2 needs weight files

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"method aeroblade: distance {self.distance!r} is not one of {list(DISTANCES)}")
        if self.posterior not in ("sample", "mean"):
            raise ValueError(f"method aeroblade: posterior {self.posterior!r} is not one of ['sample', 'mean']")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"method aeroblade: seed must be an integer, got {self.seed!r}")
        resolve_dtype(self.dtype)
        if self.distance.startswith("lpips"):
            message = missing_weights(self.vgg_weights, self.lpips_weights)
            if message:
                raise FileNotFoundError(f"method aeroblade, distance {self.distance}: {message}")

    @property
    def label(self) -> str:
        return "aeroblade" if self.distance == "lpips_vgg_2" else f"aeroblade[{self.distance}]"

    def identity(self) -> dict:
        out = {"distance": self.distance, "posterior": self.posterior, "quantize_output": self.quantize_output,
               "dtype": self.dtype}
        if self.posterior == "sample":
            out["seed"] = self.seed
        if self.distance.startswith("lpips"):
            out["vgg_weights"] = file_fingerprint(self.vgg_weights)
            out["lpips_weights"] = file_fingerprint(self.lpips_weights)
        return out

    def reconstruct(self, ae: Autoencoder, images: torch.Tensor) -> torch.Tensor:
        """The reconstruction AEROBLADE measures against, in [0, 1]."""
        gens = ([torch.Generator().manual_seed(self.seed) for _ in range(images.shape[0])]
                if self.posterior == "sample" else None)
        x = images.to(ae.device, ae.dtype) * 2 - 1
        out = (ae.reconstruct(x, generators=gens, quantize=False).float() / 2 + 0.5).clamp(0, 1)
        return torch.floor(out * 255) / 255 if self.quantize_output else out

    def compute(self, ae: Autoencoder, images: torch.Tensor, records: Sequence[ImageRecord]) -> list[dict]:
        recon = self.reconstruct(ae, images)
        x = images.to(recon.device, torch.float32)
        if self.distance == "l2":
            values = (recon - x).square().flatten(1).mean(1).tolist()
        elif self.distance == "ssim":
            values = ssim_distance(x, recon)
        else:
            net = _lpips(str(self.vgg_weights), str(self.lpips_weights), str(recon.device))
            values = net(x, recon).tolist()
        return [scored_row(v) if math.isfinite(v) else failed_row(f"non-finite distance ({v})") for v in values]
