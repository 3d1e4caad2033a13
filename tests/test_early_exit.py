"""Early exit in the one inversion loop, and the conformal exit rule learnt from calibration
(latenttracer.early_exit): its rank, its finite-sample guarantee on exchangeable images, its replay."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import decoded_images, natural_crops

from latenttracer.autoencoders import load_autoencoder
from latenttracer.early_exit import (
    ExitPolicy,
    conformal_rank,
    learn_exit_policy,
    min_risk,
    rejected_early,
    replay,
    replay_frame,
    running_min,
    wrong_exits,
)
from latenttracer.inversion import InversionConfig, authors_lr, invert
from latenttracer.metrics import calibrate_threshold

STEPS = 30
FULL = InversionConfig(steps=STEPS, batch_size=64, record_trajectory=True)


def quantise(x):
    return (x * 255).round() / 255


@pytest.fixture(scope="module")
def setting(tiny_dirs):
    """A tiny KL model; calibration = its own decoded images; a mixed evaluation batch; full-run results."""
    ae = load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)
    sibling = load_autoencoder(tiny_dirs["AutoencoderKL-1"], resolution=32)
    calibration = quantise(decoded_images(ae, 10, 0))
    evaluation = torch.cat([quantise(decoded_images(ae, 6, 1)), quantise(decoded_images(sibling, 5, 0)),
                            natural_crops(5, seed=4)])
    return {"ae": ae, "calibration": calibration, "evaluation": evaluation,
            "cal_full": invert(ae, calibration, FULL), "full": invert(ae, evaluation, FULL)}


def _score_at(results, q):
    """A threshold that is one of the scores (the ``q`` quantile, lower)."""
    return sorted(r.score for r in results)[int(q * (len(results) - 1))]


def test_off_is_unchanged(setting):
    ae, x = setting["ae"], setting["evaluation"]  # the same batch as the full run
    off = InversionConfig(steps=STEPS, record_trajectory=True, exit_threshold=1e-3, exit_ratios=(2.0,) * STEPS,
                          halve_every=50)
    assert off.hash() == InversionConfig(steps=STEPS).hash()  # cached full-run scores stay valid
    for a, b in zip(invert(ae, x, off), setting["full"]):
        assert (a.score, a.best_step, a.trajectory, a.exit, a.exit_step) == (b.score, b.best_step, b.trajectory, "",
                                                                            None)
        assert a.steps_run == STEPS
    on = dataclasses.replace(off, early_exit=True)
    assert on.hash() != off.hash()  # an early-exited score is not a full-run score
    assert dataclasses.replace(on, exit_ratios=(3.0,) * STEPS).hash() != on.hash()
    assert InversionConfig(halve_every=10).hash() != InversionConfig().hash()
    assert InversionConfig(schedule="constant", halve_every=10).hash() == InversionConfig(schedule="constant").hash()


def test_exact_exit_matches_the_full_run(setting):
    ae, full = setting["ae"], setting["full"]
    t = _score_at(full, 0.5)
    cfg = dataclasses.replace(FULL, early_exit=True, exit_threshold=t)  # no ratios: only the exact part
    early = invert(ae, setting["evaluation"], cfg)
    exited = 0
    for e, f in zip(early, full):
        assert (e.score <= t) == (f.score <= t)  # same verdict
        if e.exit:
            exited += 1
            assert e.exit == "threshold" and f.score <= e.score <= t
            k, rm = e.exit_step, running_min(f.trajectory)
            assert e.steps_run == k + 1 and rm[k] <= t and (k == 0 or rm[k - 1] > t)  # the first step below t
            assert e.score == pytest.approx(float(rm[k]), rel=1e-5)  # to the batch-size rounding (see below)
        else:  # ran to the end: the full run's result (in a smaller batch: to its rounding)
            assert (e.best_step, e.steps_run) == (f.best_step, STEPS) and e.score == pytest.approx(f.score, rel=1e-5)
    assert 0 < exited < len(full)


class ElementwiseAE:
    """A stand-in autoencoder whose decoder has no arithmetic across images or pixels (per-pixel affine maps and a
    sigmoid): its per-image losses do not depend on the batch size even in the last bit, so batch compaction
    must leave every trajectory bit-equal. (A convolutional decoder on CPU rounds differently at another batch
    size, ~1e-7 relative, with or without early exit; the tiny KL test below checks that case to 1e-5.)"""

    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self, size=8):
        self.w = torch.linspace(0.5, 1.5, 3 * size * size).reshape(1, 3, size, size)

    def to(self, device, dtype):
        return self

    def encode(self, x):
        return 0.3 * (x - 0.5)

    def decode(self, z):
        return torch.sigmoid(self.w * z + 0.2 * z.square())


def _exits_at_many_steps(ae, x, full, t_quantile, top_ratio):
    t = _score_at(full, t_quantile)
    ratios = tuple(float(r) for r in np.linspace(top_ratio, 1.0, STEPS))  # an arbitrary, tight bound: many exits
    cfg = dataclasses.replace(FULL, early_exit=True, exit_threshold=t, exit_ratios=ratios, record_latent=True)
    early = invert(ae, x, cfg)
    assert len({e.exit_step for e in early if e.exit}) >= 3 and {e.exit for e in early} >= {"threshold", "bound"}
    return cfg, early


def test_compaction_is_bit_exact_with_independent_rows():
    ae = ElementwiseAE()
    gen = torch.Generator().manual_seed(0)
    belonging = ae.decode(torch.randn(8, 3, 8, 8, generator=gen))
    x = torch.cat([belonging, torch.rand(8, 3, 8, 8, generator=gen)])
    full = invert(ae, x, FULL)
    cfg, early = _exits_at_many_steps(ae, x, full, 0.5, 12.0)
    for e, f in zip(early, full):
        assert e.trajectory == f.trajectory[:e.steps_run]  # bit-equal up to the exit step
        assert (e.score, e.exit_step, e.exit) == replay(f.trajectory, cfg)
        assert e.steps_run == (e.exit_step + 1 if e.exit else STEPS)


def test_compaction_keeps_every_trajectory_up_to_its_exit(setting):
    """Images leave the batch at different steps; every image's losses up to its exit equal the no-exit run's."""
    ae, full, x = setting["ae"], setting["full"], setting["evaluation"]
    cfg, early = _exits_at_many_steps(ae, x, full, 0.5, 3.0)
    for j, (e, f) in enumerate(zip(early, full)):
        assert e.steps_run == (e.exit_step + 1 if e.exit else STEPS)
        torch.testing.assert_close(torch.tensor(e.trajectory), torch.tensor(f.trajectory[:e.steps_run]), rtol=1e-5,
                                   atol=0)
        assert e.exit_step == replay(f.trajectory, cfg)[1] and e.exit == replay(f.trajectory, cfg)[2]
        assert e.init_loss == pytest.approx(f.init_loss, rel=1e-6) and e.best_step == int(np.argmin(e.trajectory))
        decoded = ae.decode(e.best_latent[None].to(ae.device))
        assert ((decoded - x[j][None]) ** 2).mean().item() == pytest.approx(e.score, rel=1e-5)


def test_conformal_rank_and_the_smallest_risk():
    assert conformal_rank(24, 0.05) == 24 and conformal_rank(24, 0.03) == 25  # 25 > 24: q infinite
    assert conformal_rank(19, 0.05) == 19 and conformal_rank(9, 0.1) == 9 and conformal_rank(9, 0.09) == 10
    assert min_risk(24) == pytest.approx(0.04) and min_risk(3) == 0.25


def _decays(rng, n, steps=20, scale=1.0):
    """``n`` exchangeable loss curves: a random start, a random rate of fall, a random floor, a little noise."""
    k = np.arange(steps)
    start = np.exp(rng.normal(3.0, 0.6, (n, 1)))
    rate = rng.uniform(0.15, 0.6, (n, 1))
    floor = np.exp(rng.normal(0.0, 0.5, (n, 1)))
    return scale * (floor + start * np.exp(-rate * k)) * np.exp(rng.normal(0, 0.05, (n, steps)))


def test_the_rule_is_the_quantile_of_leave_one_out_scores():
    """By hand on four belonging images: the median shape of all four, each image's score against the median of the
    other three and a zero over its pending steps, q the rank-th smallest score; too few scores for the risk leave
    the exact exit only."""
    trajectories = [[8.0, 4.0, 2.0, 1.0], [6.0, 3.0, 0.5, 0.5], [9.0, 6.0, 3.0, 1.5], [4.0, 2.0, 1.0, 1.0],
                    [20.0, 20.0, 20.0, 20.0]]  # the last ends above t = 2: not belonging, not used
    policy = learn_exit_policy(trajectories, 2.0, risk=0.5)
    assert (policy.n_calibration, policy.n_scores) == (5, 4)
    a = np.array([running_min(t) for t in trajectories[:4]]) / 2.0
    shape = np.median(a, axis=0)
    by_hand = []
    for i in range(4):
        lo = np.median(np.vstack([np.delete(a, i, axis=0), np.zeros((1, 4))]), axis=0)  # 3 others and a zero
        pending = [k for k in range(3) if a[i, k] > 1]
        by_hand.append(max(a[i, k] / lo[k] for k in pending) if pending else -math.inf)
    assert conformal_rank(4, 0.5) == 3
    assert policy.q == pytest.approx(sorted(by_hand)[2])
    assert policy.bound[:3] == pytest.approx(tuple(np.maximum(policy.q * shape[:3], 1.0)))
    assert policy.bound[-1] == math.inf  # the last step ends the run anyway
    assert "4 end belonging: risk >= 0.2 for any exit from above" in policy.allows()
    exact = learn_exit_policy(trajectories, 2.0, risk=0.19)  # rank 5 of 4 scores: q infinite
    assert exact.bound is None and math.isinf(exact.q) and "only the exact exit" in exact.allows()
    assert exact.apply(InversionConfig(steps=4)).exit_ratios is None
    with pytest.raises(ValueError, match="risk must be a number in"):
        learn_exit_policy(trajectories, 2.0, risk=1.0)
    with pytest.raises(ValueError, match="differ in length"):
        learn_exit_policy([[1.0, 2.0], [1.0]], 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        learn_exit_policy([[1.0, math.nan]], 1.0)


@pytest.mark.parametrize("risk", [0.05, 0.2])
def test_wrong_exits_among_exchangeable_images_stay_within_the_risk(risk):
    """The guarantee, checked by simulation: 100 calibration draws of 60 images (threshold at 95% TPR, learnt on
    them), 100 fresh images each from the same distribution; the mean over draws of the wrong-exit rate among
    those the full run calls belonging is at most the risk, to three standard errors of that mean (a rule that
    learnt its shape and its level on the same images exceeds it: the next test)."""
    rng = np.random.default_rng(1)
    config = InversionConfig(steps=20)
    rates = []
    for _ in range(100):
        cal = _decays(rng, 60)
        t = calibrate_threshold(cal.min(1), 0.95)
        fast = learn_exit_policy(list(cal), t, risk, config).apply(config)
        w, n = wrong_exits(list(_decays(rng, 100)), fast)
        rates.append(w / n)
    assert np.mean(rates) <= risk + 3 * np.std(rates) / math.sqrt(len(rates))
    assert np.mean(rates) >= risk / 4  # and it is not the exact exit in disguise: the bound does stop images


def test_in_sample_bounds_break_the_guarantee_the_rule_keeps():
    """The reason for the leave-one-out scores: a level from each image's ratio to a shape that includes the image
    itself rejects more than the risk on new ones. The rule's rate on the same draws is lower."""
    rng = np.random.default_rng(2)
    config = InversionConfig(steps=20)
    kept = same = total = 0
    for _ in range(60):
        cal = _decays(rng, 40)
        t = calibrate_threshold(cal.min(1), 0.95)
        new = list(_decays(rng, 100))
        policy = learn_exit_policy(list(cal), t, 0.1, config)
        belonging = running_min_all(cal)[running_min_all(cal)[:, -1] <= t] / t
        shape = np.median(belonging, axis=0)
        level = np.max(np.where(belonging > 1, belonging / shape, -math.inf)[:, :-1], axis=1)
        in_sample = np.maximum(np.quantile(level, 0.9) * shape, 1.0)
        in_sample[-1] = math.inf
        kept += wrong_exits(new, policy.apply(config))[0]
        w, n = wrong_exits(new, dataclasses.replace(config, early_exit=True, exit_threshold=t,
                                                    exit_ratios=tuple(in_sample)))
        same, total = same + w, total + n
    assert same / total > 0.1 and kept / total < same / total


def running_min_all(curves):
    return np.minimum.accumulate(curves, axis=1)


def test_learnt_rule_in_the_loop_equals_its_replay(setting, tmp_path):
    """The rule learnt from the calibration images' full runs, applied by the loop: every image gets the replay's
    exit and keeps its trajectory up to it; the file round trip keeps the rule; other settings are refused."""
    ae, cal_full, full = setting["ae"], setting["cal_full"], setting["full"]
    t = _score_at(cal_full, 0.8)
    policy = learn_exit_policy([r.trajectory for r in cal_full], t, risk=0.4, config=FULL)
    assert policy.bound is not None and policy.n_scores == 8  # every belonging calibration image scores
    cfg = policy.apply(FULL)
    live = invert(ae, setting["evaluation"], cfg)
    for e, f in zip(live, full):
        score, k, kind = replay(f.trajectory, cfg)
        assert (e.exit, e.exit_step) == (kind, k)
        torch.testing.assert_close(torch.tensor(e.trajectory), torch.tensor(f.trajectory[:e.steps_run]), rtol=1e-5,
                                   atol=0)
        assert kind == "bound" or (e.score <= t) == (f.score <= t)  # only the bound can change a verdict
    assert "bound" in {e.exit for e in live}
    assert ExitPolicy.load(policy.save(tmp_path / "rule.json")) == policy
    with pytest.raises(ValueError, match="other inversion settings"):
        policy.apply(dataclasses.replace(FULL, lr=0.2))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        ExitPolicy.load(tmp_path / "bad.json")


def test_replay_by_hand():
    cfg = InversionConfig(steps=4, early_exit=True, exit_threshold=1.5, exit_ratios=(9.0, 2.0, 2.0, math.inf))
    trajectories = [[4.0, 2.0, 3.0, 1.0], [9.0, 1.0, 1.0, 1.0], [5.0, 5.0, 5.0, 5.0]]
    # an image whose running minimum 3.5 at step 1 is above 2 * 1.5: rejected there (its final 1.2 would pass)
    assert replay([4.0, 3.5, 3.5, 1.2], cfg) == (3.5, 1, "bound")
    assert replay([4.0, 1.4, 1.0, 1.0], cfg) == (pytest.approx(1.4), 1, "threshold")
    assert rejected_early(trajectories + [[4.0, 3.5, 3.5, 1.2]], cfg) == [3]
    assert wrong_exits(trajectories + [[4.0, 3.5, 3.5, 1.2]], cfg) == (1, 3)


def test_config_validation_names_the_key():
    with pytest.raises(ValueError, match="exit_threshold"):
        InversionConfig(early_exit=True)
    with pytest.raises(ValueError, match="exit_ratios: 3 ratios for 100"):
        InversionConfig(early_exit=True, exit_threshold=0.1, exit_ratios=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="exit_ratios: every ratio must be a number > 0"):
        InversionConfig(exit_ratios=[1.0, 0.0], steps=2)
    with pytest.raises(ValueError, match="strategy 'min'"):
        InversionConfig(early_exit=True, exit_threshold=0.1, strategy="last")
    with pytest.raises(ValueError, match="halve_every"):
        InversionConfig(halve_every=0)
    assert InversionConfig.from_dict({"exit_ratios": [1.0, 2.0], "steps": 2}).exit_ratios == (1.0, 2.0)


def test_halve_every_changes_the_schedule(setting):
    assert [authors_lr(0.2, i, halve_every=10) for i in (0, 1, 10, 11, 20, 21)] == [0.2, 0.1, 0.1, 0.05, 0.05,
                                                                                     0.025]
    ae, x = setting["ae"], setting["evaluation"][:2]
    every10 = invert(ae, x, InversionConfig(steps=25, halve_every=10, record_trajectory=True))
    authors = invert(ae, x, InversionConfig(steps=25, record_trajectory=True))
    for a, b in zip(every10, authors):
        assert a.trajectory[:12] == b.trajectory[:12] and a.trajectory[12:] != b.trajectory[12:]


def test_replay_frame_is_replay_per_trajectory():
    """The batched replay (all images of one length a step at a time) gives each trajectory what :func:`replay`
    gives it alone: score, steps run and exit kind, on trajectories of mixed lengths and shapes."""
    rng = np.random.default_rng(3)
    trajectories = [np.exp(rng.normal(0, 1, n)).cumsum()[::-1] * rng.uniform(0.2, 3) for n in [6] * 40 + [3] * 5]
    trajectories += [rng.uniform(0.5, 2.0, 6) for _ in range(20)]  # not monotone: the running minimum decides
    cfg = InversionConfig(steps=6, early_exit=True, exit_threshold=4.0, exit_ratios=(9.0, 5.0, 3.0, 2.0, 1.5, 1.0))
    six = [t for t in trajectories if len(t) == 6]
    frame = replay_frame(six, cfg)
    for i, t in enumerate(six):
        score, k, kind = replay(t, cfg)
        assert frame["score"][i] == score and frame["exit"][i] == kind
        assert frame["steps_run"][i] == (k + 1 if k is not None else len(t))
    assert {"threshold", "bound", ""} <= set(frame["exit"])  # every kind of ending was exercised
    short = [t for t in trajectories if len(t) == 3]
    mixed = replay_frame(short + trajectories[:4], cfg)
    for i, t in enumerate(short + trajectories[:4]):
        score, k, kind = replay(t, cfg)
        assert (mixed["score"][i], mixed["exit"][i]) == (score, kind)
        assert mixed["steps_run"][i] == (k + 1 if k is not None else len(t))
