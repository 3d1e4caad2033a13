"""Peer methods in the one harness (latenttracer, ronan, aedr, aeroblade), their calibration, the cache key of
the default method, GLCM homogeneity, and batch halving on out-of-memory errors; tiny random-init models.
Every registered method also passes the shared contracts of tests/helpers/method_contracts.py."""

import hashlib
import json
import logging
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import decoded_images, natural_crops, save_png
from helpers import method_contracts as contracts
from omegaconf import OmegaConf
from PIL import Image

from latenttracer import memory
from latenttracer.autoencoders import load_autoencoder
from latenttracer.complexity import bt601_luma, glcm_homogeneity, libpng_luma, read_luma
from latenttracer.images import ImageOptions, load_image
from latenttracer.inversion import InversionConfig, image_seed, invert, ronan_config
from latenttracer.methods import METHODS, get_method
from latenttracer.methods import inversion_methods as inv_methods
from latenttracer.methods.aedr import AEDR
from latenttracer.methods.aeroblade import Aeroblade
from latenttracer.methods.inversion_methods import LatentTracer, Ronan
from latenttracer.methods.lpips_vgg import LAYER_CHANNELS, LAYER_END, LPIPSVGG, SCALE, SHIFT, VGG16_CONFIG
from latenttracer.metrics import calibrate_threshold, kde_threshold
from latenttracer.store import ResultStore
from latenttracer.tracing import run_hash, score_images


# -- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_dirs):
    return {k: load_autoencoder(tiny_dirs[f"AutoencoderTiny-{k}"], resolution=32) for k in (0, 1)}


@pytest.fixture(scope="module")
def image_sets(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("method_images")
    sets = {"own": decoded_images(tiny[0], 6, 0), "sibling": decoded_images(tiny[1], 6, 0),
            "real": natural_crops(6)}
    out = {}
    for name, images in sets.items():
        (root / name).mkdir()
        out[name] = [save_png(x, root / name / f"{i:02d}.png") for i, x in enumerate(images)]
    return out


def random_vgg_state(seed=0):
    """VGG16 ``features`` weights in torchvision's layout (random), and LPIPS' linear weights (random, >= 0)."""
    g = torch.Generator().manual_seed(seed)
    vgg, idx, channels = {}, 0, 3
    for item in VGG16_CONFIG:
        if item == "M":
            idx += 1
            continue
        vgg[f"features.{idx}.weight"] = torch.randn(item, channels, 3, 3, generator=g) * (2 / (9 * channels)) ** 0.5
        vgg[f"features.{idx}.bias"] = torch.randn(item, generator=g) * 0.01
        channels, idx = item, idx + 2
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision checkpoints carry the classifier too
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(LAYER_CHANNELS)}
    return vgg, lin


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lpips")
    vgg, lin = random_vgg_state()
    torch.save(vgg, root / "vgg16.pth")
    torch.save(lin, root / "vgg.pth")
    return {"vgg_weights": str(root / "vgg16.pth"), "lpips_weights": str(root / "vgg.pth"), "vgg": vgg, "lin": lin}


CASES = {
    "latenttracer": lambda files: LatentTracer(InversionConfig(steps=20)),
    "ronan": lambda files: Ronan(ronan_config(steps=20)),
    "aedr": lambda files: AEDR(),
    "aedr-mean": lambda files: AEDR(posterior="mean"),
    "aeroblade-l2": lambda files: Aeroblade(distance="l2"),
    "aeroblade-ssim": lambda files: Aeroblade(distance="ssim"),
    "aeroblade-lpips": lambda files: Aeroblade(vgg_weights=files["vgg_weights"], lpips_weights=files["lpips_weights"]),
}


# -- the shared contracts, for every registered method ---------------------------------------------------------
@pytest.fixture(scope="module")
def contract_setup(tiny_dirs, tmp_path_factory):
    """A tiny KL autoencoder (its posterior is sampled) and four image files: three it decodes, one photo crop."""
    ae = load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)
    root = tmp_path_factory.mktemp("contract_images")
    images = torch.cat([decoded_images(ae, 3, 4), natural_crops(1, seed=9)])
    return ae, [save_png(x, root / f"{i}.png") for i, x in enumerate(images)]


@pytest.mark.parametrize("name", METHODS.names())
@pytest.mark.parametrize("contract", ["batch_independence", "determinism", "bad_input", "cache_identity"])
def test_method_contract(contract, name, contract_setup):
    getattr(contracts, f"check_{contract}")(name, *contract_setup)


# -- every method -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_own_images_score_below_siblings(name, tiny, image_sets, lpips_files):
    method = CASES[name](lpips_files)
    scores = {}
    for key in ("own", "sibling"):
        frame, skipped = score_images(tiny[0], image_sets[key], method=method, progress=False)
        assert not skipped and (frame["status"] == "ok").all()
        assert set(method.components) <= set(frame.columns)
        scores[key] = frame["score"].to_numpy()
    assert scores["own"].max() < scores["sibling"].min(), scores


def test_aeroblade_lpips_is_batch_independent(tiny, image_sets, lpips_files):
    method = CASES["aeroblade-lpips"](lpips_files)
    paths = image_sets["own"] + image_sets["real"]
    together, _ = score_images(tiny[0], paths, method=method, batch_size=12, progress=False)
    for k in (0, 7):
        alone, _ = score_images(tiny[0], [paths[k]], method=method, batch_size=1, progress=False)
        assert alone["score"].iloc[0] == pytest.approx(together["score"].iloc[k], rel=1e-5)


def test_methods_have_distinct_cache_keys_and_labels(tiny, lpips_files):
    methods = [m(lpips_files) for m in CASES.values()]
    keys = {run_hash(tiny[0], m, ImageOptions()) for m in methods}
    assert len(keys) == len(methods)
    assert [m.label for m in methods[4:]] == ["aeroblade[l2]", "aeroblade[ssim]", "aeroblade"]
    assert run_hash(tiny[0], AEDR(seed=2), ImageOptions()) != run_hash(tiny[0], AEDR(), ImageOptions())
    # The posterior mean has no seed: the seed does not split its cache.
    assert run_hash(tiny[0], AEDR("mean", 2), ImageOptions()) == run_hash(tiny[0], AEDR("mean", 1), ImageOptions())


def test_get_method_options_and_errors():
    assert get_method("ronan", {"steps": 7}).config == ronan_config(steps=7)
    assert get_method("latenttracer").config == InversionConfig()
    assert get_method("aedr", {"posterior": "mean"}) == AEDR(posterior="mean")
    with pytest.raises(ValueError, match="not one of"):
        get_method("dire")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['steps'\]"):
        get_method("aedr", {"steps": 3})
    with pytest.raises(ValueError, match="posterior"):
        AEDR(posterior="mode")
    with pytest.raises(ValueError, match="distance 'psnr'"):
        Aeroblade(distance="psnr")


# -- latenttracer: the cache key is unchanged -------------------------------------------------------------------
def test_default_run_hash_is_unchanged():
    ae = SimpleNamespace(fingerprint="0123456789abcdef", resolution=32, clamp=True)
    # Pinned: existing caches (and Table 1's scores) must keep their keys.
    assert run_hash(ae, InversionConfig(), ImageOptions()) == "87c47c7a42fc9682"
    ronan_like = InversionConfig(init="random", lr=0.1, steps=1500, schedule="constant", batch_size=1)
    assert run_hash(ae, ronan_like, ImageOptions(resize="authors")) == "edb2573590d2a900"
    # ... and the formula, written out: the config's identity, the model, the image preparation.
    identity = {"init": "encoder", "lr": 0.05, "steps": 100, "schedule": "authors", "distance": "l2",
                "strategy": "min", "dtype": "float32"}
    payload = json.dumps([identity, {"model": "0123456789abcdef", "resolution": 32, "clamp": True},
                          {"resize": "native", "alpha_background": "black"}], sort_keys=True)
    assert run_hash(ae, LatentTracer(), ImageOptions()) == hashlib.sha256(payload.encode()).hexdigest()[:16]
    assert run_hash(ae, Ronan(), ImageOptions()) == run_hash(ae, ronan_config(), ImageOptions())


# -- ronan: a preset of the one loop ----------------------------------------------------------------------------
def test_ronan_preset_reaches_the_inversion_loop(tiny, image_sets, monkeypatch):
    seen = []

    def spy(ae, images, config, **kwargs):
        seen.append((config, kwargs["seeds"]))
        return invert(ae, images, replace(config, steps=3), **kwargs)

    monkeypatch.setattr(inv_methods, "invert", spy)
    frame, _ = score_images(tiny[0], image_sets["real"][:2], method="ronan", progress=False)
    (config, seeds), = seen
    assert (config.init, config.lr, config.steps, config.schedule, config.strategy, config.distance) == \
        ("random", 0.1, 1500, "constant", "min", "l2")
    assert seeds == [image_seed(s, 0) for s in frame["sha256"]]
    assert (frame["status"] == "ok").all() and len(frame["trajectory"].iloc[0]) == 3


def test_ronan_scores_equal_a_direct_inversion(tiny, image_sets):
    cfg = ronan_config(steps=6)
    frame, _ = score_images(tiny[0], image_sets["own"][:3], method=Ronan(cfg), progress=False)
    images = torch.stack([load_image(p, 32)[0] for p in image_sets["own"][:3]])
    direct = invert(tiny[0], images, replace(cfg, batch_size=8), seeds=[image_seed(s, 0) for s in frame["sha256"]])
    assert frame["score"].tolist() == pytest.approx([r.score for r in direct], rel=1e-6)


# -- aedr -------------------------------------------------------------------------------------------------------
def numpy_homogeneity(luma: np.ndarray) -> float:
    """GLCM homogeneity by counting horizontal neighbour pairs at 32 levels, symmetric, normalised."""
    q = luma.astype(int) // 8
    counts = np.zeros((32, 32))
    for row in q:
        for left, right in zip(row[:-1], row[1:]):
            counts[left, right] += 1
            counts[right, left] += 1
    p = counts / counts.sum()
    i, j = np.indices(p.shape)
    return float((p / (1 + (i - j) ** 2)).sum())


def test_glcm_homogeneity_against_a_pair_count(tmp_path):
    rng = np.random.default_rng(0)
    luma = rng.integers(0, 256, (17, 23), dtype=np.uint8)
    assert glcm_homogeneity(luma) == pytest.approx(numpy_homogeneity(luma), abs=1e-12)
    smooth = np.tile(np.arange(0, 64, dtype=np.uint8)[None], (8, 1))
    assert glcm_homogeneity(smooth) == pytest.approx(numpy_homogeneity(smooth), abs=1e-12)
    assert glcm_homogeneity(np.full((5, 5), 77, np.uint8)) == 1.0
    # A file is read at its own size (no resizing), as 8-bit luma.
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    Image.fromarray(rgb).save(tmp_path / "x.bmp")
    assert read_luma(tmp_path / "x.png").shape == (40, 50)
    assert glcm_homogeneity(tmp_path / "x.png") == pytest.approx(numpy_homogeneity(libpng_luma(rgb)), abs=1e-12)
    assert glcm_homogeneity(tmp_path / "x.bmp") == pytest.approx(numpy_homogeneity(bt601_luma(rgb)), abs=1e-12)
    with pytest.raises(ValueError, match="2-D uint8"):
        glcm_homogeneity(rgb)
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.png"):
        glcm_homogeneity(tmp_path / "bad.png")


def test_luma_follows_the_itu_601_weights(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    exact = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    assert np.abs(bt601_luma(rgb) - np.round(exact)).max() <= 1  # 14-bit fixed point, rounded
    assert np.abs(libpng_luma(rgb) - np.floor(exact)).max() <= 1  # 15-bit fixed point, truncated
    grey = np.repeat(rng.integers(0, 256, (8, 8, 1), dtype=np.uint8), 3, axis=2)
    assert (libpng_luma(grey) == grey[..., 0]).all() and (bt601_luma(grey) == grey[..., 0]).all()
    Image.fromarray(grey[..., 0]).save(tmp_path / "g.png")
    assert (read_luma(tmp_path / "g.png") == grey[..., 0]).all()


def test_aedr_formula_against_a_direct_computation(tiny_dirs, tmp_path):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

    ae = load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)
    path = save_png(natural_crops(1, seed=5)[0], tmp_path / "x.png")
    frame, _ = score_images(ae, [path], method=AEDR(), progress=False)
    row = frame.iloc[0]
    # AEDR's recipe, written out with diffusers: [-1, 1] pixels, one generator seeded 1, two passes.
    x = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        r1 = ae.model.decode(retrieve_latents(ae.model.encode(x), generator=generator)).sample
        r2 = ae.model.decode(retrieve_latents(ae.model.encode(r1), generator=generator)).sample
    a, b = F.mse_loss(r1, x).item(), F.mse_loss(r2, r1).item()
    c = numpy_homogeneity(libpng_luma(np.asarray(Image.open(path).convert("RGB"))))  # the PNG's luma
    assert row["loss_1"] == pytest.approx(a, rel=1e-5) and row["loss_2"] == pytest.approx(b, rel=1e-5)
    assert row["homogeneity"] == pytest.approx(c, abs=1e-9)
    assert row["score"] == pytest.approx(a * c / b, rel=1e-5)
    assert math.isnan(row["init_loss"])


def test_kde_threshold_against_scipy():
    from scipy.stats import gaussian_kde

    values = np.random.default_rng(3).lognormal(-2, 0.5, 200)
    sigma = np.std(values, ddof=1)
    grid = np.linspace(values.min() - sigma, values.max() + sigma, 10_000)
    cdf = np.cumsum(gaussian_kde(values)(grid))
    expected = np.interp(0.95, cdf / cdf[-1], grid)
    assert kde_threshold(values, alpha=0.05) == pytest.approx(expected, rel=1e-12)
    assert calibrate_threshold(values, 0.95, rule="kde") == pytest.approx(expected, rel=1e-12)
    assert AEDR().calibrate(values) == pytest.approx(expected, rel=1e-12)
    assert LatentTracer().calibrate(values) == calibrate_threshold(values, 0.95)
    assert np.mean(values <= expected) == pytest.approx(0.95, abs=0.03)
    with pytest.raises(ValueError, match="two distinct"):
        kde_threshold([0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="target_tpr < 1"):
        calibrate_threshold(values, 1.0, rule="kde")
    with pytest.raises(ValueError, match="calibration rule"):
        calibrate_threshold(values, 0.95, rule="gmm")


def test_aedr_components_are_stored_and_cached(tiny, image_sets, tmp_path):
    store = ResultStore(tmp_path / "store")
    first, _ = score_images(tiny[0], image_sets["real"], method=AEDR(), store=store, progress=False)
    again, _ = score_images(tiny[0], image_sets["real"], method=AEDR(), store=store, progress=False)
    assert again["cached"].all() and not first["cached"].any()
    for col in ("score", "loss_1", "loss_2", "homogeneity"):
        assert again[col].tolist() == pytest.approx(first[col].tolist(), rel=1e-12)
    stored = store.load()
    assert {"loss_1", "loss_2", "homogeneity"} <= set(stored.columns)
    # LatentTracer rows in the same store carry no components and keep their own key.
    lt, _ = score_images(tiny[0], image_sets["real"][:2], InversionConfig(steps=3), store=store, progress=False)
    assert len(store.load()) == len(image_sets["real"]) + 2
    assert lt["score"].notna().all()


# -- aeroblade --------------------------------------------------------------------------------------------------
def direct_lpips(x01, y01, vgg, lin, layer):
    """One LPIPS-VGG layer computed with plain functional calls (no module of the library)."""
    def feats(x):
        h = ((x * 2 - 1) - torch.tensor(SHIFT).view(1, 3, 1, 1)) / torch.tensor(SCALE).view(1, 3, 1, 1)
        idx = 0
        for item in VGG16_CONFIG:
            if idx >= LAYER_END[layer - 1]:
                break
            if item == "M":
                h, idx = F.max_pool2d(h, 2), idx + 1
            else:
                h = F.relu(F.conv2d(h, vgg[f"features.{idx}.weight"], vgg[f"features.{idx}.bias"], padding=1))
                idx += 2
        return h

    a, b = feats(x01), feats(y01)
    a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
    b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
    return F.conv2d((a - b) ** 2, lin[f"lin{layer - 1}.model.1.weight"]).mean((1, 2, 3))


def test_lpips_vgg_against_a_functional_computation(lpips_files, tmp_path):
    from safetensors.torch import save_file

    from latenttracer.methods.lpips_vgg import load_lpips_vgg

    x, y = natural_crops(3, seed=1), natural_crops(3, seed=2)
    net = load_lpips_vgg(lpips_files["vgg_weights"], lpips_files["lpips_weights"], layers=(2,))
    expected = direct_lpips(x, y, lpips_files["vgg"], lpips_files["lin"], 2)
    assert net(x, y).tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert net(x, x).abs().max().item() == 0.0
    assert len(net.features) == LAYER_END[1]  # only what layer 2 needs is built
    # safetensors with bare keys work too; all five layers sum.
    save_file({k.removeprefix("features."): v for k, v in lpips_files["vgg"].items() if k.startswith("features")},
              tmp_path / "vgg.safetensors")
    full = load_lpips_vgg(tmp_path / "vgg.safetensors", lpips_files["lpips_weights"], layers=(1, 2, 3, 4, 5))
    total = sum(direct_lpips(x, y, lpips_files["vgg"], lpips_files["lin"], k) for k in range(1, 6))
    assert full(x, y).tolist() == pytest.approx(total.tolist(), rel=1e-5)
    assert isinstance(full, LPIPSVGG)


def test_lpips_weights_missing_or_wrong_fail_clearly(lpips_files, tmp_path):
    from latenttracer.methods.lpips_vgg import load_lpips_vgg

    with pytest.raises(FileNotFoundError, match=r"vgg_weights not given.*vgg16-397923af\.pth"):
        Aeroblade()
    with pytest.raises(FileNotFoundError, match=r"lpips_weights file .*nope\.pth not found.*vgg\.pth"):
        Aeroblade(vgg_weights=lpips_files["vgg_weights"], lpips_weights=str(tmp_path / "nope.pth"))
    torch.save({"something": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"wrong\.pth: no tensor features\.0\.weight"):
        load_lpips_vgg(tmp_path / "wrong.pth", lpips_files["lpips_weights"])
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read weights"):
        load_lpips_vgg(lpips_files["vgg_weights"], tmp_path / "junk.pth")


def test_aeroblade_reconstruction_follows_their_recipe(tiny_dirs, tmp_path):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

    ae = load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)
    path = save_png(natural_crops(1, seed=6)[0], tmp_path / "x.png")
    frame, _ = score_images(ae, [path], method=Aeroblade(distance="l2"), progress=False)
    x = load_image(path, 32)[0][None]
    with torch.no_grad():
        latents = retrieve_latents(ae.model.encode(x * 2 - 1), generator=torch.Generator().manual_seed(1))
        recon = (ae.model.decode(latents).sample / 2 + 0.5).clamp(0, 1)
    recon = (recon * 255).to(torch.uint8).float() / 255  # their PNG save truncates to 8 bits
    assert frame["score"].iloc[0] == pytest.approx(F.mse_loss(recon, x).item(), rel=1e-5)


# -- memory: auto batch and halving on out-of-memory ------------------------------------------------------------
def test_auto_batch_size(monkeypatch):
    sd_like = SimpleNamespace(decoder_width=128)  # an SD-class decoder: 128 channels at full resolution
    assert memory.auto_batch_size(sd_like, 512, torch.device("cpu"), backward=True) == memory.MAX_AUTO_BATCH
    assert memory.bytes_per_image(sd_like, 512, backward=True) == memory.SAVED_ACTIVATIONS_BACKWARD * 128 * 512**2 * 4
    assert memory.bytes_per_image(sd_like, 512, backward=True, dtype=torch.float16) == \
        memory.bytes_per_image(sd_like, 512, backward=True) // 2
    free = 24 * 1024 ** 3
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, free))
    per_image = memory.bytes_per_image(sd_like, 512, backward=True)
    assert memory.auto_batch_size(sd_like, 512, torch.device("cuda"), backward=True) == int(0.8 * free // per_image)
    assert memory.auto_batch_size(sd_like, 512, torch.device("cuda"), backward=False) > \
        memory.auto_batch_size(sd_like, 512, torch.device("cuda"), backward=True)
    assert memory.auto_batch_size(sd_like, 8192, torch.device("cuda"), backward=True) == 1
    assert memory.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert memory.is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not memory.is_out_of_memory(RuntimeError("shape mismatch"))


class _FlakyMemory(Aeroblade):
    """Aeroblade[l2] that runs out of memory on batches larger than ``limit`` after the first call."""

    calls: list

    def score_batch(self, ae, images, records):
        self.calls.append(len(records))
        if len(self.calls) > 1 and len(records) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB (injected)")
        return super().score_batch(ae, images, records)


def test_out_of_memory_halves_the_batch_and_keeps_results(tiny, image_sets, tmp_path, caplog):
    paths = image_sets["own"] + image_sets["real"]  # 12 images
    reference, _ = score_images(tiny[0], paths, method=Aeroblade(distance="l2"), batch_size=12, progress=False)
    flaky = _FlakyMemory(distance="l2")
    object.__setattr__(flaky, "calls", [])
    store = ResultStore(tmp_path / "store")
    with caplog.at_level(logging.WARNING, logger="latenttracer.tracing"):
        frame, _ = score_images(tiny[0], paths, method=flaky, batch_size=4, store=store, progress=False)
    assert flaky.calls == [4, 4, 2, 2, 2, 2]  # first batch done, then halved and the same images retried
    assert "out of memory with a batch of 4 images" in caplog.text and "batches of 2" in caplog.text
    assert frame["score"].tolist() == pytest.approx(reference["score"].tolist(), rel=1e-6)
    assert len(list(store.root.glob("part-*.parquet"))) == 5 and len(store.load()) == 12


def test_out_of_memory_at_batch_one_and_other_errors_propagate(tiny, image_sets):
    class AlwaysOOM(Aeroblade):
        def score_batch(self, ae, images, records):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    class Broken(Aeroblade):
        def score_batch(self, ae, images, records):
            raise RuntimeError("something else")

    with pytest.raises(torch.OutOfMemoryError):
        score_images(tiny[0], image_sets["real"][:3], method=AlwaysOOM(distance="l2"), batch_size=2, progress=False)
    with pytest.raises(RuntimeError, match="something else"):
        score_images(tiny[0], image_sets["real"][:3], method=Broken(distance="l2"), batch_size=2, progress=False)


def test_inversion_batch_size_auto_is_valid_and_not_in_the_hash():
    assert InversionConfig().batch_size == "auto"
    assert InversionConfig(batch_size="auto").hash() == InversionConfig(batch_size=3).hash()
    with pytest.raises(ValueError, match="'auto'"):
        InversionConfig(batch_size="big")
    with pytest.raises(ValueError, match="either config"):
        score_images(None, [], InversionConfig(), method="aedr")


# -- aeroblade: the weight-free distances, against independent computations -------------------------------------
def _their_reconstruction(ae, x01, *, quantize: bool):
    """AEROBLADE's reconstruction written out with diffusers: posterior sample with a generator seeded 1."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

    with torch.no_grad():
        latents = retrieve_latents(ae.model.encode(x01 * 2 - 1), generator=torch.Generator().manual_seed(1))
        recon = (ae.model.decode(latents).sample / 2 + 0.5).clamp(0, 1)
    return (recon * 255).to(torch.uint8).float() / 255 if quantize else recon


def test_aeroblade_ssim_against_scikit_image_per_channel(tiny_dirs, tmp_path):
    from skimage.metrics import structural_similarity

    ae = load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)
    paths = [save_png(x, tmp_path / f"{i}.png") for i, x in enumerate(natural_crops(2, seed=7))]
    frame, _ = score_images(ae, paths, method=Aeroblade(distance="ssim"), progress=False)
    for path, score in zip(paths, frame["score"]):
        x = load_image(path, 32)[0][None]
        recon = _their_reconstruction(ae, x, quantize=True)
        a, b = x[0].double().numpy(), recon[0].double().numpy()
        # The stated settings: Gaussian window sigma 1.5, population covariances, data range 1; SSIM of an RGB
        # image = the mean of its three channels' SSIM (each channel computed on its own here).
        per_channel = [structural_similarity(a[c], b[c], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False) for c in range(3)]
        # the reconstruction is float32 and decoded here alone, in the method within a batch: last-bit differences
        # of the decoder (they depend on the CPU's kernels and the batch) reach the SSIM at about 1e-9
        assert score == pytest.approx(1 - np.mean(per_channel), rel=1e-7, abs=1e-12)
        assert 0 < score < 1
    from latenttracer.methods.aeroblade import ssim_distance

    same = natural_crops(2, seed=8)
    assert ssim_distance(same, same) == pytest.approx([0.0, 0.0], abs=1e-12)
    assert ssim_distance(same, 1 - same)[0] > 1  # anti-correlated images: SSIM < 0


def test_aeroblade_without_quantize_output_is_the_unrounded_distance(tiny_dirs, tmp_path):
    ae = load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)
    paths = [save_png(x, tmp_path / f"{i}.png") for i, x in enumerate(natural_crops(3, seed=6))]
    rounded, _ = score_images(ae, paths, method=Aeroblade(distance="l2"), progress=False)
    exact, _ = score_images(ae, paths, method=get_method("aeroblade", {"distance": "l2", "quantize_output": False}),
                            progress=False)
    unrounded, truncated = [], []
    for p in paths:  # one image at a time: each has its own generator
        x = load_image(p, 32)[0][None]
        unrounded.append(F.mse_loss(_their_reconstruction(ae, x, quantize=False), x).item())
        truncated.append(F.mse_loss(_their_reconstruction(ae, x, quantize=True), x).item())
    assert exact["score"].tolist() == pytest.approx(unrounded, rel=1e-5)
    # (a pixel at an 8-bit boundary may round either way in a different float path: 1e-4, not 1e-5)
    assert rounded["score"].tolist() == pytest.approx(truncated, rel=1e-4)
    assert ((exact["score"] - rounded["score"]).abs() > 1e-3 * exact["score"]).all()
    assert run_hash(ae, Aeroblade(distance="l2", quantize_output=False), ImageOptions()) != \
        run_hash(ae, Aeroblade(distance="l2"), ImageOptions())


# -- presets: conf/method/*.yaml build their methods -------------------------------------------------------------
def _preset(name: str) -> dict:
    from pathlib import Path

    cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf" / "method" / f"{name}.yaml"))
    return cfg.get("method", cfg)  # ronan.yaml is a _global_ package: its method node is nested


def test_ronan_full_preset_builds_ronans_full_settings():
    preset = _preset("ronan_full")
    built = get_method(preset["name"], preset["options"])
    assert type(built) is Ronan
    c = built.config
    assert (c.init, c.lr, c.steps, c.schedule, c.strategy, c.distance) == \
        ("random", 0.1, 1500, "constant", "min", "l2")
    sized = _preset("ronan")  # the sized default scores fewer images, with the same settings
    assert get_method(sized["name"], sized["options"]) == built
