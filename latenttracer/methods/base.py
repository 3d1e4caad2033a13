"""What every scoring method provides to the one scoring path (:func:`latenttracer.tracing.score_images`).

A method turns a batch of images (already read and resized by :mod:`latenttracer.images`) into one row per
image: ``score`` (**lower = more likely belonging**, for every method), ``status`` and ``reason``, the
LatentTracer fields ``init_loss``, ``best_step`` and ``trajectory`` where they apply (NaN or ``None`` otherwise), and
the method's own per-image components (``components``, e.g. AEDR's ``loss_1``, ``loss_2``, ``homogeneity``),
which the results store keeps as extra float columns. :meth:`Method.calibrate` turns scores of images known to
belong into the method's own threshold, and :meth:`Method.run_hash` is the cache key part saying how an image
was scored.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Any, ClassVar

import torch

from latenttracer.autoencoders import Autoencoder, resolve_device, resolve_dtype
from latenttracer.images import ImageOptions, ImageRecord
from latenttracer.metrics import calibrate_threshold

__all__ = ["Method", "image_prep", "model_identity"]


def image_prep(image_options: ImageOptions) -> dict:
    """The image options that change pixels (part of every cache key)."""
    return {k: v for k, v in asdict(image_options).items() if k in ("resize", "alpha_background")}


def model_identity(ae: Autoencoder, *, clamp: bool = True) -> dict:
    """The inspected model's part of a cache key: weights fingerprint, resolution and (if used) the clamp."""
    out: dict[str, Any] = {"model": ae.fingerprint, "resolution": ae.resolution}
    if clamp:
        out["clamp"] = ae.clamp
    return out


class Method(ABC):
    """A scoring method; concrete methods are frozen dataclasses (see :mod:`latenttracer.methods`)."""

    name: ClassVar[str]
    components: ClassVar[tuple[str, ...]] = ()
    calibration: ClassVar[str] = "quantile"
    needs_grad: ClassVar[bool] = False  # a backward pass through the decoder (memory estimate)

    device: str
    dtype: str

    @property
    def label(self) -> str:
        """How tables and CSVs name the method (e.g. ``aeroblade[l2]``)."""
        return self.name

    @property
    def batch_size(self) -> int | str:
        """The batch size :func:`score_images` uses unless told otherwise (``"auto"``: from free memory)."""
        return "auto"

    @abstractmethod
    def identity(self) -> dict:
        """The settings that decide the scores (cache key)."""

    def run_hash(self, ae: Autoencoder, image_options: ImageOptions) -> str:
        """The cache key part that says *how* an image was scored by ``ae``."""
        payload = json.dumps([{"method": self.name, **self.identity()}, model_identity(ae, clamp=False),
                              image_prep(image_options)], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def prepare(self, ae: Autoencoder) -> None:
        """Put ``ae`` where the method runs (device, dtype)."""
        ae.to(resolve_device(self.device), resolve_dtype(self.dtype))

    @abstractmethod
    def score_batch(self, ae: Autoencoder, images: torch.Tensor, records: Sequence[ImageRecord]) -> list[dict]:
        """One row per image of ``images`` ((N, 3, H, W) in [0, 1]); ``records`` describe the files."""

    def calibrate(self, belonging_scores, target_tpr: float = 0.95) -> float:
        """The method's threshold from scores of images known to belong (``score <= threshold`` belongs)."""
        return calibrate_threshold(belonging_scores, target_tpr, kind=self.calibration)

    @classmethod
    def from_dict(cls, values: dict) -> Method:
        """Build from a mapping of this method's options; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"method {cls.name}: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))


def failed_row(reason: str, **extra: Any) -> dict:
    """A row for an image the method could not score."""
    return {"score": float("nan"), "init_loss": math.nan, "best_step": None, "status": "failed", "reason": reason,
            "trajectory": None, **extra}
