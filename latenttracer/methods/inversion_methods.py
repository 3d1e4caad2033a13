"""Optimisation-based methods: LatentTracer itself and RONAN, both the one inversion loop with a preset.

* ``latenttracer`` (ICML 2024): :class:`~latenttracer.inversion.InversionConfig` as given (authors' defaults).
* ``ronan`` (NeurIPS 2023): :func:`~latenttracer.inversion.ronan_config`: random initial latent, Adam lr 0.1,
  1500 steps, constant learning rate, min over steps.

Their options are the fields of :class:`~latenttracer.inversion.InversionConfig`. The cache key is
``config.hash`` over the model's fingerprint, resolution and clamp, and the image preparation (pinned by a
test, so stored scores stay valid). A ``ronan`` run and a ``latenttracer`` run with the same settings share their
cached rows: they are the same computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace

import torch

from latenttracer.autoencoders import Autoencoder
from latenttracer.images import ImageOptions, ImageRecord
from latenttracer.inversion import (
    DistanceFn,
    InversionConfig,
    InversionResult,
    image_seed,
    invert,
    latent_to_bytes,
    ronan_config,
)
from latenttracer.methods.base import METHODS, Method, image_prep, model_identity

__all__ = ["LatentTracer", "Ronan"]


@METHODS.register
@dataclass(frozen=True)
class LatentTracer(Method):
    """Latent inversion through the decoder (the project's default method)."""

    config: InversionConfig = field(default_factory=InversionConfig)

    name = "latenttracer"
    needs_grad = True
    # record_*: always on (the rows carry both); early exit: turned on, with its threshold and bound, by the caller
    # from a threshold or calibration trajectories (trace --early-exit, latenttracer.tracing.Tracer.early_exit)
    hidden_options = ("record_trajectory", "record_latent", "early_exit", "exit_threshold", "exit_ratios")
    # Whether the cache key names the method: a subclass that scores otherwise than the loop (its own distance or
    # final score) keeps rows of its own; RONAN, the same loop with other settings, shares LatentTracer's.
    own_cache = False

    @classmethod
    def default_settings(cls) -> InversionConfig:
        """The settings of the method built with none given (its ``config`` field's default)."""
        return next(f for f in fields(cls) if f.name == "config").default_factory()  # type: ignore[misc]

    @classmethod
    def settings_type(cls) -> type:
        """The type of :meth:`default_settings`: InversionConfig, or a subclass's own (e.g. lowpass's)."""
        return type(cls.default_settings())

    @classmethod
    def preset(cls) -> dict:
        """The default settings that differ from the settings type's own defaults (e.g. RONAN's)."""
        default = asdict(cls.settings_type()())
        return {k: v for k, v in asdict(cls.default_settings()).items() if v != default[k]}

    @classmethod
    def from_settings(cls, settings: InversionConfig) -> LatentTracer:
        return cls(config=settings)

    @classmethod
    def contract_options(cls) -> dict:
        return {"steps": 5}

    @property
    def device(self) -> str:  # type: ignore[override]
        return self.config.device

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return self.config.dtype

    @property
    def batch_size(self) -> int | str:
        return self.config.batch_size

    def identity(self) -> dict:
        return self.config.identity()

    def run_hash(self, ae: Autoencoder, image_options: ImageOptions) -> str:
        own = ({"method": self.name},) if self.own_cache else ()
        return self.config.hash(model_identity(ae), image_prep(image_options), *own)

    def distance(self) -> DistanceFn | None:
        """The per-image loss the loop minimises (None: ``config.distance``); a subclass may give its own."""
        return None

    def final_score(self, result: InversionResult) -> float:
        """The score of one inverted image (LatentTracer: the loop's score); a subclass may transform it."""
        return result.score

    def compute(self, ae: Autoencoder, images: torch.Tensor, records: Sequence[ImageRecord]) -> list[dict]:
        cfg = replace(self.config, batch_size=max(1, len(records)), record_trajectory=True, record_latent=True)
        results = invert(ae, images, cfg, seeds=[image_seed(r.sha256, self.config.seed) for r in records],
                         distance=self.distance())
        exits = ({} if not cfg.early_exit else  # early exit: how each image left the loop (trace --early-exit)
                 [{"exit": res.exit, "exit_step": res.exit_step, "steps_run": res.steps_run} for res in results])
        return [{"score": self.final_score(res), "init_loss": res.init_loss, "best_step": res.best_step,
                 "status": res.status, "reason": res.reason, "trajectory": res.trajectory,
                 "best_latent": latent_to_bytes(res.best_latent) if res.status == "ok" else None,
                 **(exits[k] if exits else {})} for k, res in enumerate(results)]


@METHODS.register
@dataclass(frozen=True)
class Ronan(LatentTracer):
    """RONAN: a preset of the one inversion loop (see :func:`~latenttracer.inversion.ronan_config`)."""

    config: InversionConfig = field(default_factory=ronan_config)

    name = "ronan"
