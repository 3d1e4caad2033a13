"""The autoencoder interface LatentTracer inverts, the family registry, and :func:`load_autoencoder`.

An **autoencoder family** is one class (a subclass of :class:`Autoencoder`) in one module of this package, or in
a plugin file (:func:`latenttracer.registry.load_plugins`), registered with ``@FAMILIES.register``. It says
which sources it can load (:meth:`Autoencoder.can_load`), loads them (:meth:`Autoencoder.load`), and exposes
exactly what latent inversion needs, in the authors' conventions (``docs/method.md``, "Authors' settings"):

* ``encode(x)``: images in [0, 1], shape (B, 3, H, W) -> the starting latent z0 (no gradient).
* ``decode(z)``: latent -> images in [0, 1], clamped unless ``clamp=False``; differentiable w.r.t. ``z``.
* ``reconstruct(x, generators=, quantize=)``: one encode -> decode pass in the model's own pixel space, [-1, 1]
  in and out, not clamped: the reconstruction of the one-pass methods (AEDR, AEROBLADE).
* optionally, for a family with a prior: ``latent_shape`` and ``sample_prior(generators)`` (generation's
  ``prior`` pipeline: ``data_gen/generate.py``).
* ``resolution`` (the side images are resized to), ``fingerprint`` (16 hex digits over every weight and config
  file the family reads: a score cache is keyed by it), ``decoder_width`` (what :mod:`latenttracer.memory`
  needs to size batches).

:func:`load_autoencoder` asks every registered family, in name order, whether it can load a source; the first
that can, loads it. When none can, the error lists what each family looks for and why this source is not it.
``docs/extending_autoencoders.md`` adds a family end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from latenttracer.registry import Registry

__all__ = ["FAMILIES", "Autoencoder", "AutoencoderLoadError", "content_fingerprint", "load_autoencoder",
           "read_json_object", "resolve_device", "resolve_dtype"]


class AutoencoderLoadError(ValueError):
    """A model source could not be turned into an :class:`Autoencoder`; the message says what was found."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}
    if dtype not in table:
        raise ValueError(f"dtype: unknown value {dtype!r}; expected one of {sorted(table)}")
    return table[dtype]


def read_json_object(path: Path, what: str) -> dict:
    """The JSON object in ``path`` (a family's ``what``, e.g. ``"card"``); a file that cannot be read, is not JSON
    or holds another JSON value is an :class:`AutoencoderLoadError` naming it."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AutoencoderLoadError(f"{path}: cannot read the {what}'s JSON ({err})") from err
    if not isinstance(value, dict):
        raise AutoencoderLoadError(f"{path}: the {what} must be a JSON object, found {type(value).__name__}")
    return value


def content_fingerprint(files: Iterable[Path], root: Path) -> str:
    """sha256 (16 hex digits) over files' paths relative to ``root`` and their bytes: path-independent, so a
    moved checkout keeps its caches and a retrained model at the same path does not."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


class Autoencoder(ABC):
    """An inspected model's autoencoder in LatentTracer's conventions (see the module docstring).

    ``model`` is the torch module holding every weight (placement and dtype follow it); it is put in eval mode
    with gradients off for its parameters (inversion differentiates w.r.t. the latent only).
    """

    family: ClassVar[str] = ""
    """The registry name of the family (e.g. ``"taesd"``)."""
    looks_for: ClassVar[str] = ""
    """What a source of this family looks like, in a few words (quoted when no family can load a source)."""

    def __init__(self, model: torch.nn.Module, *, name: str, resolution: int, fingerprint: str = "",
                 clamp: bool = True) -> None:
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.resolution = int(resolution)
        self.fingerprint = fingerprint
        self.clamp = clamp

    # -- finding and loading ---------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def can_load(cls, source: str, *, local_files_only: bool | None = None) -> bool:
        """Whether ``source`` (a path or an id, as given) is this family's; cheap, never loads weights."""

    @classmethod
    def why_not(cls, source: str, *, local_files_only: bool | None = None) -> str:
        """Why :meth:`can_load` said no, for the error of :func:`load_autoencoder` (default: :attr:`looks_for`)."""
        return f"expected {cls.looks_for}"

    @classmethod
    @abstractmethod
    def load(cls, source: str, *, name: str | None = None, resolution: int | None = None, clamp: bool = True,
             local_files_only: bool | None = None) -> Autoencoder:
        """Build the autoencoder of ``source`` on the CPU in float32 (:func:`load_autoencoder` moves it)."""

    @classmethod
    def local_folder(cls, source: str) -> Path:
        """``source`` as a resolved local folder (for families loaded from one), or an :class:`AutoencoderLoadError`
        that names it and says what this family looks for."""
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise AutoencoderLoadError(f"{source}: not a folder; expected {cls.looks_for}")
        return folder.resolve()

    @classmethod
    def folder_why_not(cls, source: str, why: Callable[[Path], str]) -> str:
        """:meth:`why_not` for a family loaded from a local folder (:meth:`local_folder`): ``why(folder)`` says
        what the folder lacks; a source that is no local folder is said to be so; each ends with :attr:`looks_for`."""
        folder = Path(source).expanduser()
        return f"{why(folder) if folder.is_dir() else 'not a local folder'}; expected {cls.looks_for}"

    @classmethod
    def tiny_for_tests(cls, folder: Path, seed: int = 0) -> str:
        """Write a small random-init instance (weights seeded by ``seed``) into ``folder``; return the source to
        pass to :func:`load_autoencoder`. The shared contract tests (``tests/helpers/autoencoder_contracts.py``)
        run every registered family through it; the same architecture for every seed, other weights."""
        raise NotImplementedError(f"autoencoder family {cls.family!r} ({cls.__qualname__}) defines no "
                                  "tiny_for_tests(folder, seed), which the contract tests need")

    # -- placement -------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> Autoencoder:
        kwargs: dict[str, Any] = {}
        if device is not None and resolve_device(device) != self.device:
            kwargs["device"] = resolve_device(device)
        if dtype is not None and resolve_dtype(dtype) != self.dtype:
            kwargs["dtype"] = resolve_dtype(dtype)
        if kwargs:
            self.model.to(**kwargs)
        return self

    @property
    @abstractmethod
    def decoder_width(self) -> int:
        """Channels of the decoder's full-resolution activations (:mod:`latenttracer.memory` sizes batches)."""

    # -- the maps inversion and the one-pass methods need ----------------------------------------------------
    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], shape (B, 3, H, W) -> the encoder initialisation z0 (no gradient)."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent -> images in [0, 1] (clamped unless ``clamp=False``). Differentiable w.r.t. ``latents``."""

    @abstractmethod
    def reconstruct(self, x: torch.Tensor, *, generators: Sequence[torch.Generator] | None = None,
                    quantize: bool = True) -> torch.Tensor:
        """One encode -> decode pass, [-1, 1] in and out, not clamped (AEDR's and AEROBLADE's reconstruction).

        ``generators`` (one per image) draw a sampled latent where the family's encoder is stochastic; draws
        continue where a generator stopped, so a second call with the same generators makes AEDR's second
        draw. ``quantize=False`` skips a quantiser where the family has one.
        """

    # -- the prior (only families of complete latent generative models have one) ------------------------------
    @property
    def has_prior(self) -> bool:
        """Whether :meth:`sample_prior` is defined (generation's ``prior`` pipeline decodes its samples)."""
        return type(self).sample_prior is not Autoencoder.sample_prior

    def sample_prior(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One latent per generator drawn from the model's prior, batch-independent (a family with a prior
        overrides it, and ``latent_shape``); :meth:`decode` turns them into the model's generated images."""
        raise NotImplementedError(f"autoencoder family {self.family!r} ({self.name}) has no prior to sample")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, family={self.family}, resolution={self.resolution})"


FAMILIES: Registry[type[Autoencoder]] = Registry("autoencoder family", "latenttracer.autoencoders",
                                                 key=lambda cls: cls.family)


def load_autoencoder(
    source: str | os.PathLike,
    *,
    name: str | None = None,
    resolution: int | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    clamp: bool = True,
    local_files_only: bool | None = None,
) -> Autoencoder:
    """Load the autoencoder of ``source`` with the first registered family (in name order) that can load it.

    ``resolution`` overrides the family's default resolution; ``name`` defaults to the directory's or id's last
    part. ``local_files_only`` is passed to families that can fetch from a hub.
    """
    src = str(source)
    for _, family in FAMILIES.items():
        if family.can_load(src, local_files_only=local_files_only):
            ae = family.load(src, name=name, resolution=resolution, clamp=clamp, local_files_only=local_files_only)
            return ae.to(device, dtype)
    if Path(src).expanduser().is_file():
        raise AutoencoderLoadError(f"{src}: is a file, and no autoencoder family loads a single file; expected "
                                   f"{'; '.join(f'{f}: {c.looks_for}' for f, c in FAMILIES.items())}")
    reasons: dict[str, list[str]] = {}
    for fam, family in FAMILIES.items():
        reasons.setdefault(family.why_not(src, local_files_only=local_files_only), []).append(fam)
    listed = "\n".join(f"  {', '.join(fams)}: {why}" for why, fams in reasons.items())
    raise AutoencoderLoadError(f"{src}: no autoencoder family can load it; each family says:\n{listed}")
