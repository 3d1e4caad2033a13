"""One small interface over the autoencoders LatentTracer inspects.

An :class:`Autoencoder` wraps a diffusers ``AutoencoderKL``, ``VQModel`` or ``AutoencoderTiny`` and exposes
exactly what latent inversion needs, in the authors' conventions (``docs/method.md``, "Authors' settings"):

* ``encode(x)``: images in [0, 1] -> the starting latent z0.
  KL: posterior **mean** times ``scaling_factor`` (minus ``shift_factor`` first, for models that have one).
  VQ: the encoder output **quantised** (the authors' ``encode`` -> ``quantize``), in the raw codebook space.
  Tiny: the encoder's latent times ``scaling_factor`` (1.0 for TAESD).
* ``decode(z)``: latent -> images in [0, 1], clamped (``clamp=False`` reproduces the authors' Kandinsky path,
  which skips the clamp). VQ decoders run with ``force_not_quantize=True``, so inversion moves in the
  continuous pre-quantisation space, as in the authors' code.

:func:`load_autoencoder` accepts a diffusers pipeline directory or hub id (its ``vae``, ``vqvae`` or ``movq``
component; only that subfolder is loaded, never the whole pipeline) or a directory holding one bare
autoencoder saved with ``save_pretrained``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

AE_COMPONENTS = ("vae", "vqvae", "movq")
SUPPORTED_CLASSES = {"AutoencoderKL": "kl", "VQModel": "vq", "AutoencoderTiny": "tiny"}
Kind = Literal["kl", "vq", "tiny"]


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


@dataclass
class Autoencoder:
    """An inspected model's autoencoder in LatentTracer's conventions (see the module docstring)."""

    model: torch.nn.Module
    kind: Kind
    name: str
    resolution: int
    fingerprint: str = ""
    clamp: bool = True

    def __post_init__(self) -> None:
        self.model.eval().requires_grad_(False)
        cfg = self.model.config
        self.scaling_factor = float(getattr(cfg, "scaling_factor", 1.0) or 1.0)
        self.shift_factor = float(getattr(cfg, "shift_factor", 0.0) or 0.0)

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

    # -- the two maps inversion needs ------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], shape (B, 3, H, W) -> the encoder initialisation z0."""
        x = images.to(self.device, self.dtype) * 2 - 1
        if self.kind == "kl":
            mean = self.model.encode(x).latent_dist.mean
            return (mean - self.shift_factor) * self.scaling_factor
        if self.kind == "vq":
            h = self.model.encode(x).latents
            quantised, _, _ = self.model.quantize(h)
            return quantised
        return (self.model.encode(x).latents - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent -> images in [0, 1] (clamped unless ``clamp=False``). Differentiable w.r.t. ``latents``."""
        if self.kind == "vq":
            out = self.model.decode(latents, force_not_quantize=True).sample
        else:
            out = self.model.decode(latents / self.scaling_factor + self.shift_factor).sample
        out = out / 2 + 0.5
        return out.clamp(0, 1) if self.clamp else out

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *, generators: Sequence[torch.Generator] | None = None,
                    quantize: bool = True) -> torch.Tensor:
        """One encode -> decode pass in the model's own pixel space, [-1, 1] in and out, **not** clamped.

        This is the reconstruction of the one-pass methods (AEDR, AEROBLADE), as diffusers'
        ``retrieve_latents`` + ``decode`` give it: KL: a latent **sampled** from the posterior, one generator
        per image (``generators``; draws continue where the generator stopped, so a second call with the same
        generators makes AEDR's second draw), or the posterior mean when ``generators`` is None. VQ: the
        encoder output, quantised by the decoder unless ``quantize=False`` (AEROBLADE decodes with
        ``force_not_quantize=True``). Tiny: its deterministic latent. Scaling and shift factors cancel out.
        """
        x = x.to(self.device, self.dtype)
        if self.kind == "kl":
            posterior = self.model.encode(x).latent_dist
            latents = posterior.mean
            if generators is not None:
                if len(generators) != x.shape[0]:
                    raise ValueError(f"generators: {len(generators)} given for {x.shape[0]} images")
                noise = torch.stack([torch.randn(latents.shape[1:], generator=g, dtype=torch.float32)
                                     for g in generators]).to(latents.device, latents.dtype)
                latents = latents + posterior.std * noise
            return self.model.decode(latents).sample
        if self.kind == "vq":
            return self.model.decode(self.model.encode(x).latents, force_not_quantize=not quantize).sample
        return self.model.decode(self.model.encode(x).latents).sample

    def __repr__(self) -> str:
        return f"Autoencoder(name={self.name!r}, kind={self.kind}, resolution={self.resolution})"


# -- loading --------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AutoencoderLoadError(f"{path}: cannot read JSON ({err})") from err


def _ae_downsampling(ae_config: dict) -> int:
    if "encoder_block_out_channels" in ae_config:  # AutoencoderTiny: first encoder block keeps the size
        return 2 ** (len(ae_config["encoder_block_out_channels"]) - 1)
    if "block_out_channels" in ae_config:
        return 2 ** (len(ae_config["block_out_channels"]) - 1)
    return 8


def _native_resolution(read: Any, component: str | None, ae_config: dict) -> int | None:
    """The resolution the model generates at: prior sample size x the autoencoder's downsampling factor."""
    factor = _ae_downsampling(ae_config)
    if component is not None:
        for sub, key in (("unet", "sample_size"), ("transformer", "sample_size"), ("transformer", "height")):
            cfg = read(f"{sub}/config.json")
            if cfg and isinstance(cfg.get(key), int):
                return int(cfg[key]) * factor
    size = ae_config.get("sample_size")
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) if isinstance(size, int) else None


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
    """Load the autoencoder of a pipeline directory, a hub id, or a bare ``save_pretrained`` directory.

    ``resolution`` overrides the model's native resolution (otherwise: the prior's sample size times the
    autoencoder's downsampling factor, else the autoencoder's ``sample_size``). ``name`` defaults to the
    directory's or hub id's last part.
    """
    import diffusers

    src = str(source)
    local = Path(src).expanduser()
    if local.is_dir():
        root = local.resolve()

        def read(rel: str) -> dict | None:
            p = root / rel
            return _read_json(p) if p.is_file() else None

        subfolder_root = root
        index = read("model_index.json")
        default_name = root.name
    elif local.exists():
        raise AutoencoderLoadError(f"{src}: is a file; expected a diffusers pipeline directory, a directory with "
                                   "one autoencoder saved by save_pretrained, or a hub id")
    else:
        root = None
        default_name = src.rstrip("/").split("/")[-1]
        if src.count("/") != 1 or src.startswith((".", "/", "~")):
            raise AutoencoderLoadError(f"{src}: no such directory, and not a hub id of the form 'owner/name'")
        from huggingface_hub import hf_hub_download

        errors: dict[str, str] = {}

        def read(rel: str) -> dict | None:
            try:
                return _read_json(Path(hf_hub_download(src, rel, local_files_only=bool(local_files_only))))
            except Exception as err:  # missing file, offline, unknown or gated repo, ...
                errors[rel] = f"{type(err).__name__}: {err}"
                return None

        subfolder_root = None
        index = read("model_index.json")
        if index is None and read("config.json") is None:
            first = errors.get("model_index.json", "")
            raise AutoencoderLoadError(
                f"{src}: not a local directory, and the hub lookup failed ({first[:300]}). "
                "Pass a local directory holding the pipeline (or its autoencoder) instead.")

    component: str | None = None
    if index is not None:
        found = {k: v for k, v in index.items() if not k.startswith("_")}
        for comp in AE_COMPONENTS:
            spec = found.get(comp)
            if isinstance(spec, (list, tuple)) and len(spec) == 2 and spec[1] in SUPPORTED_CLASSES:
                component, class_name = comp, spec[1]
                break
        else:
            listed = ", ".join(f"{k}={v[1] if isinstance(v, (list, tuple)) and len(v) == 2 else v}"
                               for k, v in found.items()) or "nothing"
            raise AutoencoderLoadError(
                f"{src}: pipeline {index.get('_class_name', '?')} has no supported autoencoder component "
                f"(looked for {'/'.join(AE_COMPONENTS)} of class {'/'.join(SUPPORTED_CLASSES)}); found: {listed}")
        ae_config = read(f"{component}/config.json") or {}
    else:
        ae_config = read("config.json") or {}
        class_name = ae_config.get("_class_name")
        if class_name not in SUPPORTED_CLASSES:
            what = (f"a config.json of class {class_name!r}" if class_name else
                    "no model_index.json and no config.json" if root is None or not (root / "config.json").exists()
                    else "a config.json without _class_name")
            files = sorted(p.name for p in root.iterdir())[:12] if root is not None else []
            raise AutoencoderLoadError(
                f"{src}: expected a diffusers pipeline (model_index.json) or a bare autoencoder "
                f"({'/'.join(SUPPORTED_CLASSES)}); found {what}" + (f" (files: {files})" if files else ""))

    cls = getattr(diffusers, class_name)
    load_from = str(subfolder_root) if subfolder_root is not None else src
    kwargs: dict[str, Any] = {"subfolder": component} if component else {}
    if root is None and local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    try:
        model = cls.from_pretrained(load_from, **kwargs)
    except Exception as err:
        where = f"{src}/{component}" if component else src
        raise AutoencoderLoadError(f"{where}: failed to load {class_name}: {type(err).__name__}: {err}") from err

    if resolution is None:
        resolution = _native_resolution(read, component, ae_config)
    if resolution is None:
        raise AutoencoderLoadError(f"{src}: cannot tell the native resolution; pass resolution=")
    fingerprint = ""
    if subfolder_root is not None:
        ae_dir = subfolder_root / component if component else subfolder_root
        fingerprint = content_fingerprint(
            [p for p in ae_dir.iterdir() if p.suffix in (".json", ".safetensors", ".bin")], ae_dir)
    else:
        fingerprint = hashlib.sha256(f"hub:{src}:{json.dumps(ae_config, sort_keys=True)}".encode()).hexdigest()[:16]
    ae = Autoencoder(model=model, kind=SUPPORTED_CLASSES[class_name], name=name or default_name,
                     resolution=int(resolution), fingerprint=fingerprint, clamp=clamp)
    return ae.to(device, dtype)
