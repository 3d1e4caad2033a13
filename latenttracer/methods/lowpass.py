"""``lowpass``: LatentTracer scored by a low-pass distance, so that what a re-encoding adds (JPEG blocks, lost fine
detail, resampling) weighs less than what the decoder cannot make at all.

The one inversion loop (:func:`latenttracer.inversion.invert`) minimises, per image, the mean squared error between
``L(D(z))`` and ``L(x)``, where ``L`` averages non-overlapping ``lowpass_factor`` x ``lowpass_factor`` pixel blocks
(an exact, differentiable low-pass filter and downsampler). With ``lowpass_on: decoder`` only the decoder output
is filtered and compared with the image's pixels brought back to full size (``P(D(z))`` against ``x``, for images
that were themselves blurred or downscaled). The score is the running minimum over the steps, as LatentTracer's;
every other setting is an :class:`~latenttracer.inversion.InversionConfig` field (the authors' defaults).

Defining property (``tests/test_methods_normalised.py``): a perturbation that only changes what averages out within each
block (e.g. a zero-mean pattern inside every block) leaves the score unchanged, while LatentTracer's moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from latenttracer.inversion import DistanceFn, InversionConfig
from latenttracer.methods.base import METHODS
from latenttracer.methods.inversion_methods import LatentTracer

__all__ = ["LowPass", "LowPassSettings", "lowpass_distance"]


@dataclass(frozen=True)
class LowPassSettings(InversionConfig):
    """The inversion settings plus the filter (both decide the scores: both are in the cache key)."""

    lowpass_factor: int = field(default=2, metadata={"help": "lowpass: side of the averaged pixel blocks (>= 1; "
                                                             "1 is LatentTracer's plain distance)"})
    lowpass_on: Literal["both", "decoder"] = field(default="both", metadata={
        "help": "lowpass: filter decoder output and image (both) or the decoder output only (decoder)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.lowpass_factor, bool) or not isinstance(self.lowpass_factor, int) or self.lowpass_factor < 1:
            raise ValueError(f"method lowpass: lowpass_factor must be an integer >= 1, got {self.lowpass_factor!r}")
        if self.lowpass_on not in ("both", "decoder"):
            raise ValueError(f"method lowpass: lowpass_on {self.lowpass_on!r} is not one of ['both', 'decoder']")


def lowpass_distance(factor: int, on: str = "both", kind: str = "l2") -> DistanceFn:
    """Per-image mean distance after ``factor`` x ``factor`` block averaging (module docstring)."""

    def distance(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        r = F.avg_pool2d(recon.float(), factor, ceil_mode=True)
        if on == "both":
            t = F.avg_pool2d(target.float(), factor, ceil_mode=True)
        else:  # P(D(z)) against x: the filtered output back at full size
            r = F.interpolate(r, size=recon.shape[-2:], mode="nearest")
            t = target.float()
        diff = r - t
        per_pixel = diff.square() if kind == "l2" else diff.abs()
        return per_pixel.flatten(1).mean(1)

    return distance


@METHODS.register
@dataclass(frozen=True)
class LowPass(LatentTracer):
    """LatentTracer with a block-average low-pass distance (module docstring); lower = more likely belonging."""

    config: LowPassSettings = field(default_factory=LowPassSettings)

    name = "lowpass"
    own_cache = True

    @property
    def label(self) -> str:
        on = "" if self.config.lowpass_on == "both" else ",decoder"
        return f"lowpass[{self.config.lowpass_factor}{on}]"

    def distance(self) -> DistanceFn | None:
        return lowpass_distance(self.config.lowpass_factor, self.config.lowpass_on, self.config.distance)
