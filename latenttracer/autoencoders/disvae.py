"""The ``disvae`` family: small convolutional VAEs with a 10-dimensional **vector** latent and an N(0, I) prior.

Written for the eight CelebA VAEs shipped in ``models/disvae-celeba/`` (MIT; trained by a third party with one
architecture and eight objectives: VAE, beta-VAE (two forms), FactorVAE, beta-TCVAE (four forms); see that
folder's README and ``docs/real_models.md``). The architecture is written here from its description in words
(convolutional encoder of Burgess et al. 2018):

* encoder: stride-2 4x4 convolutions with 32 channels and ReLU (``conv1`` from RGB, ``conv2``, ``conv3``, and
  ``conv_64`` at 64 px) down to 4x4 px; flatten (channel-major, 512); ``lin1`` 512->256, ReLU; ``lin2`` 256->256,
  ReLU; ``mu_logvar_gen`` 256->2L, read as L interleaved (mean, log-variance) pairs;
* decoder: ``lin1`` L->256, ``lin2`` 256->256, ``lin3`` 256->512 (each with ReLU), reshape to 32x4x4, then
  stride-2 4x4 transposed convolutions (``convT_64`` at 64 px, ``convT1``, ``convT2`` with ReLU, ``convT3`` to
  RGB) and a sigmoid: images in [0, 1].

A source is a folder holding ``specs.json`` (``model_type: "Burgess"``, ``img_size: [3, S, S]`` with S 32 or 64,
``latent_dim``) and ``model.pt`` (the state dict, keys ``encoder.*`` / ``decoder.*``), read with
``torch.load(..., weights_only=True)`` and loaded with ``strict=True``; every mismatch (missing or unexpected keys,
wrong shapes, a truncated file) is an :class:`AutoencoderLoadError` naming the file.

Conventions:

* the latent is a vector, shape (B, L): ``encode`` gives the encoder **mean**; ``decode`` the sigmoid image;
* ``reconstruct`` (AEDR, AEROBLADE): one pass in [-1, 1]; with ``generators`` the latent is the encoder's
  stochastic sample ``mu + exp(logvar / 2) * eps``, ``eps`` drawn from the image's generator (so AEDR's second
  pass draws anew from the same generator), else the mean;
* the architecture fixes the side: ``resolution`` is ``img_size`` (64 for the shipped models); another value is
  an :class:`AutoencoderLoadError`;
* the prior: :attr:`latent_shape` ``(L,)`` and :meth:`sample_prior` (z ~ N(0, I) from one generator per image),
  which ``data_gen.generate``'s ``prior`` pipeline decodes into a model's generated set;
* the fingerprint covers ``model.pt`` and ``specs.json`` (by content and relative path).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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

__all__ = ["DisVAE", "DisVAENet", "SIDES", "save_random_weights"]

SPECS, WEIGHTS = "specs.json", "model.pt"
MODEL_TYPE = "Burgess"
WIDTH = 32          # channels of every convolution (and of the decoder's full-resolution activations)
HIDDEN = 256        # width of the fully connected layers
SIDES = (32, 64)    # image sides the architecture takes: 64 adds conv_64 / convT_64


class _Encoder(nn.Module):
    def __init__(self, side: int, latent_dim: int) -> None:
        super().__init__()
        self.side, self.latent_dim = side, latent_dim
        self.conv1 = nn.Conv2d(3, WIDTH, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(WIDTH, WIDTH, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(WIDTH, WIDTH, 4, stride=2, padding=1)
        if side == 64:
            self.conv_64 = nn.Conv2d(WIDTH, WIDTH, 4, stride=2, padding=1)
        self.lin1 = nn.Linear(WIDTH * 4 * 4, HIDDEN)
        self.lin2 = nn.Linear(HIDDEN, HIDDEN)
        self.mu_logvar_gen = nn.Linear(HIDDEN, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [0, 1] -> (mean, log-variance), each (B, L)."""
        h = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        if self.side == 64:
            h = torch.relu(self.conv_64(h))
        h = torch.relu(self.lin2(torch.relu(self.lin1(h.flatten(1)))))
        pairs = self.mu_logvar_gen(h).view(-1, self.latent_dim, 2)
        return pairs[..., 0], pairs[..., 1]


class _Decoder(nn.Module):
    def __init__(self, side: int, latent_dim: int) -> None:
        super().__init__()
        self.side = side
        self.lin1 = nn.Linear(latent_dim, HIDDEN)
        self.lin2 = nn.Linear(HIDDEN, HIDDEN)
        self.lin3 = nn.Linear(HIDDEN, WIDTH * 4 * 4)
        if side == 64:
            self.convT_64 = nn.ConvTranspose2d(WIDTH, WIDTH, 4, stride=2, padding=1)
        self.convT1 = nn.ConvTranspose2d(WIDTH, WIDTH, 4, stride=2, padding=1)
        self.convT2 = nn.ConvTranspose2d(WIDTH, WIDTH, 4, stride=2, padding=1)
        self.convT3 = nn.ConvTranspose2d(WIDTH, 3, 4, stride=2, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, L) -> images in [0, 1] (sigmoid)."""
        h = torch.relu(self.lin3(torch.relu(self.lin2(torch.relu(self.lin1(z))))))
        h = h.view(-1, WIDTH, 4, 4)
        if self.side == 64:
            h = torch.relu(self.convT_64(h))
        h = torch.relu(self.convT2(torch.relu(self.convT1(h))))
        return torch.sigmoid(self.convT3(h))


class DisVAENet(nn.Module):
    """Encoder and decoder; the state dict is the published ``model.pt``."""

    def __init__(self, side: int = 64, latent_dim: int = 10) -> None:
        super().__init__()
        if side not in SIDES:
            raise ValueError(f"side {side} is not one of {SIDES}")
        self.side, self.latent_dim = side, latent_dim
        self.encoder = _Encoder(side, latent_dim)
        self.decoder = _Decoder(side, latent_dim)


def save_random_weights(folder: str | Path, seed: int = 0, *, side: int = 64, latent_dim: int = 10) -> Path:
    """Write a random-init model (PyTorch's default init, seeded) as ``specs.json`` + ``model.pt``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(DisVAENet(side, latent_dim).state_dict(), folder / WEIGHTS)
    (folder / SPECS).write_text(json.dumps({"model_type": MODEL_TYPE, "img_size": [3, side, side],
                                            "latent_dim": latent_dim, "note": "random init"}, indent=1))
    return folder


def _read_specs(path: Path) -> tuple[int, int]:
    """(side, latent_dim) from ``specs.json``; every problem an error naming the file and key."""
    specs = read_json_object(path, "specification")
    if specs.get("model_type") != MODEL_TYPE:
        raise AutoencoderLoadError(f"{path}: model_type is {specs.get('model_type')!r}; this family loads "
                                   f"{MODEL_TYPE!r} only")
    size = specs.get("img_size")
    if not (isinstance(size, list) and len(size) == 3 and size[0] == 3 and size[1] == size[2]
            and size[1] in SIDES):
        raise AutoencoderLoadError(f"{path}: img_size {size!r} must be [3, S, S] with S one of {list(SIDES)}")
    dim = specs.get("latent_dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise AutoencoderLoadError(f"{path}: latent_dim {dim!r} must be a positive integer")
    return int(size[1]), dim


def _load_state(path: Path, net: DisVAENet) -> None:
    if not path.is_file():
        raise AutoencoderLoadError(f"{path}: missing; a disvae folder holds {SPECS} and {WEIGHTS}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or a pickle weights_only refuses
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise AutoencoderLoadError(f"{path}: not a readable PyTorch state dict ({type(err).__name__}: "
                                   f"{first})") from err
    if not isinstance(state, Mapping):
        raise AutoencoderLoadError(f"{path}: not a state dict (a mapping of names to tensors); found "
                                   f"{type(state).__name__}")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:  # missing / unexpected keys, wrong shapes
        raise AutoencoderLoadError(f"{path}: not a {net.side} px, {net.latent_dim}-latent disvae state dict: "
                                   f"{' '.join(str(err).split())[:600]}") from err


@FAMILIES.register
class DisVAE(Autoencoder):
    """A disvae VAE (see the module docstring): vector latent, N(0, I) prior, fixed image side."""

    family = "disvae"
    looks_for = (f"a folder with {SPECS} (model_type {MODEL_TYPE!r}, img_size [3, S, S] with S 32 or 64, "
                 f"latent_dim) and {WEIGHTS}")

    def __init__(self, model: DisVAENet, *, name: str, resolution: int, fingerprint: str = "",
                 clamp: bool = True) -> None:
        super().__init__(model, name=name, resolution=resolution, fingerprint=fingerprint, clamp=clamp)

    @classmethod
    def can_load(cls, source: str, *, local_files_only: bool | None = None) -> bool:
        specs = Path(source).expanduser() / SPECS
        if not specs.is_file():
            return False
        try:
            return json.loads(specs.read_text()).get("model_type") == MODEL_TYPE
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return False

    @classmethod
    def why_not(cls, source: str, *, local_files_only: bool | None = None) -> str:
        return cls.folder_why_not(source, lambda folder: f"{SPECS} is not a {MODEL_TYPE!r} model's"
                                  if (folder / SPECS).is_file() else f"no {SPECS}")

    @classmethod
    def load(cls, source: str, *, name: str | None = None, resolution: int | None = None, clamp: bool = True,
             local_files_only: bool | None = None) -> DisVAE:
        folder = cls.local_folder(source)
        side, latent_dim = _read_specs(folder / SPECS)
        if resolution is not None and int(resolution) != side:
            raise AutoencoderLoadError(f"{folder}: resolution {resolution!r} is not this model's; its architecture "
                                       f"takes {side} px images only ({SPECS} img_size)")
        net = DisVAENet(side, latent_dim)
        _load_state(folder / WEIGHTS, net)
        return cls(net, name=name or folder.name, resolution=side,
                   fingerprint=content_fingerprint([folder / SPECS, folder / WEIGHTS], folder), clamp=clamp)

    @classmethod
    def tiny_for_tests(cls, folder: Path, seed: int = 0) -> str:
        """A random-init model at 32 px (the contract tests' side; three convolutions each way)."""
        return str(save_random_weights(folder, seed, side=32))

    @property
    def decoder_width(self) -> int:
        return WIDTH

    # -- the prior ----------------------------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.model.latent_dim,)

    def sample_prior(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One latent per generator, z ~ N(0, I) drawn on the CPU in float32: (len(generators), L)."""
        z = [torch.randn(self.latent_shape, generator=g, dtype=torch.float32) for g in generators]
        return torch.stack(z).to(self.device, self.dtype)

    # -- the maps -------------------------------------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        side = self.model.side
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, side, side):
            raise ValueError(f"{self.name}: expected images (B, 3, {side}, {side}), got {tuple(x.shape)}")

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check(images)
        mean, _ = self.model.encoder(images.to(self.device, self.dtype))
        return mean

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 2 or latents.shape[1] != self.model.latent_dim:
            raise ValueError(f"{self.name}: expected latents (B, {self.model.latent_dim}), got "
                             f"{tuple(latents.shape)}")
        out = self.model.decoder(latents)
        return out.clamp(0, 1) if self.clamp else out

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *, generators: Sequence[torch.Generator] | None = None,
                    quantize: bool = True) -> torch.Tensor:
        """[-1, 1] in and out; the encoder's sample with ``generators`` (one per image), else its mean."""
        if generators is not None and len(generators) != x.shape[0]:
            raise ValueError(f"generators: {len(generators)} given for {x.shape[0]} images")
        self._check(x)
        mean, logvar = self.model.encoder((x.to(self.device, self.dtype) + 1) / 2)
        z = mean
        if generators is not None:
            eps = torch.stack([torch.randn(mean.shape[1:], generator=g, dtype=torch.float32) for g in generators])
            z = mean + torch.exp(0.5 * logvar) * eps.to(mean.device, mean.dtype)
        return self.model.decoder(z) * 2 - 1
