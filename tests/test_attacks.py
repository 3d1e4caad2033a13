"""latenttracer.attacks: the analytic evasion budget, the forgery bound, determinism, hand-counted success rates, and
every registered method attacked (no list to edit)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import decoded_images, natural_crops

from latenttracer import attacks as A
from latenttracer.autoencoders import Autoencoder, load_autoencoder
from latenttracer.intervals import wilson
from latenttracer.inversion import InversionConfig
from latenttracer.methods import METHODS, LatentTracer, get_method
from latenttracer.tracing import score_images


class CurvedAE(Autoencoder):
    """A small smooth decoder with an exact encoder on its range: ``D(z) = 0.5 + 0.3 tanh(W z)`` (16 latent
    values, 8x8 RGB), ``E(x) = W^+ atanh((x - 0.5) / 0.3)``. Inversion from E(x) starts at the best latent of an
    image on the range, so the score is the squared distance to the range (up to the loop's refinement)."""

    family = "curved-test"

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        net = torch.nn.Linear(16, 3 * 8 * 8, bias=False)
        with torch.no_grad():
            net.weight.copy_(torch.randn(3 * 8 * 8, 16, generator=g) / 4)
        super().__init__(net, name="curved", resolution=8, fingerprint=f"curved{seed}")
        self.pinv = torch.linalg.pinv(net.weight.detach())

    @classmethod
    def can_load(cls, source, *, local_files_only=None):
        return False

    @classmethod
    def load(cls, source, **kwargs):
        raise NotImplementedError

    @property
    def decoder_width(self) -> int:
        return 3

    def encode(self, images):
        t = ((images.reshape(len(images), -1).float() - 0.5) / 0.3).clamp(-0.999, 0.999)
        return torch.atanh(t) @ self.pinv.T

    def decode(self, latents):
        return (0.5 + 0.3 * torch.tanh(self.model(latents))).reshape(len(latents), 3, 8, 8)

    def reconstruct(self, x, *, generators=None, quantize=True):
        return self.decode(self.encode((x + 1) / 2)) * 2 - 1


def _scorer(tmp_path, ae, method):
    return A.file_scorer(tmp_path / "attacked", lambda p: score_images(ae, p, method=method, progress=False)[0])


def _own(ae: CurvedAE, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.randn(n, 16, generator=torch.Generator().manual_seed(seed)) * 0.5
    with torch.no_grad():
        return z, ae.decode(z)


LT = LatentTracer(InversionConfig(steps=30, lr=0.01, device="cpu", batch_size=8))


def test_orthogonal_perturbation_raises_the_score_by_its_mse():
    """The analytic evasion budget: a perturbation orthogonal to the decoder's range at D(z*), of MSE m, raises
    LatentTracer's score by about m (second-order terms of the curved range aside)."""
    from latenttracer.inversion import invert

    ae = CurvedAE()
    z, x = _own(ae, 4)
    clean = [r.score for r in invert(ae, x, LT.config)]
    assert max(clean) < 1e-6  # an image of the range: distance 0 (float32), far below the m below
    for m in (1e-4, 4e-4):
        noise = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        deltas = []
        for i in range(4):
            d = A.orthogonal_to_range(ae, z[i], noise[i])
            deltas.append(d * math.sqrt(m) / d.square().mean().sqrt())
        moved = [r.score for r in invert(ae, x + torch.stack(deltas), LT.config)]
        assert np.allclose(moved, m, rtol=0.15), (m, moved)
    # a perturbation along the range is absorbed: the score barely moves
    along = torch.stack([(ae.decode((z[i] + 0.05).unsqueeze(0))[0] - x[i]) for i in range(4)])
    assert max(r.score for r in invert(ae, x + along, LT.config)) < 1e-3 * along.square().mean().item()


def test_forged_projection_score_is_at_most_the_rounding_term(tmp_path):
    """A forgery by projection: round8(D(z*)) scores at most its distance to D(z*) (the 8-bit rounding, <=
    (0.5/255)^2 per pixel), whatever its source's score; and the source's score bounds what framing costs."""
    ae = CurvedAE()
    foreign = A.to_uint8(torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(3)))
    scorer = _scorer(tmp_path, ae, LT)
    source = pd.to_numeric(scorer(foreign)["score"]).to_numpy()
    (projected,) = A.project(foreign, scorer, ae, rounds=1)
    forged = pd.to_numeric(scorer(projected)["score"]).to_numpy()
    rounding = (0.5 / 255) ** 2
    assert (forged <= rounding + 1e-12).all() and (source > 100 * rounding).all()
    # the certificate: the forgery moved the image by at least (sqrt(s) - sqrt(score after))^2
    moved = A.mse(projected, foreign)
    assert (moved >= A.forgery_bound_mse(source, float(forged.max())) * 0.99).all()
    # forge() keeps the projection and reports its PSNR
    res = A.forge(LT, ae, foreign, scorer, float(forged.max()) * 1.01, "projection")
    assert res.success.all() and np.allclose(res.budget_psnr, A.psnr(moved))


def test_evasion_by_noise_near_the_threshold(tmp_path):
    """Evasion by noise flips an own image once the noise's MSE is about t - s (t: threshold)."""
    ae = CurvedAE()
    _, x = _own(ae, 6)
    own = A.to_uint8(x)
    scorer = _scorer(tmp_path, ae, LT)
    t = 2e-4
    res = A.evade(LT, ae, own, scorer, t, "noise", psnr_range=(20, 60), steps=4)
    assert res.success.all()
    # the tangent space is 16 of 192 dimensions: the noise that flips has MSE between t and t / (1 - 16/192), +-
    # the search's resolution (0.6 dB)
    achieved = A.mse_of_psnr(res.budget_psnr)
    assert np.median(achieved) == pytest.approx(t, rel=0.35)
    assert (res.scores > t).all()


def test_attacks_are_seeded_and_deterministic(tmp_path):
    ae = CurvedAE()
    _, x = _own(ae, 3)
    own = A.to_uint8(x)
    scorer = _scorer(tmp_path, ae, LT)
    a = A.evade(LT, ae, own, scorer, 2e-4, "noise", steps=2, seed=5)
    b = A.evade(LT, ae, own, scorer, 2e-4, "noise", steps=2, seed=5)
    c = A.evade(LT, ae, own, scorer, 2e-4, "noise", steps=2, seed=6)
    assert np.array_equal(a.attacked, b.attacked) and np.array_equal(a.budget_psnr, b.budget_psnr, equal_nan=True)
    assert not np.array_equal(a.attacked, c.attacked)
    p = A.evade(LT, ae, own, scorer, 2e-4, "pgd", steps=2)
    q = A.evade(LT, ae, own, scorer, 2e-4, "pgd", steps=2)
    assert np.array_equal(p.attacked, q.attacked)


def test_success_rates_agree_with_a_hand_count():
    n = 6
    res = A.AttackResult("noise", "l2", "none", budget_psnr=np.array([50, 45, 40, np.nan, 30, 47.0]),
                         linf=np.full(n, np.nan), budget=np.full(n, np.nan), scores=np.zeros(n),
                         attacked=np.zeros((n, 2, 2, 3), np.uint8), clean_scores=np.zeros(n),
                         success=np.array([True, True, True, False, True, True]))
    curve = A.success_curve(res, [48, 44, 35, 20]).set_index("budget_psnr")
    # by hand: >= 48 dB: image 0 (50); >= 44: 0, 1, 5; >= 35: + 2; >= 20: + 4; image 3 never
    assert curve["k"].tolist() == [1, 3, 4, 5] and (curve["n"] == 6).all()
    assert curve.loc[44, "success_rate"] == pytest.approx(0.5)
    assert (curve.loc[44, "success_lo"], curve.loc[44, "success_hi"]) == pytest.approx(wilson(3, 6))
    keep = np.array([True, True, True, True, False, False])  # only 4 eligible: 0, 1, 2 succeed, 3 never
    assert A.success_curve(res, [44], eligible=keep)["k"].tolist() == [2]
    q = A.budget_quantile(res, 0.5)
    assert q["budget"] == 45.0  # the 3rd largest of 50, 47, 45, 40, 30: half of 6 images flip from 45 dB
    # Wilson: 1 of 6 is still consistent with a rate 0.5 (hi 0.64), 5 of 6 does not establish it (lo 0.44)
    assert q["budget_small"] == 50.0 and math.isnan(q["budget_large"])


@pytest.fixture(scope="module")
def tiny(tiny_dirs):
    return load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)


def test_every_registered_method_is_attacked(tmp_path, tiny):
    """The contract: every method in the registry (a new one included, no list here) goes through evasion and
    forgery, with a white-box gradient where it has a stand-in and the noise direction otherwise."""
    from helpers.method_contracts import build

    own = A.to_uint8(decoded_images(tiny, 2, 0))
    foreign = A.to_uint8(natural_crops(2))
    projector = _scorer(tmp_path, tiny, get_method("latenttracer", {"steps": 3}))
    for name in METHODS.names():
        method = build(name, **({"steps": 3} if issubclass(METHODS.get(name), LatentTracer) else {}))
        scorer = _scorer(tmp_path, tiny, method)
        clean = pd.to_numeric(scorer(np.concatenate([own, foreign]))["score"]).to_numpy()
        t = float(np.median(clean))
        ev = A.evade(method, tiny, own, scorer, t, "pgd", steps=1, rungs=2)
        fo = A.forge(method, tiny, foreign, scorer, t, "pgd", projector=projector, steps=1, rungs=2)
        for res in (ev, fo):
            assert res.attacked.shape == own.shape and res.attacked.dtype == np.uint8
            assert res.gradient in ("danskin", "danskin-line", "exact", "transfer", "fixed-reconstruction", "none")
            assert len(res.probes) >= 3  # two rungs and one halving, at least
        assert ev.gradient != "none" or name not in ("latenttracer", "aedr", "aeroblade"), name


def test_bad_input_is_an_error(tmp_path):
    ae = CurvedAE()
    _, x = _own(ae, 1)
    own = A.to_uint8(x)
    scorer = _scorer(tmp_path, ae, LT)
    with pytest.raises(ValueError, match="attack 'projection' is not one of"):
        A.evade(LT, ae, own, scorer, 1e-4, "projection")
    with pytest.raises(ValueError, match="psnr_range"):
        A.evade(LT, ae, own, scorer, 1e-4, "noise", psnr_range=(0, 10))
    with pytest.raises(ValueError, match="uint8"):
        A.evade(LT, ae, own.astype(np.float32), scorer, 1e-4, "noise")
