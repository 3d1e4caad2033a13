"""The ``taesd`` family: every variant's layout round-trips, bad files fail clearly, the shipped taef2 works."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from latenttracer.autoencoders import AutoencoderLoadError, load_autoencoder
from latenttracer.autoencoders.taesd import VARIANTS, TAESDNet, save_random_weights

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "taef2"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_layout_round_trips(tmp_path, variant):
    folder = save_random_weights(tmp_path / variant, variant, seed=1, card=False)
    ae = load_autoencoder(folder)
    assert ae.family == "taesd" and ae.variant.name == variant and ae.resolution == 64 and ae.name == variant
    x = torch.rand(2, 3, 48, 64)
    z = ae.encode(x)
    assert z.shape == (2, VARIANTS[variant].latent_channels, 6, 8)
    y = ae.decode(z)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    # the loaded weights are the saved ones
    saved = torch.load(folder / f"{variant}_decoder.pth", weights_only=True)
    for key, value in ae.model.decoder.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    assert load_autoencoder(folder, resolution=32).resolution == 32


def test_variant_from_card_and_several_variants(tmp_path):
    folder = save_random_weights(tmp_path / "two", "taesd", card=False)
    save_random_weights(folder, "taef1", card=False)
    with pytest.raises(AutoencoderLoadError, match=r"several variants \(taesd, taef1\).*card.json"):
        load_autoencoder(folder)
    (folder / "card.json").write_text(json.dumps({"family": "taesd", "variant": "taef1", "resolution": 128}))
    ae = load_autoencoder(folder)
    assert ae.variant.name == "taef1" and ae.resolution == 128
    (folder / "card.json").write_text(json.dumps({"family": "taesd", "variant": "taef3"}))
    with pytest.raises(AutoencoderLoadError, match=r"card.json: variant 'taef3' is not one of"):
        load_autoencoder(folder)
    (folder / "card.json").write_text("{not json")
    with pytest.raises(AutoencoderLoadError, match="card.json: cannot read the card's JSON"):
        load_autoencoder(folder)
    (folder / "card.json").write_text(json.dumps({"family": "taesd", "variant": "taef2"}))
    with pytest.raises(AutoencoderLoadError, match=r"taef2_encoder.pth: missing"):
        load_autoencoder(folder)
    (folder / "card.json").write_text(json.dumps({"family": "taesd", "resolution": 30}))
    (folder / "taesd_encoder.pth").unlink()
    (folder / "taesd_decoder.pth").unlink()
    with pytest.raises(AutoencoderLoadError, match="resolution 30 must be a positive multiple of 8"):
        load_autoencoder(folder)


def test_bad_files_name_the_file_and_the_problem(tmp_path):
    good = save_random_weights(tmp_path / "good", "taef2", card=False)

    def variant_folder(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(good, d)
        return d

    # another variant's layout under taef2's name: wrong keys, with a hint
    d = variant_folder("wrong_layout")
    torch.save(TAESDNet(VARIANTS["taesd"]).encoder.state_dict(), d / "taef2_encoder.pth")
    with pytest.raises(AutoencoderLoadError, match=r"taef2_encoder.pth: not a taef2 encoder state dict: missing keys "
                       r"12: 11.pool.0.weight.*wrong shapes 2: 14.weight \(4, 64, 3, 3\).*layout of a taesd encoder"):
        load_autoencoder(d)
    # an encoder saved as the decoder
    d = variant_folder("swapped")
    shutil.copy(good / "taef2_encoder.pth", d / "taef2_decoder.pth")
    with pytest.raises(AutoencoderLoadError, match=r"taef2_decoder.pth: not a taef2 decoder state dict.*layout of a "
                       r"taef2 encoder"):
        load_autoencoder(d)
    # not a state dict
    d = variant_folder("tensor")
    torch.save(torch.zeros(3), d / "taef2_decoder.pth")
    with pytest.raises(AutoencoderLoadError, match=r"taef2_decoder.pth: not a state dict .*found Tensor"):
        load_autoencoder(d)
    # truncated
    d = variant_folder("truncated")
    blob = (d / "taef2_encoder.pth").read_bytes()
    (d / "taef2_encoder.pth").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(AutoencoderLoadError, match=r"taef2_encoder.pth: not a readable PyTorch state dict"):
        load_autoencoder(d)
    # a pickle weights_only refuses to run
    d = variant_folder("pickle")
    torch.save({"0.weight": object()}, d / "taef2_encoder.pth")
    with pytest.raises(AutoencoderLoadError, match=r"taef2_encoder.pth: not a readable PyTorch state dict"):
        load_autoencoder(d)
    # a missing half
    d = variant_folder("half")
    (d / "taef2_decoder.pth").unlink()
    with pytest.raises(AutoencoderLoadError, match=r"taef2_decoder.pth: missing; a taef2 folder holds"):
        load_autoencoder(d)


def test_no_family_lists_what_each_looks_for(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AutoencoderLoadError, match=r"(?s)no autoencoder family can load it.*taesd: no such \.pth "
                       r"files; expected a folder with <variant>_encoder.pth"):
        load_autoencoder(tmp_path / "empty")


def test_diffusers_tiny_folder_stays_with_diffusers(tiny_dirs):
    assert load_autoencoder(tiny_dirs["AutoencoderTiny-0"], resolution=32).family == "diffusers-tiny"


def test_deterministic_reconstruct_ignores_generators_and_gradients_flow(tmp_path):
    ae = load_autoencoder(save_random_weights(tmp_path / "m", "taesd3", seed=2))
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    first = ae.reconstruct(x, generators=gens)
    torch.testing.assert_close(ae.reconstruct(x, generators=gens), first, rtol=0, atol=0)
    torch.testing.assert_close(ae.reconstruct(x), first, rtol=0, atol=0)
    ae.clamp = False
    torch.testing.assert_close(first, ae.decode(ae.encode((x + 1) / 2)) * 2 - 1)
    ae.clamp = True
    with pytest.raises(ValueError, match="generators: 2 given for 3 images"):
        ae.reconstruct(x, generators=gens[:2])
    with pytest.raises(ValueError, match="multiples of 8"):
        ae.encode(torch.rand(1, 3, 30, 32))
    # decode is differentiable w.r.t. the latent; the weights stay frozen unless asked for
    z = ae.encode((x + 1) / 2).requires_grad_(True)
    ae.decode(z).square().mean().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in ae.model.parameters())
    # the decoder can be fine-tuned (the drift study): gradients reach its weights through encode's latent
    ae.model.decoder.requires_grad_(True)
    ae.decode(ae.encode((x + 1) / 2)).mean().backward()
    assert all(p.grad is not None for p in ae.model.decoder.parameters())
    assert all(p.grad is None for p in ae.model.encoder.parameters())


def test_fingerprint_follows_the_files_not_the_folder(tmp_path):
    a = load_autoencoder(save_random_weights(tmp_path / "a", "taesd", seed=0)).fingerprint
    b = load_autoencoder(save_random_weights(tmp_path / "b", "taesd", seed=1)).fingerprint
    shutil.copytree(tmp_path / "a", tmp_path / "moved" / "a2")
    assert load_autoencoder(tmp_path / "moved" / "a2").fingerprint == a
    assert a != b and len(a) == 16


def test_shipped_taef2_matches_its_card():
    card = json.loads((SHIPPED / "card.json").read_text())
    for name, digest in card["sha256"].items():
        assert hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() == digest
    assert (SHIPPED / "LICENSE").read_text().startswith("MIT License")
    ae = load_autoencoder(SHIPPED)
    assert ae.family == "taesd" and ae.variant.name == "taef2" and ae.resolution == card["resolution"] == 64
    assert sum(p.numel() for p in ae.model.encoder.parameters()) == card["parameters"]["encoder"]
    assert sum(p.numel() for p in ae.model.decoder.parameters()) == card["parameters"]["decoder"]


def test_shipped_taef2_reconstructs_real_crops():
    """PSNR of decode(encode(x)) on evaluation photo crops; benchmarks/taesd_psnr.py measured a median of
    27.8 dB (min 22.4) on 60 crops at 64 px; a random-init taef2 gives a median of 6.6 dB on these 9."""
    from data_gen.real_images import make_eval_crops

    crops, _ = make_eval_crops(size=64, n=9, seed=0)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    ae = load_autoencoder(SHIPPED)
    with torch.no_grad():
        psnr = (10 * torch.log10(1 / ((ae.decode(ae.encode(x)) - x) ** 2).mean((1, 2, 3)))).numpy()
    assert np.median(psnr) > 25 and psnr.min() > 20, psnr
