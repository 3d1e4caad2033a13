"""Running ``latenttracer trace`` in-process on folders of tiny images (shared by the CLI tests).

    from helpers.cli import FAST, run_trace, folders  # noqa: F401  (folders is a fixture)
"""

from __future__ import annotations

import pytest
from conftest import decoded_images, natural_crops, save_png

from latenttracer.autoencoders import load_autoencoder
from latenttracer.cli import main

FAST = ["--steps", "20", "--batch-size", "4", "--quiet"]
"""Flags that keep a trace short: 20 steps, batches of 4, no progress bar."""


def run_trace(*args) -> int:
    """``latenttracer trace ARGS`` in this process; returns its exit code."""
    return main(["trace", *map(str, args)])


@pytest.fixture()
def folders(tmp_path, tiny_dirs):
    """Folders of 6 PNGs each: ``own`` and ``cal`` decoded by AutoencoderTiny-0, ``other`` by its sibling
    AutoencoderTiny-1, ``real`` natural crops."""
    ae = load_autoencoder(tiny_dirs["AutoencoderTiny-0"], resolution=32)
    sib = load_autoencoder(tiny_dirs["AutoencoderTiny-1"], resolution=32)
    out = {}
    for name, images in {"own": decoded_images(ae, 6, 0), "cal": decoded_images(ae, 6, 1),
                         "other": decoded_images(sib, 6, 0), "real": natural_crops(6)}.items():
        d = tmp_path / name
        d.mkdir()
        for i, x in enumerate(images):
            save_png(x, d / f"{i:03d}.png")
        out[name] = d
    return out
