"""The embedded zoo and the real-image set: a micro zoo trains, saves and loads; the shipped zoo is complete."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from data_gen import real_images, zoo
from latenttracer.autoencoders import load_autoencoder

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "zoo"
CARD_KEYS = {"name", "autoencoder_class", "seed", "resolution", "scaling_factor", "autoencoder_steps",
             "prior_steps", "seconds", "psnr_heldout_real_db", "speed", "autoencoder_config", "unet_config"}
TINY_BUDGET = zoo.Budget(n_crops=64, ae_steps=3, ae_batch=8, finetune_steps=2, prior_steps=3, prior_batch=8,
                         n_heldout=8, speed_batch=4, speed_threads=1)


def _generate(pipe, n: int = 2) -> np.ndarray:
    gen = torch.Generator().manual_seed(0)
    return pipe(batch_size=n, generator=gen, num_inference_steps=2, output_type="np").images


# -- real images ------------------------------------------------------------------------------------------------
def test_photo_table_is_split_by_photo_and_files_ship_with_the_packages():
    train = {p.name for p in real_images.photos("train")}
    evals = {p.name for p in real_images.photos("eval")}
    assert train and evals and not train & evals
    assert len(train | evals) == len(real_images.PHOTOS)
    for p in real_images.PHOTOS:
        assert p.licence and p.split in ("train", "eval")
        img = real_images.load_photo(p)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 256


def test_build_eval_set_writes_crops_and_manifest_from_eval_photos_only(tmp_path):
    out = real_images.build_eval_set(tmp_path / "real", size=32, n=30, seed=0)
    rows = real_images.read_manifest(out)
    assert len(rows) == 30 and set(rows[0]) == set(real_images.MANIFEST_COLUMNS)
    eval_names = {p.name for p in real_images.photos("eval")}
    assert {r["photo"] for r in rows} == eval_names  # every eval photo used, no training photo
    for r in rows:
        side = int(r["right"]) - int(r["left"])
        assert side == int(r["bottom"]) - int(r["top"]) >= 32
        assert abs(float(r["scale"]) - side / 32) < 1e-3
    crops = real_images.eval_crops(out)
    assert crops.shape == (30, 3, 32, 32) and 0 <= crops.min() and crops.max() <= 1
    # idempotent: a complete set is not rewritten
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    real_images.build_eval_set(out, size=32, n=30, seed=0)
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # the crops are the in-memory eval crops, bit for bit
    arrays, _ = real_images.make_eval_crops(32, 30, seed=0)
    assert torch.equal(crops, torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255)


def test_training_crops_are_deterministic_and_in_range():
    a = real_images.training_crops(size=16, n=40, seed=3)
    b = real_images.training_crops(size=16, n=40, seed=3)
    c = real_images.training_crops(size=16, n=40, seed=4)
    assert a.shape == (40, 3, 16, 16) and a.dtype == torch.float32
    assert 0 <= a.min() and a.max() <= 1 and a.std() > 0.05
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- a micro zoo --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def micro_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    zoo.train_zoo(out, ["kl-a", "kl-a-ft", "vq", "tiny"], TINY_BUDGET, jobs=1)
    return out


@pytest.mark.parametrize("name,cls", [("kl-a", "AutoencoderKL"), ("kl-a-ft", "AutoencoderKL"),
                                      ("vq", "VQModel"), ("tiny", "AutoencoderTiny")])
def test_micro_member_loads_with_diffusion_pipeline_and_generates(micro_zoo, name, cls):
    pipe = DiffusionPipeline.from_pretrained(str(micro_zoo / name))
    assert type(pipe).__name__ == "LDMPipeline" and type(pipe.vqvae).__name__ == cls
    assert load_autoencoder(micro_zoo / name).resolution == 32 and pipe.unet.config.sample_size == 8
    pipe.set_progress_bar_config(disable=True)
    images = _generate(pipe)
    assert images.shape == (2, 32, 32, 3) and images.min() >= 0 and images.max() <= 1
    assert np.array_equal(images, _generate(pipe))  # deterministic in the generator
    card = json.loads((micro_zoo / name / "card.json").read_text())
    assert CARD_KEYS <= set(card) and card["name"] == name
    assert (micro_zoo / name / "README.md").is_file()


def test_micro_kl16_member_has_16_channel_full_resolution_latents_and_its_own_scale(tmp_path):
    """kl16 (FLUX / SD 3.5 stand-in): 32x32x16 latents, the larger prior, its own steps and lr on any budget."""
    member = zoo.MEMBERS["kl16"]
    budget = zoo.build.member_budget(member, TINY_BUDGET)
    assert budget.ae_steps == round(TINY_BUDGET.ae_steps * member.ae_steps_factor) and budget.ae_lr == member.ae_lr
    assert budget.prior_steps == round(TINY_BUDGET.prior_steps * member.prior_steps_factor)
    assert zoo.build.member_budget(zoo.MEMBERS["kl-a"], TINY_BUDGET) == TINY_BUDGET  # others unchanged
    card = zoo.train_member(member, tmp_path, TINY_BUDGET, measure_speed=False)
    assert card["latent_shape"] == [16, 32, 32] and card["autoencoder_steps"] == budget.ae_steps
    assert len(card["stats"]["latent_channel_std_before_whitening"]) == 16  # whitened before the prior
    assert card["budget"]["ae_lr"] == member.ae_lr
    pipe = zoo.load_member(tmp_path / "kl16")
    assert pipe.unet.config.in_channels == 16 and pipe.unet.config.sample_size == 32
    assert pipe.scheduler.config.prediction_type == member.prediction == "v_prediction"  # what its prior learned
    with pytest.raises(ValueError, match="prediction: expected"):
        zoo.train_prior(pipe.unet, torch.zeros(2, 16, 32, 32), TINY_BUDGET, 0, "x", prediction="x0")
    assert load_autoencoder(tmp_path / "kl16").resolution == 32
    images = _generate(pipe)
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    speed = zoo.decoder_speed(pipe.vqvae, batch=2, reps=1, threads=1)
    assert speed["image_steps_per_s"] > 0 and speed["decoder_params"] > 0


def test_whitening_latent_channels_keeps_the_autoencoder_function_and_gives_unit_std():
    torch.manual_seed(0)
    m = zoo.MEMBERS["kl16"]
    ae = zoo.build_autoencoder("kl", 32, m.latent_channels, m.widths, m.norm_groups).eval()
    crops = real_images.training_crops(32, 64, seed=0)
    with torch.no_grad():
        ae.quant_conv.weight[:3] *= 20  # make three channels' scales very different from the others'
        before = ae.decode(zoo.encode_unscaled(ae, crops * 2 - 1)).sample
        lat = zoo.latents_for_prior(ae, crops)
        stds = zoo.whiten_latent_channels(ae, lat)
        after = ae.decode(zoo.encode_unscaled(ae, crops * 2 - 1)).sample
        lat2 = zoo.latents_for_prior(ae, crops)
    assert len(stds) == 16 and max(stds) > 10 * min(stds)
    assert torch.allclose(lat2.std(dim=(0, 2, 3)), torch.ones(16), atol=1e-4)
    assert torch.allclose(before, after, atol=1e-5)  # the same autoencoder function
    post = ae.encode(crops * 2 - 1).latent_dist  # the variance moves with the mean
    assert torch.allclose(post.mean, lat2, atol=1e-6)


def test_micro_scaling_factor_gives_unit_std_latents(micro_zoo):
    pipe = zoo.load_member(micro_zoo / "kl-a")
    crops = real_images.training_crops(32, TINY_BUDGET.n_crops, seed=0)
    lat = zoo.latents_for_prior(pipe.vqvae, crops) * pipe.vqvae.config.scaling_factor
    assert abs(float(lat.std()) - 1.0) < 1e-3


def test_finetuned_member_changes_only_the_decoder_and_reuses_the_prior(micro_zoo):
    base, ft = zoo.load_member(micro_zoo / "kl-a"), zoo.load_member(micro_zoo / "kl-a-ft")
    b, f = base.vqvae.state_dict(), ft.vqvae.state_dict()
    assert all(torch.equal(b[k], f[k]) for k in b if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(b[k], f[k]) for k in b if k.startswith("decoder."))
    bu, fu = base.unet.state_dict(), ft.unet.state_dict()
    assert all(torch.equal(bu[k], fu[k]) for k in bu)
    assert ft.vqvae.config.scaling_factor == base.vqvae.config.scaling_factor


def test_autoencoder_training_is_deterministic(tmp_path):
    crops = real_images.training_crops(32, 32, seed=0)

    def weights():
        torch.manual_seed(7)
        ae = zoo.build_autoencoder("vq")
        zoo.train_autoencoder(ae, "vq", crops, TINY_BUDGET, seed=7, desc="test")
        return torch.cat([p.detach().flatten() for p in ae.parameters()])

    assert torch.equal(weights(), weights())


def test_decoder_speed_reports_flops_and_rate():
    torch.manual_seed(0)
    s = zoo.decoder_speed(zoo.build_autoencoder("tiny"), batch=4, reps=1, threads=1)
    assert s["decoder_params"] > 0 and s["decoder_mflop_per_image"] > 1 and s["image_steps_per_s"] > 0


def test_unknown_member_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown member"):
        zoo.train_zoo(tmp_path, ["sd15"], TINY_BUDGET)


# -- the shipped zoo ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(zoo.MEMBERS))
def test_shipped_member_loads_and_has_a_card(name):
    member = SHIPPED / name
    assert (member / "model_index.json").is_file(), f"{member}: missing; run `make zoo`"
    pipe = DiffusionPipeline.from_pretrained(str(member))
    pipe.set_progress_bar_config(disable=True)
    card = json.loads((member / "card.json").read_text())
    assert CARD_KEYS <= set(card) and card["name"] == name
    assert type(pipe.vqvae).__name__ == card["autoencoder_class"]
    assert load_autoencoder(member).resolution == card["resolution"] == 32
    assert (member / "README.md").read_text() == zoo.card_readme(card)  # the README is made from the card
    assert (member / "README.md").read_text().startswith(f"# Zoo member `{name}`")
    images = _generate(pipe, n=1)
    assert images.shape == (1, 32, 32, 3)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _no_warnings():
    """Python warnings and diffusers' log records (WARNING and up; diffusers' loggers do not propagate)."""
    records = _Records()
    logger = logging.getLogger("diffusers")
    logger.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield records.messages
    finally:
        logger.removeHandler(records)
    assert not caught, [str(w.message) for w in caught]
    assert not records.messages, records.messages


@pytest.mark.parametrize("name", list(zoo.MEMBERS))
def test_shipped_member_loads_without_warnings(name):
    member = SHIPPED / name
    with _no_warnings():
        zoo.load_member(member)
        load_autoencoder(member)
        component = json.loads((member / "model_index.json").read_text())["vqvae"][1]
        getattr(diffusers, component).from_pretrained(str(member), subfolder="vqvae")
    assert zoo.clean_configs(member) == []  # every config key is one its class takes


def test_plain_from_pretrained_names_the_vqvae_class_and_load_member_does_not(micro_zoo):
    """Plain DiffusionPipeline.from_pretrained names the autoencoder class of a KL member; load_member does not."""
    records = _Records()
    logging.getLogger("diffusers").addHandler(records)
    try:
        DiffusionPipeline.from_pretrained(str(micro_zoo / "kl-a"))
    finally:
        logging.getLogger("diffusers").removeHandler(records)
    assert [m for m in records.messages if m.startswith("Expected types for vqvae:")]
    with _no_warnings():
        zoo.load_member(micro_zoo / "kl-a")


def test_micro_tiny_member_is_saved_with_clean_configs_and_swapped_in(micro_zoo, tmp_path):
    config = json.loads((micro_zoo / "tiny" / "vqvae" / "config.json").read_text())
    assert "block_out_channels" not in config and "sample_size" not in config
    member = Path(shutil.copytree(micro_zoo / "kl-a", tmp_path / "kl-a"))
    pipe, card = zoo.load_member(member), json.loads((member / "card.json").read_text())
    card["seed"] = 99
    zoo.save_member(member, pipe, card)  # replaces the member in one swap
    assert json.loads((member / "card.json").read_text())["seed"] == 99
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kl-a"]  # nothing left beside it


def test_shipped_zoo_is_small():
    files = [p for p in SHIPPED.rglob("*") if p.is_file()]
    assert files and sum(p.stat().st_size for p in files) < 40 * 2**20


def test_shipped_members_own_samples_trace_as_belonging(tmp_path):
    """Each member's own samples (8-bit PNGs) fall under a threshold set on other own samples; others' rarely do."""
    from latenttracer.images import list_images
    from latenttracer.inversion import InversionConfig
    from latenttracer.metrics import calibrate_threshold
    from latenttracer.tracing import score_images

    n = 4  # per member and split: calibration + evaluation
    folders = {}
    for name in zoo.MEMBERS:
        pipe = DiffusionPipeline.from_pretrained(str(SHIPPED / name))
        pipe.set_progress_bar_config(disable=True)
        gen = [torch.Generator().manual_seed(100 + i) for i in range(2 * n)]
        images = pipe(batch_size=2 * n, generator=gen, num_inference_steps=10, output_type="pil").images
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for i, im in enumerate(images):
            im.save(folders[name] / f"{i:02d}.png")
    cfg = InversionConfig(steps=100, batch_size=64)
    own_rates, other_rates = [], []
    for inspected in zoo.MEMBERS:
        ae = load_autoencoder(SHIPPED / inspected)
        scores = {name: score_images(ae, list_images(folder), cfg, progress=False)[0]["score"].to_numpy()
                  for name, folder in folders.items()}
        own = scores.pop(inspected)
        threshold = calibrate_threshold(own[:n], 0.95)  # calibration half: the first n images
        own_rates.append(np.mean(own[n:] <= threshold))
        for name, s in scores.items():
            other_rates.append(np.mean(s <= threshold))
            assert np.median(s) > 5 * np.median(own), (inspected, name, np.median(s), np.median(own))
    assert np.mean(own_rates) >= 0.6 and np.mean(other_rates) <= 0.05, (own_rates, other_rates)


@pytest.mark.slow
def test_make_zoo_reproduces_the_shipped_member_bit_for_bit(tmp_path):
    """`make zoo` reproduces the shipped zoo: retrain kl-a from scratch (about 4 minutes; last run 3 min 42 s)."""
    from safetensors.torch import load_file

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the zoo is trained single-threaded (`--threads 1`), which makes it bit-reproducible
    try:
        zoo.train_member(zoo.MEMBERS["kl-a"], tmp_path, measure_speed=False)
    finally:
        torch.set_num_threads(before)
    for component in ("vqvae", "unet"):
        (shipped,) = (SHIPPED / "kl-a" / component).glob("*.safetensors")
        (fresh,) = (tmp_path / "kl-a" / component).glob("*.safetensors")
        a, b = load_file(shipped), load_file(fresh)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{component}/{key} differs from the shipped zoo"
