"""Shared fixtures: tiny random-init autoencoders built from config dicts (diffusers-style), no downloads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest_plugins = ["pytester"]  # tests/test_test_tiers.py runs pytest on throwaway files

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: extra threads only spin; run files in parallel with -n 2 instead

_TRUE = {"1", "true", "yes", "on"}


def run_slow_requested() -> bool:
    """``RUN_SLOW=1`` (or true/yes/on) in the environment asks for the slow tier too."""
    return os.environ.get("RUN_SLOW", "").strip().lower() in _TRUE


def pytest_configure(config):
    """``RUN_SLOW=1 pytest`` runs the slow tier as well as the default one.

    ``pyproject.toml`` deselects slow tests with ``addopts = "-m 'not slow'"``. With ``RUN_SLOW`` set, that default
    expression is dropped, so every test runs. An ``-m`` given on the command line always wins.
    """
    args = config.invocation_params.args
    explicit_m = any(a == "-m" or (a.startswith("-m") and not a.startswith("--")) for a in args)
    if run_slow_requested() and not explicit_m and config.option.markexpr == "not slow":
        config.option.markexpr = ""

def _tiny_configs() -> dict[str, dict]:
    """diffusers class -> constructor arguments of a tiny instance (from each diffusers family's ``tiny_config``)."""
    from latenttracer.autoencoders._diffusers import diffusers_classes

    return {name: family.tiny_config for name, family in diffusers_classes().items()}


TINY_CONFIGS = _tiny_configs()


def make_autoencoder(class_name: str, seed: int):
    import diffusers

    torch.manual_seed(seed)
    return getattr(diffusers, class_name)(**TINY_CONFIGS[class_name]).eval()


def save_png(x: torch.Tensor, path: Path) -> Path:
    """(3, H, W) in [0, 1] -> 8-bit RGB PNG."""
    arr = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def decoded_images(ae, n: int, seed: int) -> torch.Tensor:
    """Images the autoencoder's decoder makes from random latents (what a generator built on it outputs)."""
    from latenttracer.autoencoders import Autoencoder

    wrapped = ae if isinstance(ae, Autoencoder) else diffusers_family(ae)(ae, name="x", resolution=32)
    probe = wrapped.encode(torch.zeros(1, 3, 32, 32))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *probe.shape[1:]), generator=g) * 0.5
    with torch.no_grad():
        return wrapped.decode(z)


def diffusers_family(module):
    """The registered family that wraps a diffusers autoencoder module of this class."""
    from latenttracer.autoencoders._diffusers import diffusers_classes

    return diffusers_classes()[type(module).__name__]


def natural_crops(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Crops of a photograph shipped with scikit-image (no download)."""
    from skimage import data

    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    g = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        i, j = g.integers(0, photo.shape[1] - size, 2)
        out.append(photo[:, i:i + size, j:j + size])
    return torch.stack(out)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Each tiny autoencoder (and a sibling with other weights) saved as a bare save_pretrained dir."""
    root = tmp_path_factory.mktemp("tiny_aes")
    out = {}
    for name in TINY_CONFIGS:
        for seed in (0, 1):
            d = root / f"{name}-{seed}"
            make_autoencoder(name, seed).save_pretrained(d)
            out[f"{name}-{seed}"] = d
    return out
