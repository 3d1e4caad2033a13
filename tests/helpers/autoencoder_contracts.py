"""Contracts every registered autoencoder family passes, checked through its ``tiny_for_tests`` factory.

Each ``check_*`` function takes a family class and a fresh folder; ``tests/test_autoencoders_contracts.py``
runs every check on every family in :data:`latenttracer.autoencoders.FAMILIES` (so a new family, built in or a
plugin named by ``LATENTTRACER_PLUGINS``, is covered without editing a test list), and
``tests/test_extending_autoencoders.py`` runs them on the documented example plugin.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from latenttracer.autoencoders import Autoencoder, AutoencoderLoadError, load_autoencoder

SEED_IMAGES = 1234
RESOLUTION = 32  # tiny instances are loaded at this side (a multiple of 8 and of every family's downsampling)


def _at(source: str | Path, **kwargs) -> Autoencoder:
    return load_autoencoder(source, **{"resolution": RESOLUTION, **kwargs})


def _images(ae: Autoencoder, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED_IMAGES)
    return torch.rand(n, 3, ae.resolution, ae.resolution, generator=g)


def _load(family: type[Autoencoder], folder: Path, seed: int = 0) -> Autoencoder:
    ae = _at(family.tiny_for_tests(folder, seed))
    assert isinstance(ae, family) and ae.family == family.family, (type(ae), family)
    return ae


def check_loads_and_shapes(family: type[Autoencoder], folder: Path) -> None:
    """It says it can load its own instance, loads it, and maps images to a smaller latent and back."""
    source = family.tiny_for_tests(folder / "m", 0)
    assert family.can_load(source), f"{family.family}: can_load is False for its own tiny instance"
    ae = _at(source)
    assert isinstance(ae, family) and len(ae.fingerprint) == 16 and ae.name == Path(source).name
    assert ae.device == torch.device("cpu") and ae.dtype == torch.float32 and ae.decoder_width > 0
    x = _images(ae)
    z = ae.encode(x)
    # a feature map (B, C, h, w) or a vector (B, L): either way smaller than the image
    assert z.ndim >= 2 and z.shape[0] == 3 and z[0].numel() < x[0].numel() and not z.requires_grad
    y = ae.decode(z)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    r = ae.reconstruct(x * 2 - 1)
    assert r.shape == x.shape and torch.isfinite(r).all()
    try:
        other = _at(source, resolution=16, name="other")
    except AutoencoderLoadError as err:  # an architecture that fixes the side refuses another, saying so
        assert "resolution" in str(err), str(err)
    else:
        assert other.resolution == 16
    if ae.has_prior:  # a complete generative model: seeded prior samples decode to images, batch-independent
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        zp = ae.sample_prior(gens)
        assert zp.shape == z.shape
        torch.testing.assert_close(ae.sample_prior([torch.Generator().manual_seed(2)]), zp[2:])
        assert ae.decode(zp).shape == x.shape


def check_decode_differentiable(family: type[Autoencoder], folder: Path) -> None:
    """Gradients reach the latent through ``decode`` (with the clamp off, so no pixel is saturated away);
    the weights stay frozen."""
    ae = _load(family, folder)
    ae.clamp = False
    z = ae.encode(_images(ae)).requires_grad_(True)
    ae.decode(z).square().mean().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in ae.model.parameters())


def check_batch_independence(family: type[Autoencoder], folder: Path) -> None:
    """An image's latent, decode and reconstruction do not depend on the other images of its batch."""
    ae = _load(family, folder)
    x = _images(ae, 4)
    z = ae.encode(x)
    gens = [torch.Generator().manual_seed(7) for _ in range(4)]
    r = ae.reconstruct(x * 2 - 1, generators=gens)
    for i in (0, 3):
        torch.testing.assert_close(ae.encode(x[i:i + 1]), z[i:i + 1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ae.decode(z[i:i + 1]), ae.decode(z)[i:i + 1], rtol=1e-4, atol=1e-5)
        one = ae.reconstruct(x[i:i + 1] * 2 - 1, generators=[torch.Generator().manual_seed(7)])
        torch.testing.assert_close(one, r[i:i + 1], rtol=1e-4, atol=1e-5)


def check_determinism(family: type[Autoencoder], folder: Path) -> None:
    """The same folder loaded twice gives the same maps; same seeds give the same reconstruction."""
    a = _load(family, folder / "a")
    b = _at(folder / "a")
    x = _images(a)
    torch.testing.assert_close(a.encode(x), b.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(a.decode(a.encode(x)), b.decode(a.encode(x)), rtol=0, atol=0)
    first = a.reconstruct(x * 2 - 1, generators=[torch.Generator().manual_seed(i) for i in range(3)])
    again = b.reconstruct(x * 2 - 1, generators=[torch.Generator().manual_seed(i) for i in range(3)])
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    other = _load(family, folder / "other", seed=1)
    assert not torch.equal(other.decode(a.encode(x)), a.decode(a.encode(x))), "seed does not change the weights"


def check_fingerprint(family: type[Autoencoder], folder: Path) -> None:
    """The fingerprint follows every weight file (each one swapped alone for another seed's changes it) and
    not the folder's place (a moved copy keeps it)."""
    a = Path(family.tiny_for_tests(folder / "a", 0))
    b = Path(family.tiny_for_tests(folder / "b", 1))
    base = _at(a).fingerprint
    moved = folder / "elsewhere" / "deeper" / a.name
    shutil.copytree(a, moved)
    assert _at(moved).fingerprint == base
    differing = [f.relative_to(b) for f in sorted(b.rglob("*")) if f.is_file()
                 and (a / f.relative_to(b)).is_file() and (a / f.relative_to(b)).read_bytes() != f.read_bytes()]
    assert differing, f"{family.family}: tiny_for_tests wrote the same files for seeds 0 and 1"
    for k, rel in enumerate(differing):
        swapped = folder / f"swap{k}" / a.name
        shutil.copytree(a, swapped)
        shutil.copy(b / rel, swapped / rel)
        assert _at(swapped).fingerprint != base, f"{family.family}: fingerprint ignores {rel}"


def check_bad_folder(family: type[Autoencoder], folder: Path) -> None:
    """A folder whose weight files are truncated is an AutoencoderLoadError that names the folder."""
    a = Path(family.tiny_for_tests(folder / "a", 0))
    b = Path(family.tiny_for_tests(folder / "b", 1))
    weights = [f for f in sorted(a.rglob("*")) if f.is_file()
               and (b / f.relative_to(a)).is_file() and (b / f.relative_to(a)).read_bytes() != f.read_bytes()]
    for f in weights:
        blob = f.read_bytes()
        f.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(AutoencoderLoadError) as info:
        _at(a)
    assert str(a) in str(info.value) or str(a.resolve()) in str(info.value), str(info.value)


CONTRACTS = (check_loads_and_shapes, check_decode_differentiable, check_batch_independence, check_determinism,
             check_fingerprint, check_bad_folder)
