"""The ``taesd`` family: TAESD-style tiny autoencoders loaded from their published ``.pth`` state dicts.

TAESD (Ollin Boer Bohan, MIT licence) distils a latent diffusion model's VAE into a small convolutional
encoder and decoder sharing the big VAE's latent space. Five published variants share one layout:

========  =================  ===============  ==============================================
variant   latent channels    pool branches    latent space of
========  =================  ===============  ==============================================
taesd     4                  no               Stable Diffusion 1.x / 2.x
taesdxl   4                  no               SDXL
taesd3    16                 no               Stable Diffusion 3
taef1     16                 no               FLUX.1
taef2     32                 yes              FLUX.2 (shipped in ``models/taef2/``)
========  =================  ===============  ==============================================

A source is a folder holding ``<variant>_encoder.pth`` and ``<variant>_decoder.pth`` (e.g.
``taef2_encoder.pth``), and optionally a ``card.json`` (``{"family": "taesd", "variant": "taef2",
"resolution": 64, ...}``). The variant comes from the card, else from the file names (a folder holding files
of two variants needs a card). Files are read with ``torch.load(..., weights_only=True)`` and checked key by
key and shape by shape before use: a file that is not one of these state dicts (wrong keys or shapes, not a
state dict, truncated) is an :class:`AutoencoderLoadError` naming the file and what is wrong. A diffusers
``AutoencoderTiny`` folder or hub id is the ``diffusers-tiny`` family's.

Conventions (those of the published models): images in **[0, 1]** go into the encoder as they are (no
``* 2 - 1``); latents are used **raw** (no scaling or shift); the decoder's first step soft-clamps the latent
(``tanh(z / 3) * 3``) and its output is clamped to [0, 1] by :meth:`TAESD.decode` (unless ``clamp=False``).
Latents have the variant's channels at 1/8 of the image side; image sides must be multiples of 8.

Resolution: no TAESD model has a native one. Images are resized to ``resolution=`` if given, else to the
card's ``resolution``, else to :data:`DEFAULT_RESOLUTION` (64).

Determinism, and what AEDR's sampled latent becomes: the encoder is a plain convolutional net with no
posterior, so :meth:`TAESD.reconstruct` ignores ``generators``: AEDR's two "sampled" latents (one per
reconstruction pass) are both the deterministic latent ``E(x)``; its score is then the ratio of two
deterministic reconstruction errors, and repeating it gives the same value. ``quantize`` is ignored too
(no quantiser). See ``docs/taesd.md``.

The fingerprint covers both weight files and the card (the files this family reads), by content and path
relative to the folder, so a moved folder keeps its caches.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from latenttracer.autoencoders.base import (
    FAMILIES,
    Autoencoder,
    AutoencoderLoadError,
    content_fingerprint,
    read_json_object,
)

__all__ = ["DEFAULT_RESOLUTION", "TAESD", "VARIANTS", "TAESDNet", "build_decoder", "build_encoder",
           "save_random_weights"]

WIDTH = 64  # channels of every convolution between the image/latent ends
POOL_WIDTH = 256  # hidden channels of a pool branch
POOL_GROUPS = 4
DOWNSAMPLING = 8
DEFAULT_RESOLUTION = 64
CARD = "card.json"
PARTS = ("encoder", "decoder")


@dataclass(frozen=True)
class Variant:
    name: str
    latent_channels: int
    pool: bool  # the deepest blocks (encoder 11-13, decoder 3-5) have a pool branch

    def file(self, part: str) -> str:
        return f"{self.name}_{part}.pth"


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("taesd", 4, False), Variant("taesdxl", 4, False), Variant("taesd3", 16, False),
    Variant("taef1", 16, False), Variant("taef2", 32, True))}


# -- the architecture (written from the published state-dict layout) -------------------------------------------
def _conv(cin: int, cout: int, *, bias: bool = True, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class _SoftClamp(nn.Module):
    """``tanh(z / 3) * 3``: keeps latents within (-3, 3) smoothly (the decoder's first module, no weights)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z / 3) * 3


class _Block(nn.Module):
    """Residual block at constant width: ``x = x + pool(x)`` (if it has one), then ``relu(conv(x) + x)``."""

    def __init__(self, pool: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(WIDTH, WIDTH), nn.ReLU(), _conv(WIDTH, WIDTH), nn.ReLU(),
                                  _conv(WIDTH, WIDTH))
        self.pool = nn.Sequential(
            nn.Conv2d(WIDTH, POOL_WIDTH, 1, bias=False), nn.GroupNorm(POOL_GROUPS, POOL_WIDTH), nn.ReLU(),
            nn.Conv2d(POOL_WIDTH, WIDTH, 1, bias=False)) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return torch.relu(self.conv(x) + x)


def build_encoder(variant: Variant) -> nn.Sequential:
    """Image (3 channels, [0, 1]) -> latent (``variant.latent_channels``, 1/8 side); indices as published."""
    layers: list[nn.Module] = [_conv(3, WIDTH), _Block()]
    for stage in range(3):
        layers.append(_conv(WIDTH, WIDTH, bias=False, stride=2))
        layers.extend(_Block(pool=variant.pool and stage == 2) for _ in range(3))
    layers.append(_conv(WIDTH, variant.latent_channels))
    return nn.Sequential(*layers)


def build_decoder(variant: Variant) -> nn.Sequential:
    """Latent -> image (3 channels, about [0, 1], not clamped); indices as published."""
    layers: list[nn.Module] = [_SoftClamp(), _conv(variant.latent_channels, WIDTH), nn.ReLU()]
    layers.extend(_Block(pool=variant.pool) for _ in range(3))
    for blocks in (3, 3, 1):
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(WIDTH, WIDTH, bias=False)]
        layers.extend(_Block() for _ in range(blocks))
    layers.append(_conv(WIDTH, 3))
    return nn.Sequential(*layers)


class TAESDNet(nn.Module):
    """Encoder and decoder of one variant (their state dicts are the two published files)."""

    decoder_width = WIDTH

    def __init__(self, variant: Variant) -> None:
        super().__init__()
        self.variant = variant
        self.encoder = build_encoder(variant)
        self.decoder = build_decoder(variant)


def save_random_weights(folder: str | Path, variant: str, seed: int = 0, *, card: bool = True,
                        resolution: int = DEFAULT_RESOLUTION) -> Path:
    """Write a random-init ``variant`` (PyTorch's default init, seeded) to ``folder`` as the published files,
    with a card giving ``resolution`` when ``card``; for tests and examples. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = TAESDNet(VARIANTS[variant])
    torch.save(net.encoder.state_dict(), folder / net.variant.file("encoder"))
    torch.save(net.decoder.state_dict(), folder / net.variant.file("decoder"))
    if card:
        (folder / CARD).write_text(json.dumps({"family": "taesd", "variant": variant,
                                               "resolution": resolution, "note": "random init"}))
    return folder


# -- reading a folder --------------------------------------------------------------------------------------------
def _read_card(folder: Path) -> dict | None:
    path = folder / CARD
    if not path.is_file():
        return None
    return read_json_object(path, "card")


def _present_variants(folder: Path) -> list[str]:
    return [v.name for v in VARIANTS.values() if any((folder / v.file(p)).is_file() for p in PARTS)]


def _layout_of(state: Mapping[str, torch.Tensor]) -> str:
    """A hint for a mismatched file: the published layout its keys and shapes match, if any."""
    for v in VARIANTS.values():
        for part, build in (("encoder", build_encoder), ("decoder", build_decoder)):
            expected = build(v).state_dict()
            if expected.keys() == state.keys() and all(expected[k].shape == state[k].shape for k in expected):
                return f"; it has the layout of a {v.name} {part}"
    return ""


def _load_part(path: Path, module: nn.Module, variant: Variant, part: str) -> None:
    """Read one published file into ``module``; every mismatch is an error naming the file."""
    if not path.is_file():
        raise AutoencoderLoadError(f"{path}: missing; a {variant.name} folder holds {variant.file('encoder')} "
                                   f"and {variant.file('decoder')}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or a pickle weights_only refuses
        raise AutoencoderLoadError(f"{path}: not a readable PyTorch state dict ({type(err).__name__}: "
                                   f"{str(err).splitlines()[0][:200] if str(err) else ''})") from err
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                 for k, t in state.items()):
        raise AutoencoderLoadError(f"{path}: not a state dict (a mapping of names to tensors); found "
                                   f"{type(state).__name__}")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(t.shape)})" for k, t in expected.items()
             if k in state and state[k].shape != t.shape]
    if missing or unexpected or wrong:
        parts = [f"{label} {len(items)}: {', '.join(items[:4])}{', ...' if len(items) > 4 else ''}"
                 for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                      ("wrong shapes", wrong)) if items]
        raise AutoencoderLoadError(f"{path}: not a {variant.name} {part} state dict: {'; '.join(parts)}"
                                   f"{_layout_of(state)}")
    if not all(t.is_floating_point() for t in state.values()):
        raise AutoencoderLoadError(f"{path}: holds non-floating-point tensors; not a {variant.name} {part}")
    module.load_state_dict(state)


@FAMILIES.register
class TAESD(Autoencoder):
    """A TAESD-family autoencoder (see the module docstring for conventions and files)."""

    family = "taesd"
    looks_for = ("a folder with <variant>_encoder.pth and <variant>_decoder.pth, variant one of "
                 f"{'/'.join(VARIANTS)} (optionally a card.json with family 'taesd')")

    def __init__(self, model: TAESDNet, *, name: str, resolution: int, fingerprint: str = "",
                 clamp: bool = True) -> None:
        super().__init__(model, name=name, resolution=resolution, fingerprint=fingerprint, clamp=clamp)
        self.variant = model.variant

    @classmethod
    def can_load(cls, source: str, *, local_files_only: bool | None = None) -> bool:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            return False
        if _present_variants(folder):
            return True
        try:
            card = _read_card(folder)
        except AutoencoderLoadError:
            return False
        return card is not None and card.get("family") == cls.family

    @classmethod
    def why_not(cls, source: str, *, local_files_only: bool | None = None) -> str:
        return cls.folder_why_not(source, lambda _folder: "no such .pth files")

    @classmethod
    def load(cls, source: str, *, name: str | None = None, resolution: int | None = None, clamp: bool = True,
             local_files_only: bool | None = None) -> TAESD:
        folder = cls.local_folder(source)
        card = _read_card(folder) or {}
        if card.get("family", cls.family) != cls.family:
            raise AutoencoderLoadError(f"{folder / CARD}: family is {card['family']!r}, not {cls.family!r}")
        present = _present_variants(folder)
        if "variant" in card:
            if card["variant"] not in VARIANTS:
                raise AutoencoderLoadError(f"{folder / CARD}: variant {card['variant']!r} is not one of "
                                           f"{list(VARIANTS)}")
            variant = VARIANTS[card["variant"]]
        elif len(present) == 1:
            variant = VARIANTS[present[0]]
        elif not present:
            raise AutoencoderLoadError(f"{folder}: no TAESD weight files; expected {cls.looks_for}")
        else:
            raise AutoencoderLoadError(f"{folder}: holds files of several variants ({', '.join(present)}); say "
                                       f"which one in {CARD} ('variant')")
        if resolution is None:
            resolution = card.get("resolution", DEFAULT_RESOLUTION)
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < DOWNSAMPLING \
                or resolution % DOWNSAMPLING:
            raise AutoencoderLoadError(f"{folder}: resolution {resolution!r} must be a positive multiple of "
                                       f"{DOWNSAMPLING}")
        net = TAESDNet(variant)
        files = [folder / variant.file(p) for p in PARTS]
        for path, part in zip(files, PARTS):
            _load_part(path, getattr(net, part), variant, part)
        read = files + ([folder / CARD] if (folder / CARD).is_file() else [])
        return cls(net, name=name or folder.name, resolution=resolution,
                   fingerprint=content_fingerprint(read, folder), clamp=clamp)

    @classmethod
    def tiny_for_tests(cls, folder: Path, seed: int = 0) -> str:
        """A random-init taef2 (the variant with every kind of layer) with a card at 32 px."""
        return str(save_random_weights(folder, "taef2", seed, resolution=32))

    @property
    def decoder_width(self) -> int:
        return WIDTH

    def _check_side(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] % DOWNSAMPLING or x.shape[-2] % DOWNSAMPLING:
            raise ValueError(f"{self.name}: expected images (B, 3, H, W) with H and W multiples of {DOWNSAMPLING}, "
                             f"got {tuple(x.shape)}")

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check_side(images)
        return self.model.encoder(images.to(self.device, self.dtype))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        out = self.model.decoder(latents)
        return out.clamp(0, 1) if self.clamp else out

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *, generators: Sequence[torch.Generator] | None = None,
                    quantize: bool = True) -> torch.Tensor:
        """[-1, 1] in and out, not clamped; ``generators`` and ``quantize`` are ignored (deterministic, no
        quantiser): AEDR's two sampled latents are both ``E(x)``."""
        if generators is not None and len(generators) != x.shape[0]:
            raise ValueError(f"generators: {len(generators)} given for {x.shape[0]} images")
        self._check_side(x)
        x01 = (x.to(self.device, self.dtype) + 1) / 2
        return self.model.decoder(self.model.encoder(x01)) * 2 - 1
