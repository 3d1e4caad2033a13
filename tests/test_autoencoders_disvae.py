"""The ``disvae`` family: the shipped CelebA VAEs (files, strict loading, the fingerprint of a real model), a vector
latent through every latent consumer (inversion, memory, AEDR, AEROBLADE, RONAN), prior generation, bad folders."""

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from latenttracer import memory
from latenttracer.autoencoders import AutoencoderLoadError, load_autoencoder
from latenttracer.autoencoders.disvae import DisVAE, save_random_weights
from latenttracer.inversion import InversionConfig, invert

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "disvae-celeba"
FOLDERS = ("VAE_celeba", "betaH_celeba", "betaB_celeba", "factor_celeba", "btcvae_celeba", "btcvae_celeba_a-5",
           "btcvae_celeba_a0", "btcvae_celeba_a5")
# from /work/shared/weights/disvae-celeba/SOURCE.md (the published files' sha256), independent of the cards
PUBLISHED_SHA256 = {
    "VAE_celeba": "a9e1e6cd8f6d26680b9252dd30168b47b7ace801dcd3b60e2cb91ffa57768b56",
    "betaH_celeba": "39f29f54a3287219fe30e676e0bc8ba8dbf024b3e648d5be633177814bdb0ab7",
    "betaB_celeba": "6218609f0706ecd732ecba409ae5dd21287ee5810c41490d4d9e55915517fcbd",
    "factor_celeba": "6baabb72ad2d43ae2872cbd73130aa11f749dd6891517d4c5c818e6fdb124a96",
    "btcvae_celeba": "61c1e59fc3e66c56bffefe2ce90e1da24a8969d2e0148a8a1db45544ed5d6d44",
    "btcvae_celeba_a-5": "68022cd20b124d24f43edff338d0fd79a48ed00f648a3898061b2acfb08faae8",
    "btcvae_celeba_a0": "b44fbdf64e599d64d58f15f0f8c22dcb62c90b278cfae9b375861e49f1f2f4a9",
    "btcvae_celeba_a5": "ce3c246f06949f843401edbc5220eb3189083adb5df2580d8c1c724caf4231ee",
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shipped_files_match_their_cards_and_the_published_hashes():
    assert (SHIPPED / "LICENSE").read_text().startswith("MIT License")
    assert (SHIPPED / "README.md").is_file()
    for folder in FOLDERS:
        card = json.loads((SHIPPED / folder / "card.json").read_text())
        assert card["family"] == "disvae" and card["folder"] == folder and card["commit"]
        assert set(card["sha256"]) == {"model.pt", "specs.json"}
        for name, digest in card["sha256"].items():
            assert _sha(SHIPPED / folder / name) == digest, f"{folder}/{name} differs from its card"
        assert card["sha256"]["model.pt"] == PUBLISHED_SHA256[folder]
        specs = json.loads((SHIPPED / folder / "specs.json").read_text())
        assert card["loss"] == specs["loss"] and all(specs[k] == v for k, v in card["objective_weights"].items())
        assert (SHIPPED / folder / "samples.png").is_file()


def test_every_shipped_model_loads_strictly_and_reproduces_its_own_samples():
    ae = None
    for folder in FOLDERS:
        ae = load_autoencoder(SHIPPED / folder)
        assert isinstance(ae, DisVAE) and ae.resolution == 64 and ae.latent_shape == (10,)
        card = json.loads((SHIPPED / folder / "card.json").read_text())
        assert card["parameters"] == {p: sum(t.numel() for t in getattr(ae.model, p).parameters())
                                      for p in ("encoder", "decoder")}
    # a real model's own prior samples invert to (almost) nothing; an encode-decode alone does not
    x = ae.decode(ae.sample_prior([torch.Generator().manual_seed(i) for i in range(3)]))
    x = (x * 255).round() / 255
    step0 = (ae.decode(ae.encode(x)) - x).square().flatten(1).mean(1)
    res = invert(ae, x, InversionConfig())  # the authors' settings
    scores = sorted(r.score for r in res)
    assert all(r.status == "ok" for r in res) and scores[1] < 1e-4, scores  # most (an inversion can stall)
    assert scores[1] < 0.2 * float(step0.median())


def test_vector_latent_through_inversion_memory_and_methods(tmp_path):
    """Every registered method (their cheap contract options; AEROBLADE's weight-free l2) scores a vector-latent
    model's images through the one scoring path; the inversion loop keeps the (L,) latent."""
    from PIL import Image

    from latenttracer.methods import METHODS, get_method
    from latenttracer.tracing import score_images

    ae = load_autoencoder(save_random_weights(tmp_path / "m", 0, side=32))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert ae.encode(x).shape == (2, 10)
    for init in ("encoder", "random", "zeros"):
        res = invert(ae, x, InversionConfig(steps=4, init=init, record_latent=True))
        assert all(r.status == "ok" and r.best_latent.shape == (10,) for r in res)
    assert memory.bytes_per_image(ae, 32, backward=True) == 64 * 32 * 32 * 32 * 4
    paths = []
    for i in range(2):
        p = tmp_path / f"{i}.png"
        Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(p)
        paths.append(p)
    for name in METHODS.names():
        method = get_method(name, METHODS.get(name).contract_options())
        frame, skipped = score_images(ae, paths, method=method, progress=False)
        assert not skipped and (frame["status"] == "ok").all(), (name, frame)


def test_reconstruct_samples_the_encoder_with_generators(tmp_path):
    ae = load_autoencoder(save_random_weights(tmp_path / "m", 0, side=32))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = ae.reconstruct(x)
    a = ae.reconstruct(x, generators=[torch.Generator().manual_seed(1) for _ in range(2)])
    b = ae.reconstruct(x, generators=[torch.Generator().manual_seed(1) for _ in range(2)])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, mean)
    torch.testing.assert_close(ae.decode(ae.encode((x + 1) / 2)) * 2 - 1, mean, rtol=1e-5, atol=1e-6)


def test_wrong_folders_are_clear_errors(tmp_path):
    good = save_random_weights(tmp_path / "good", 0, side=64)
    assert load_autoencoder(good).resolution == 64
    with pytest.raises(AutoencoderLoadError, match="takes 64 px images only"):
        load_autoencoder(good, resolution=32)
    # a 32 px model's weights under a 64 px spec: strict loading names the file and the keys
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    torch.save(save_random_weights(tmp_path / "small", 0, side=32) and
               torch.load(tmp_path / "small" / "model.pt", weights_only=True), bad / "model.pt")
    with pytest.raises(AutoencoderLoadError, match=r"model.pt: not a 64 px, 10-latent disvae state dict.*conv_64"):
        load_autoencoder(bad)
    (bad / "model.pt").unlink()
    with pytest.raises(AutoencoderLoadError, match="model.pt: missing"):
        load_autoencoder(bad)
    spec = json.loads((good / "specs.json").read_text())
    for key, value, message in (("img_size", [3, 48, 48], "img_size"), ("latent_dim", 0, "latent_dim")):
        (bad / "specs.json").write_text(json.dumps({**spec, key: value}))
        with pytest.raises(AutoencoderLoadError, match=message):
            load_autoencoder(bad)
    # another model type is not this family's: no family loads it, and the error says what disvae looks for
    (bad / "specs.json").write_text(json.dumps({**spec, "model_type": "Higgins"}))
    with pytest.raises(AutoencoderLoadError, match="disvae: specs.json is not a 'Burgess' model's"):
        load_autoencoder(bad)


def test_prior_generation_is_seeded_resumable_and_recorded(tmp_path):
    from data_gen.generate import generate_set

    src = save_random_weights(tmp_path / "m", 0, side=32)
    out = tmp_path / "sets"
    d = generate_set(str(src), out, n=3, seed=5, batch_size=2, model_name="m", pipeline="prior", device="cpu",
                     progress=False)
    record = json.loads((d / "set.json").read_text())
    assert record["config"]["kind"] == "prior" and record["config"]["weights"] == load_autoencoder(src).fingerprint
    rows = list(csv.DictReader((d / "manifest.csv").open()))
    assert [r["seed"] for r in rows] == ["5", "6", "7"] and rows[0]["width"] == "32"
    first = (d / "00001.png").read_bytes()
    (d / "00001.png").unlink()
    generate_set(str(src), out, n=4, seed=5, batch_size=3, model_name="m", pipeline="prior", device="cpu",
                 progress=False)
    assert (d / "00001.png").read_bytes() == first and (d / "00003.png").is_file()
    # image i is the decode of the prior sample seeded seed + i, whatever the batch
    import numpy as np
    from PIL import Image

    ae = load_autoencoder(src)
    want = ae.decode(ae.sample_prior([torch.Generator().manual_seed(6)]))[0].permute(1, 2, 0).detach().numpy()
    got = np.asarray(Image.open(d / "00001.png"))
    assert np.abs(got.astype(float) - np.round(want * 255)).max() <= 1
    with pytest.raises(FileExistsError, match="seed"):
        generate_set(str(src), out, n=4, seed=6, model_name="m", pipeline="prior", device="cpu", progress=False)
    with pytest.raises(ValueError, match="pipeline 'prior' takes none"):
        generate_set(str(src), tmp_path / "o2", n=1, model_name="m", pipeline="prior", device="cpu",
                     pipeline_kwargs={"num_inference_steps": 3}, progress=False)
