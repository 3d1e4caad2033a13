"""What the three diffusers families share: finding the autoencoder in a source, loading it, its fingerprint.

A source is a diffusers pipeline directory or hub id (its autoencoder component is loaded, never the whole
pipeline; the component's slot name does not matter: ``vae``, ``vqvae``, ``movq`` or any other), or a directory
or hub id holding one bare autoencoder saved with ``save_pretrained``. Which family loads it follows the
component's class (``AutoencoderKL``, ``VQModel``, ``AutoencoderTiny``): the subclasses of
:class:`DiffusersAutoencoder` in ``diffusers_kl.py``, ``diffusers_vq.py`` and ``diffusers_tiny.py``.

The fingerprint covers every ``.json``, ``.safetensors`` and ``.bin`` file of the component's folder (paths
relative to it, bytes), so it does not change when the folder moves; for a hub id it covers the id and the
component's config.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from latenttracer.autoencoders.base import FAMILIES, Autoencoder, AutoencoderLoadError, content_fingerprint

#: What the KL and VQ families' ``tiny_config`` share (the two are built from the same encoder and decoder blocks): a
#: 32 px autoencoder with 4 latent channels, two blocks of 8 and 16 channels, one layer each, no attention.
TINY_CONV_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=32, norm_num_groups=4, layers_per_block=1,
    block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2, mid_block_add_attention=False,
)

PREFERRED_SLOTS = ("vae", "vqvae", "movq")  # looked at first; any other slot holding a supported class is found too
FINGERPRINTED_SUFFIXES = (".json", ".safetensors", ".bin")


def diffusers_classes() -> dict[str, type[DiffusersAutoencoder]]:
    """diffusers class name -> the registered family that loads it."""
    return {fam.model_class: fam for _, fam in FAMILIES.items()
            if isinstance(fam, type) and issubclass(fam, DiffusersAutoencoder)}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AutoencoderLoadError(f"{path}: cannot read JSON ({err})") from err


@dataclass(frozen=True)
class Found:
    """Where a source's autoencoder is: its class, slot (None for a bare autoencoder) and config."""

    source: str
    class_name: str
    component: str | None
    ae_config: dict
    root: Path | None  # the local directory, None for a hub id
    default_name: str
    read: Callable[[str], dict | None]


def find(source: str, local_files_only: bool | None = None) -> Found:
    """Locate the autoencoder of ``source``; an :class:`AutoencoderLoadError` says what was found instead."""
    local = Path(source).expanduser()
    if local.is_dir():
        return _find(source, local_files_only)
    found = _find_remote(source, local_files_only)
    if isinstance(found, AutoencoderLoadError):
        raise found
    return found


@functools.lru_cache(maxsize=32)
def _find_remote(source: str, local_files_only: bool | None) -> Found | AutoencoderLoadError:
    """Hub lookups (and their failures) once per process: every diffusers family asks about the same source."""
    try:
        return _find(source, local_files_only)
    except AutoencoderLoadError as err:
        return err


def _find(src: str, local_files_only: bool | None) -> Found:
    classes = diffusers_classes()
    names = "/".join(classes)
    local = Path(src).expanduser()
    if local.is_dir():
        root: Path | None = local.resolve()

        def read(rel: str) -> dict | None:
            p = root / rel
            return _read_json(p) if p.is_file() else None

        default_name = root.name
        index = read("model_index.json")
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

        index = read("model_index.json")
        if index is None and read("config.json") is None:
            first = errors.get("model_index.json", "")
            raise AutoencoderLoadError(
                f"{src}: not a local directory, and the hub lookup failed ({first[:300]}). "
                "Pass a local directory holding the pipeline (or its autoencoder) instead.")

    if index is not None:
        found = {k: v for k, v in index.items() if not k.startswith("_")}
        slots = [s for s in PREFERRED_SLOTS if s in found] + [s for s in found if s not in PREFERRED_SLOTS]
        for slot in slots:
            spec = found[slot]
            if isinstance(spec, (list, tuple)) and len(spec) == 2 and spec[1] in classes:
                return Found(src, spec[1], slot, read(f"{slot}/config.json") or {}, root, default_name, read)
        listed = ", ".join(f"{k}={v[1] if isinstance(v, (list, tuple)) and len(v) == 2 else v}"
                           for k, v in found.items()) or "nothing"
        raise AutoencoderLoadError(
            f"{src}: pipeline {index.get('_class_name', '?')} has no supported autoencoder component "
            f"(looked for a component of class {names}); found: {listed}")
    ae_config = read("config.json") or {}
    class_name = ae_config.get("_class_name")
    if class_name not in classes:
        what = (f"a config.json of class {class_name!r}" if class_name else
                "no model_index.json and no config.json" if root is None or not (root / "config.json").exists()
                else "a config.json without _class_name")
        files = sorted(p.name for p in root.iterdir())[:12] if root is not None else []
        raise AutoencoderLoadError(
            f"{src}: expected a diffusers pipeline (model_index.json) or a bare autoencoder "
            f"({names}); found {what}" + (f" (files: {files})" if files else ""))
    return Found(src, class_name, None, ae_config, root, default_name, read)


def _ae_downsampling(ae_config: dict) -> int:
    if "encoder_block_out_channels" in ae_config:  # AutoencoderTiny: first encoder block keeps the size
        return 2 ** (len(ae_config["encoder_block_out_channels"]) - 1)
    if "block_out_channels" in ae_config:
        return 2 ** (len(ae_config["block_out_channels"]) - 1)
    return 8


def _native_resolution(found: Found) -> int | None:
    """The resolution the model generates at: prior sample size x the autoencoder's downsampling factor."""
    factor = _ae_downsampling(found.ae_config)
    if found.component is not None:
        for sub, key in (("unet", "sample_size"), ("transformer", "sample_size"), ("transformer", "height")):
            cfg = found.read(f"{sub}/config.json")
            if cfg and isinstance(cfg.get(key), int):
                return int(cfg[key]) * factor
    size = found.ae_config.get("sample_size")
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) if isinstance(size, int) else None


def _fingerprint(found: Found) -> str:
    if found.root is not None:
        ae_dir = found.root / found.component if found.component else found.root
        return content_fingerprint([p for p in ae_dir.iterdir() if p.suffix in FINGERPRINTED_SUFFIXES], ae_dir)
    blob = f"hub:{found.source}:{json.dumps(found.ae_config, sort_keys=True)}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def module_decoder_width(model: Any) -> int:
    """Channels of a diffusers autoencoder's full-resolution decoder block, from its config (128 if unknown)."""
    cfg = getattr(model, "config", None)
    tiny = getattr(cfg, "decoder_block_out_channels", None)
    if tiny:
        return int(tiny[-1])
    blocks = getattr(cfg, "block_out_channels", None)
    return int(blocks[0]) if blocks else 128


class DiffusersAutoencoder(Autoencoder):
    """A diffusers autoencoder module; subclasses set :attr:`model_class` and the three maps."""

    model_class: ClassVar[str] = ""
    """The diffusers class this family loads (e.g. ``"AutoencoderKL"``)."""
    tiny_config: ClassVar[dict[str, Any]] = {}
    """Constructor arguments of a small random-init instance (tests build theirs from it)."""

    def __init__(self, model: torch.nn.Module, *, name: str, resolution: int, fingerprint: str = "",
                 clamp: bool = True) -> None:
        super().__init__(model, name=name, resolution=resolution, fingerprint=fingerprint, clamp=clamp)
        cfg = self.model.config
        self.scaling_factor = float(getattr(cfg, "scaling_factor", 1.0) or 1.0)
        self.shift_factor = float(getattr(cfg, "shift_factor", 0.0) or 0.0)

    @classmethod
    def can_load(cls, source: str, *, local_files_only: bool | None = None) -> bool:
        try:
            return find(source, local_files_only).class_name == cls.model_class
        except AutoencoderLoadError:
            return False

    @classmethod
    def why_not(cls, source: str, *, local_files_only: bool | None = None) -> str:
        try:
            found = find(source, local_files_only)
        except AutoencoderLoadError as err:
            return str(err)
        return f"holds a {found.class_name}, not a {cls.model_class}"

    @classmethod
    def load(cls, source: str, *, name: str | None = None, resolution: int | None = None, clamp: bool = True,
             local_files_only: bool | None = None) -> DiffusersAutoencoder:
        import diffusers

        found = find(source, local_files_only)
        if found.class_name != cls.model_class:
            raise AutoencoderLoadError(f"{source}: holds a {found.class_name}, not a {cls.model_class}")
        load_from = str(found.root) if found.root is not None else source
        kwargs: dict[str, Any] = {"subfolder": found.component} if found.component else {}
        if found.root is None and local_files_only is not None:
            kwargs["local_files_only"] = local_files_only
        try:
            model = getattr(diffusers, cls.model_class).from_pretrained(load_from, **kwargs)
        except Exception as err:
            where = f"{source}/{found.component}" if found.component else source
            raise AutoencoderLoadError(f"{where}: failed to load {cls.model_class}: {type(err).__name__}: {err}") \
                from err
        if resolution is None:
            resolution = _native_resolution(found)
        if resolution is None:
            raise AutoencoderLoadError(f"{source}: cannot tell the native resolution; pass resolution=")
        return cls(model, name=name or found.default_name, resolution=int(resolution),
                   fingerprint=_fingerprint(found), clamp=clamp)

    @classmethod
    def tiny_for_tests(cls, folder: Path, seed: int = 0) -> str:
        import diffusers

        torch.manual_seed(seed)
        getattr(diffusers, cls.model_class)(**cls.tiny_config).save_pretrained(folder)
        return str(folder)

    @property
    def decoder_width(self) -> int:
        return module_decoder_width(self.model)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        out = self._decode_raw(latents)
        out = out / 2 + 0.5
        return out.clamp(0, 1) if self.clamp else out

    def _decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent -> the decoder's [-1, 1] output, undoing scaling and shift."""
        return self.model.decode(latents / self.scaling_factor + self.shift_factor).sample
