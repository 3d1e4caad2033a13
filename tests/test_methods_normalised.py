"""The defining property of each score added for re-encoded images (issue 16), on constructed cases: ``lowpass``
ignores what averages out within its blocks, ``relative`` divides out a uniform difficulty."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import decoded_images, diffusers_family, make_autoencoder, save_png

from latenttracer.methods import get_method
from latenttracer.methods.lowpass import lowpass_distance
from latenttracer.methods.relative import relative_score
from latenttracer.tracing import score_images


def _wrapped():
    module = make_autoencoder("AutoencoderTiny", 0)
    return diffusers_family(module)(module, name="tiny", resolution=32)


def _block_pattern(shape, factor: int, amplitude: float) -> torch.Tensor:
    """+a / -a alternating inside every factor x factor block: zero mean in each block, not zero anywhere."""
    h, w = shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return amplitude * (1 - 2 * ((yy + xx) % 2)).float().expand(shape)


def test_lowpass_distance_ignores_what_averages_out_within_a_block():
    torch.manual_seed(0)
    recon, target = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16) * 0.5 + 0.25
    pattern = _block_pattern(target.shape, 2, 0.2)
    d = lowpass_distance(2)
    assert torch.allclose(d(recon, target + pattern), d(recon, target), atol=1e-7)
    plain_mse = ((recon - target) ** 2).mean((1, 2, 3))
    assert not torch.allclose(((recon - target - pattern) ** 2).mean((1, 2, 3)), plain_mse)
    assert d(target, target).abs().max() == 0
    # the decoder-only form compares the filtered output with the pixels as they are: the pattern counts there
    assert not torch.allclose(lowpass_distance(2, "decoder")(recon, target + pattern),
                              lowpass_distance(2, "decoder")(recon, target))


def test_lowpass_score_is_unchanged_by_a_within_block_pattern_latenttracers_is_not(tmp_path):
    ae = _wrapped()
    x = torch.round((decoded_images(ae, 2, 0) * 0.6 + 0.2) * 255) / 255  # 8-bit values, room for the pattern
    pattern = _block_pattern(x.shape, 2, 26 / 255)  # whole 8-bit levels: the saved files keep it exactly
    paths = {"plain": [], "pattern": []}
    for i in range(2):
        for name, img in (("plain", x[i]), ("pattern", x[i] + pattern[i])):
            paths[name].append(save_png(img, tmp_path / f"{name}{i}.png"))
    # a zero initial latent: the trajectory depends on the image only through the loss
    options = {"steps": 5, "init": "zeros"}
    scores = {}
    for method in ("lowpass", "latenttracer"):
        m = get_method(method, {**options, **({"lowpass_factor": 2} if method == "lowpass" else {})})
        scores[method] = {k: score_images(ae, v, method=m, progress=False)[0]["score"].to_numpy()
                          for k, v in paths.items()}
    np.testing.assert_allclose(scores["lowpass"]["pattern"], scores["lowpass"]["plain"], rtol=1e-5)
    assert (scores["latenttracer"]["pattern"] > 1.1 * scores["latenttracer"]["plain"]).all()


@pytest.mark.parametrize("factor", [0.5, 3.0, 40.0])
def test_relative_score_divides_out_a_uniform_difficulty(factor):
    trajectory = np.array([0.02, 0.015, 0.004, 0.006, 0.003])
    base = relative_score(trajectory.min(), trajectory[0])
    assert relative_score((factor * trajectory).min(), factor * trajectory[0]) == pytest.approx(base)
    assert 0 < base <= 1 and math.isnan(relative_score(0.1, 0.0))


def test_relative_method_scores_best_over_initial_loss(tmp_path):
    ae = _wrapped()
    paths = [save_png(img, tmp_path / f"{i}.png") for i, img in enumerate(decoded_images(ae, 3, 1))]
    frame, _ = score_images(ae, paths, method=get_method("relative", {"steps": 6}), progress=False)
    for row in frame.itertuples():
        assert row.score == pytest.approx(min(row.trajectory) / row.trajectory[0])
        assert row.init_loss == pytest.approx(row.trajectory[0])
    lt, _ = score_images(ae, paths, method=get_method("latenttracer", {"steps": 6}), progress=False)
    np.testing.assert_allclose(frame["score"] * frame["init_loss"], lt["score"], rtol=1e-6)
