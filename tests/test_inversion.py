import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIGS, decoded_images, make_autoencoder, natural_crops

from latenttracer.autoencoders import FAMILIES, load_autoencoder
from latenttracer.inversion import InversionConfig, authors_lr, invert

FAST = InversionConfig(steps=40, batch_size=64)


def quantise(x):
    return (x * 255).round() / 255  # what saving as an 8-bit PNG does


@pytest.mark.parametrize("class_name", list(TINY_CONFIGS))
def test_belonging_images_score_far_below_sibling_and_natural(tiny_dirs, class_name):
    ae = load_autoencoder(tiny_dirs[f"{class_name}-0"], resolution=32)
    sibling = load_autoencoder(tiny_dirs[f"{class_name}-1"], resolution=32)
    own, other, natural = quantise(decoded_images(ae, 6, 0)), quantise(decoded_images(sibling, 6, 0)), natural_crops(6)
    images = torch.cat([own, other, natural])
    res = invert(ae, images, dataclasses.replace(FAST, record_trajectory=True, record_latent=True))
    s = torch.tensor([r.score for r in res])
    s_own, s_other, s_nat = s[:6], s[6:12], s[12:]
    assert s_own.max() < s_other.min(), (s_own, s_other)
    assert s_own.median() < 0.7 * s_other.median()
    assert s_own.max() < s_nat.median()
    # The score is the minimum of the recorded trajectory at best_step, and re-decoding the stored best latent,
    # outside the loop, gives that loss again; for its own images the optimisation must beat the encoder start.
    with torch.no_grad():
        redecoded = ((ae.decode(torch.stack([r.best_latent for r in res])) - images) ** 2).flatten(1).mean(1)
    for k, r in enumerate(res):
        assert r.status == "ok" and len(r.trajectory) == FAST.steps
        assert r.init_loss == pytest.approx(r.trajectory[0], rel=1e-6)
        assert r.best_step == min(range(FAST.steps), key=r.trajectory.__getitem__)
        assert r.score == pytest.approx(r.trajectory[r.best_step], rel=1e-6)
        assert redecoded[k].item() == pytest.approx(r.score, rel=1e-3), k
    assert all(r.best_step > 0 and r.score < 0.9 * r.init_loss for r in res[:6])


def test_batch_independence(tiny_dirs):
    ae = load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)
    images = torch.cat([natural_crops(8, seed=3), quantise(decoded_images(ae, 8, 1))])
    cfg = InversionConfig(steps=30, batch_size=16)
    together = invert(ae, images, cfg)
    for k in (0, 9):
        alone = invert(ae, images[k:k + 1], cfg)[0]
        assert abs(alone.score - together[k].score) / together[k].score < 1e-5
        assert alone.best_step == together[k].best_step


def test_authors_lr_schedule_values():
    assert authors_lr(0.05, 0) == 0.05
    assert {authors_lr(0.05, i) for i in range(1, 51)} == {0.025}
    assert {authors_lr(0.05, i) for i in range(51, 100)} == {0.0125}
    assert authors_lr(0.05, 101) == 0.00625
    assert authors_lr(0.05, 77, "constant") == 0.05


def _authors_reference(ae, x, steps, lr):
    """The authors' loop, transcribed: score before each update, halve lr after steps with i % 50 == 0."""
    z = ae.encode(x).clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    losses, lrs = [], []
    for i in range(steps):
        loss = torch.nn.MSELoss(reduction="none")(x, ae.decode(z)).mean()
        losses.append(loss.item())
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 50 == 0:
            for g in opt.param_groups:
                g["lr"] *= 0.5
    return losses, lrs


def test_engine_matches_authors_loop_step_by_step(tiny_dirs):
    ae = load_autoencoder(tiny_dirs["AutoencoderTiny-0"], resolution=32)
    x = natural_crops(1, seed=5)
    steps = 60  # covers both halvings (after step 0 and after step 50)
    ref_losses, ref_lrs = _authors_reference(ae, x, steps, 0.05)
    assert ref_lrs == [authors_lr(0.05, i) for i in range(steps)]
    res = invert(ae, x, InversionConfig(steps=steps, record_trajectory=True))[0]
    assert len(res.trajectory) == steps
    torch.testing.assert_close(torch.tensor(res.trajectory), torch.tensor(ref_losses), rtol=1e-5, atol=1e-9)
    assert res.score == pytest.approx(min(ref_losses), rel=1e-5)
    assert res.init_loss == pytest.approx(ref_losses[0], rel=1e-6)
    assert res.best_step == min(range(steps), key=ref_losses.__getitem__)


def test_steps_zero_is_plain_reconstruction_and_last_strategy(tiny_dirs):
    ae = load_autoencoder(tiny_dirs["VQModel-0"], resolution=32)
    x = natural_crops(3, seed=2)
    zero = invert(ae, x, InversionConfig(steps=0))
    plain = ((ae.decode(ae.encode(x)) - x) ** 2).flatten(1).mean(1)
    for r, p in zip(zero, plain):
        assert r.score == pytest.approx(p.item(), rel=1e-5) and r.best_step == 0 and r.score == r.init_loss
    last = invert(ae, x, InversionConfig(steps=10, strategy="last", record_trajectory=True))
    assert all(r.score == r.trajectory[-1] and r.best_step == 9 for r in last)


def test_l1_distance_and_init_options(tiny_dirs):
    ae = load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)
    x = natural_crops(2, seed=7)
    l1 = invert(ae, x, InversionConfig(steps=0, distance="l1"))[0]
    assert l1.score == pytest.approx((ae.decode(ae.encode(x[:1])) - x[:1]).abs().mean().item(), rel=1e-5)
    zeros = invert(ae, x, InversionConfig(steps=0, init="zeros"))[0]
    at_zero = ae.decode(torch.zeros_like(ae.encode(x[:1])))
    assert zeros.init_loss == pytest.approx(((at_zero - x[:1]) ** 2).mean().item(), rel=1e-5)


def test_random_init_is_deterministic_per_seed(tiny_dirs):
    ae = load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)
    x = natural_crops(3, seed=1)
    cfg = InversionConfig(init="random", steps=5, seed=3)
    a, b = invert(ae, x, cfg), invert(ae, x, cfg)
    assert [r.score for r in a] == [r.score for r in b]
    c = invert(ae, x, InversionConfig(init="random", steps=5, seed=4))
    assert [r.init_loss for r in a] != [r.init_loss for r in c]
    assert cfg.hash() != InversionConfig(init="random", steps=5, seed=4).hash()
    assert InversionConfig(seed=1).hash() == InversionConfig(seed=2, batch_size=3, device="cpu").hash()


def test_non_finite_loss_fails_that_image_only(tiny_dirs):
    ae = load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)
    x = natural_crops(4, seed=9)
    bad = x.clone()
    bad[2, 0, 0, 0] = math.nan
    cfg = InversionConfig(steps=8)
    res = invert(ae, bad, cfg)
    assert res[2].status == "failed" and "non-finite loss" in res[2].reason and math.isnan(res[2].score)
    clean = invert(ae, x[[0, 1, 3]], cfg)
    for got, want in zip([res[0], res[1], res[3]], clean):
        assert got.status == "ok" and got.score == pytest.approx(want.score, rel=1e-5)


def test_config_validation_names_the_key():
    with pytest.raises(ValueError, match="inversion.init"):
        InversionConfig(init="noise")
    with pytest.raises(ValueError, match="inversion.lr"):
        InversionConfig(lr=-1)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stpes'\]"):
        InversionConfig.from_dict({"stpes": 3})


def test_images_shape_checked(tiny_dirs):
    ae = FAMILIES.get("diffusers-kl")(make_autoencoder("AutoencoderKL", 0), name="a", resolution=32)
    with pytest.raises(ValueError, match="expected shape"):
        invert(ae, torch.rand(3, 32, 32))


def _scaled(ae_dir, c: float):
    """The same autoencoder with its latent space stretched by ``c``: encode -> c * E(x), decode(z) -> D(z / c)."""
    ae = load_autoencoder(ae_dir, resolution=32)
    encode, decode = ae.encode, ae.decode
    ae.encode = lambda x: encode(x) * c
    ae.decode = lambda z: decode(z / c)
    return ae


def test_lr_scale_latent_rms_makes_the_run_invariant_to_the_latent_scale(tiny_dirs):
    from latenttracer.inversion import latent_rms, resolve_lr_scale

    base = load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)
    stretched = _scaled(tiny_dirs["AutoencoderKL-0"], 4.0)
    calibration = quantise(decoded_images(base, 6, 1))
    x = torch.cat([quantise(decoded_images(base, 3, 0)), natural_crops(3, seed=2)])
    with torch.no_grad():
        expected = float(base.encode(calibration).double().square().mean().sqrt())
    assert latent_rms(base, calibration) == pytest.approx(expected, rel=1e-3)
    assert latent_rms(stretched, calibration) == pytest.approx(4 * expected, rel=1e-3)

    cfg = InversionConfig(steps=12, lr=0.2, lr_scale="latent_rms", record_trajectory=True)
    with pytest.raises(ValueError, match="lr_scale='latent_rms'.*resolve_lr_scale"):
        invert(base, x, cfg)  # an unresolved rate is refused, never silently taken as absolute
    runs = {}
    for name, ae in {"base": base, "stretched": stretched}.items():
        resolved = resolve_lr_scale(cfg, ae, calibration)
        assert resolved.lr_scale == "absolute" and resolved.lr == pytest.approx(0.2 * latent_rms(ae, calibration))
        runs[name] = np.array([r.trajectory for r in invert(ae, x, resolved)])
    # the same trajectories (up to the 4-digit rounding of the RMS), though the absolute rates differ 4x ...
    np.testing.assert_allclose(runs["stretched"], runs["base"], rtol=2e-2, atol=1e-7)
    # ... whereas one absolute rate for both gives different runs (the stretched latent moves 4x less)
    absolute = InversionConfig(steps=12, lr=0.2, record_trajectory=True)
    a = np.array([r.trajectory for r in invert(base, x, absolute)])
    b = np.array([r.trajectory for r in invert(stretched, x, absolute)])
    assert np.abs(a[:, -1] - b[:, -1]).max() > 10 * np.abs(runs["stretched"][:, -1] - runs["base"][:, -1]).max()


def test_lr_scale_absolute_keeps_the_cache_keys():
    assert "lr_scale" not in InversionConfig().identity()
    assert InversionConfig(lr_scale="absolute").hash() == InversionConfig().hash()
    assert InversionConfig(lr_scale="latent_rms").identity()["lr_scale"] == "latent_rms"
    with pytest.raises(ValueError, match="inversion.lr_scale"):
        InversionConfig(lr_scale="per_image")


def test_cosine_schedule_values_and_loop(tiny_dirs):
    """schedule=cosine: full rate at iteration 0, lr * (1 + cos(pi i / (steps - 1))) / 2 after; the loop uses
    exactly those rates (a hand-written Adam loop with them gives the same trajectory)."""
    steps = 9
    rates = [authors_lr(0.2, i, "cosine", steps=steps) for i in range(steps)]
    assert rates[0] == 0.2 and rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert rates[(steps - 1) // 2] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    with pytest.raises(ValueError, match="step count"):
        authors_lr(0.2, 3, "cosine")
    ae = load_autoencoder(tiny_dirs["AutoencoderTiny-0"], resolution=32)
    x = natural_crops(1, seed=5)
    z = ae.encode(x).clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=rates[0])
    losses = []
    for i in range(steps):
        loss = ((ae.decode(z) - x) ** 2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = rates[i + 1] if i + 1 < steps else 0.0
    res = invert(ae, x, InversionConfig(steps=steps, lr=0.2, schedule="cosine", record_trajectory=True))[0]
    torch.testing.assert_close(torch.tensor(res.trajectory), torch.tensor(losses), rtol=1e-5, atol=1e-9)
    # a longer authors' run differs from this one
    other = invert(ae, x, InversionConfig(steps=steps, lr=0.2, record_trajectory=True))[0]
    assert other.trajectory != res.trajectory


def test_cosine_runs_are_not_cut_from_longer_runs(tmp_path, tiny_dirs):
    """A cosine run depends on its step count: invert_paths refuses to cut it from a longer run, naming why."""
    from latenttracer import protocol

    cfg = InversionConfig(steps=5, schedule="cosine")
    assert not cfg.cuttable and InversionConfig(steps=5).cuttable
    assert cfg.hash() != InversionConfig(steps=5).hash()
    ae = load_autoencoder(tiny_dirs["AutoencoderTiny-0"], resolution=32)
    with pytest.raises(ValueError, match="cosine.*cannot be cut to 5 steps"):
        protocol.invert_paths(ae, [tmp_path / "x.png"], cfg, store=None, trajectory_steps=10)
