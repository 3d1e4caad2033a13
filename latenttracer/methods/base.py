"""What every scoring method provides to the one scoring path (:func:`latenttracer.tracing.score_images`).

A method turns a batch of images (already read and resized by :mod:`latenttracer.images`) into one row per
image: ``score`` (**lower = more likely belonging**, for every method), ``status`` and ``reason``, the
LatentTracer fields ``init_loss``, ``best_step`` and ``trajectory`` where they apply (NaN or ``None`` otherwise), and
the method's own per-image components (``components``, e.g. AEDR's ``loss_1``, ``loss_2``, ``homogeneity``),
which the results store keeps as extra float columns. :meth:`Method.calibrate` turns scores of images known to
belong into the method's own threshold, and :meth:`Method.run_hash` is the cache key part saying how an image
was scored.

A method registers itself in :data:`METHODS` where it is defined (``@METHODS.register``); every module of
:mod:`latenttracer.methods` is imported on the first lookup, so a new method is one new module (or a plugin file,
:func:`latenttracer.registry.load_plugins`). Its options are the fields of ONE settings dataclass
(:meth:`Method.settings_type`: the method's own dataclass, or e.g. :class:`~latenttracer.inversion.InversionConfig`),
with types, defaults and ``field(metadata={"help": ...})``; the CLI builds its flags from them.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import MISSING, Field, asdict, fields
from typing import Any, ClassVar

import torch

from latenttracer.autoencoders import Autoencoder, resolve_device, resolve_dtype
from latenttracer.images import ImageOptions, ImageRecord
from latenttracer.metrics import calibrate_threshold
from latenttracer.registry import Registry

__all__ = ["METHODS", "SHARED_OPTIONS", "Method", "failed_row", "image_prep", "model_identity", "scored_row"]

METHODS: Registry[type[Method]] = Registry("method", "latenttracer.methods")

# Options that say where and how fast a method runs, set from the caller's shared settings (the CLI's
# --device, --dtype, --batch-size) for every method whose settings have them.
SHARED_OPTIONS = ("device", "dtype", "batch_size")


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
    """A scoring method; concrete methods are frozen dataclasses registered in :data:`METHODS`.

    To write one: subclass, set ``name``, declare the options as dataclass fields (type, default,
    ``metadata={"help": ...}``), implement :meth:`identity` and :meth:`compute`.
    """

    name: ClassVar[str]
    components: ClassVar[tuple[str, ...]] = ()
    calibration: ClassVar[str] = "quantile"
    needs_grad: ClassVar[bool] = False  # a backward pass through the decoder (memory estimate)
    hidden_options: ClassVar[tuple[str, ...]] = ()  # settings fields the method sets itself (no CLI flag)

    device: str
    dtype: str

    # -- settings ----------------------------------------------------------------------------------------------
    @classmethod
    def settings_type(cls) -> type:
        """The dataclass whose fields are this method's options (default: the method's own dataclass)."""
        return cls

    @classmethod
    def option_fields(cls) -> list[Field]:
        """The settings fields a caller may set (hidden ones left out)."""
        return [f for f in fields(cls.settings_type()) if f.init and f.name not in cls.hidden_options]

    @classmethod
    def preset(cls) -> dict[str, Any]:
        """Defaults of this method that differ from its settings dataclass's (e.g. RONAN's inversion settings)."""
        return {}

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """Each option's default when the method is built by name with no options."""
        out = {}
        for f in cls.option_fields():
            if f.default is not MISSING:
                out[f.name] = f.default
            elif f.default_factory is not MISSING:  # type: ignore[misc]
                out[f.name] = f.default_factory()  # type: ignore[misc]
        preset = cls.preset()
        return {k: preset.get(k, v) for k, v in out.items()}

    @classmethod
    def contract_options(cls) -> dict[str, Any]:
        """Cheap options the shared method contracts (tests/helpers/) build this method with."""
        return {}

    @classmethod
    def from_dict(cls, values: dict) -> Method:
        """Build from a mapping of this method's options; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls.settings_type())}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"method {cls.name}: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls.from_settings(cls.settings_type()(**{**cls.preset(), **values}))

    @classmethod
    def from_settings(cls, settings: Any) -> Method:
        """The method with ``settings`` (an instance of :meth:`settings_type`)."""
        return settings

    # -- scoring -----------------------------------------------------------------------------------------------
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

    def score_batch(self, ae: Autoencoder, images: torch.Tensor, records: Sequence[ImageRecord]) -> list[dict]:
        """One row per image of ``images`` ((N, 3, H, W) in [0, 1], H = W = the model's resolution);
        ``records`` describe the files. A batch of another shape is an error saying what is wrong."""
        check_batch(self.name, ae, images, records)
        rows = self.compute(ae, images, records)
        if len(rows) != len(records):
            raise RuntimeError(f"method {self.name}: {len(rows)} rows for {len(records)} images")
        return rows

    @abstractmethod
    def compute(self, ae: Autoencoder, images: torch.Tensor, records: Sequence[ImageRecord]) -> list[dict]:
        """The rows of a checked batch (see :meth:`score_batch`); use :func:`scored_row` / :func:`failed_row`."""

    def calibrate(self, belonging_scores, target_tpr: float = 0.95) -> float:
        """The method's threshold from scores of images known to belong (``score <= threshold`` belongs)."""
        return calibrate_threshold(belonging_scores, target_tpr, rule=self.calibration)


def check_batch(method: str, ae: Autoencoder, images: object, records: Sequence[ImageRecord]) -> None:
    """A clear error unless ``images`` is a float (N, 3, R, R) tensor, R the model's resolution, N = #records."""
    where = f"method {method}: images"
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{where}: expected a torch.Tensor, got {type(images).__name__}")
    res = ae.resolution
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (res, res):
        raise ValueError(f"{where}: expected shape (N, 3, {res}, {res}) (RGB at the model's resolution), "
                         f"got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{where}: expected floats in [0, 1], got dtype {images.dtype}")
    if images.shape[0] != len(records):
        raise ValueError(f"{where}: {images.shape[0]} images but {len(records)} records")


def scored_row(score: float, **components: Any) -> dict:
    """A row for an image scored ``score`` (with the method's ``components``), or failed if not finite."""
    if not math.isfinite(score):
        return failed_row(f"non-finite score ({score})", **components)
    return {"score": float(score), "init_loss": math.nan, "best_step": None, "status": "ok", "reason": "",
            "trajectory": None, **components}


def failed_row(reason: str, **extra: Any) -> dict:
    """A row for an image the method could not score."""
    return {"score": float("nan"), "init_loss": math.nan, "best_step": None, "status": "failed", "reason": reason,
            "trajectory": None, **extra}
