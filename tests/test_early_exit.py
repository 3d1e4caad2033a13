"""Early exit in the one inversion loop, and the bounds learnt from calibration (latenttracer.early_exit)."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import decoded_images, natural_crops

from latenttracer.autoencoders import load_autoencoder
from latenttracer.early_exit import (
    ExitBounds,
    accepted_early,
    learn_accept_ratios,
    learn_bounds,
    learn_ratios,
    rejected_early,
    replay,
    replay_frame,
    running_min,
    statistics,
)
from latenttracer.inversion import InversionConfig, authors_lr, exit_statistic, invert, verdict

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
                      exit_margin=3.0, halve_every=50)
    assert off.hash() == InversionConfig(steps=STEPS).hash()  # cached full-run scores stay valid
    for a, b in zip(invert(ae, x, off), setting["full"]):
        assert (a.score, a.best_step, a.trajectory, a.exit, a.exit_step) == (b.score, b.best_step, b.trajectory, "",
                                                                            None)
        assert a.steps_run == STEPS
    on = dataclasses.replace(off, early_exit=True)
    assert on.hash() != off.hash()  # an early-exited score is not a full-run score
    assert dataclasses.replace(on, exit_margin=2.0).hash() != on.hash()
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


def test_learnt_bound_never_rejects_a_calibration_image(setting):
    ae, cal_full = setting["ae"], setting["cal_full"]
    bounds = learn_bounds([r.trajectory for r in cal_full], target_tpr=0.8, config=FULL)
    assert bounds.threshold == pytest.approx(sorted(r.score for r in cal_full)[7])
    assert bounds.ratios[-1] == 1.0 and all(r >= 1 for r in bounds.ratios)
    cfg = bounds.apply(FULL, margin=1.0)
    assert rejected_early([r.trajectory for r in cal_full], cfg) == []
    live = invert(ae, setting["calibration"], cfg)  # the loop itself, calibration images included
    for e, f in zip(live, cal_full):
        assert (e.score <= bounds.threshold) == (f.score <= bounds.threshold)
        assert e.exit != "bound" or f.score > bounds.threshold


def test_learn_ratios_is_the_largest_running_min_over_final():
    trajectories = [[4.0, 2.0, 3.0, 1.0], [9.0, 1.0, 1.0, 1.0], [5.0, 5.0, 5.0, 5.0]]
    # running minima / final: [4, 2, 2, 1], [9, 1, 1, 1], [1, 1, 1, 1]
    assert learn_ratios(trajectories) == (9.0, 2.0, 2.0, 1.0)
    assert learn_ratios([[1.0, 0.0]]) == (math.inf, math.inf)
    # relative to a threshold, over the images still above it whose full run is belonging (the third is not)
    assert learn_ratios(trajectories, threshold=1.5) == pytest.approx((6.0, 2 / 1.5, 2 / 1.5, 1.0))
    with pytest.raises(ValueError, match="differ in length"):
        learn_ratios([[1.0, 2.0], [1.0]])
    with pytest.raises(ValueError, match="non-finite"):
        learn_ratios([[1.0, math.nan]])
    cfg = InversionConfig(steps=4, early_exit=True, exit_threshold=1.5, exit_ratios=(9.0, 2.0, 2.0, 1.0))
    assert rejected_early(trajectories, cfg) == []
    # an image whose running minimum 3.5 at step 1 is above 2 * 1.5: rejected there (its final 1.2 would pass)
    assert replay([4.0, 3.5, 3.5, 1.2], cfg) == (3.5, 1, "bound")
    assert replay([4.0, 1.4, 1.0, 1.0], cfg) == (pytest.approx(1.4), 1, "threshold")


def test_bounds_file_round_trip_and_checks(tmp_path, setting):
    bounds = learn_bounds([r.trajectory for r in setting["cal_full"]], config=FULL)
    path = bounds.save(tmp_path / "bounds.json")
    assert ExitBounds.load(path) == bounds
    with pytest.raises(ValueError, match="other inversion settings"):
        bounds.apply(dataclasses.replace(FULL, lr=0.2))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        ExitBounds.load(tmp_path / "bad.json")


def test_config_validation_names_the_key():
    with pytest.raises(ValueError, match="exit_threshold"):
        InversionConfig(early_exit=True)
    with pytest.raises(ValueError, match="exit_ratios: 3 ratios for 100"):
        InversionConfig(early_exit=True, exit_threshold=0.1, exit_ratios=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="exit_margin"):
        InversionConfig(exit_margin=0.5)
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
    cfg = InversionConfig(steps=6, early_exit=True, exit_threshold=4.0, exit_ratios=(9.0, 5.0, 3.0, 2.0, 1.5, 1.0),
                          exit_margin=1.2)
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


# -- early accept: a bound learnt from images known not to belong ---------------------------------------------------
def test_learn_accept_ratios_is_the_lowest_running_min_of_the_rejected():
    trajectories = [[8.0, 4.0, 6.0, 3.0], [5.0, 5.0, 5.0, 5.0], [9.0, 1.0, 1.0, 1.0]]  # the third ends below t=2
    # rejected (final > 2): running minima [8, 4, 4, 3] and [5, 5, 5, 5]; their minimum per step / t
    assert learn_accept_ratios(trajectories, 2.0) == (2.5, 2.0, 2.0, 1.5)
    with pytest.raises(ValueError, match="no image above the threshold"):
        learn_accept_ratios([[1.0, 0.5]], 2.0)
    with pytest.raises(ValueError, match="negative trajectories differ in length"):
        learn_accept_ratios([[3.0, 3.0], [3.0]], 2.0)


def test_accept_rule_in_the_loop_and_the_replay():
    cfg = InversionConfig(steps=4, early_exit=True, exit_threshold=1.0, exit_ratios=(4.0, 3.0, 2.0, 1.0),
                          exit_accept_ratios=(3.0, 2.0, 1.5, 1.0), exit_accept_margin=1.0)
    # step 0: 2.5 < 3 (accept bound) and not above 4 -> accept; 1.0 <= t -> the exact exit, not accept
    assert replay([2.5, 2.0, 2.0, 2.0], cfg)[1:] == (0, "accept")
    assert replay([1.0, 1.0, 1.0, 1.0], cfg)[1:] == (0, "threshold")
    assert replay([3.5, 2.9, 3.1, 3.0], cfg)[1:] == (2, "bound")  # running minimum 2.9 > 2 * 1 at step 2
    both = dataclasses.replace(cfg, exit_ratios=(1.5, 1.5, 1.5, 1.0))  # 2.5 is above the bound and below accept
    assert replay([2.5, 2.5, 2.5, 2.5], both)[1:] == (1, "bound")  # step 0: both -> stays; step 1: above only
    wide = dataclasses.replace(cfg, exit_accept_margin=3.0)  # accept bound <= t: the exact exit takes those first
    assert replay([2.5, 2.0, 1.5, 1.2], wide)[2] != "accept"
    with pytest.raises(ValueError, match="inversion.exit_accept_ratios: 2 ratios for 4 scored steps"):
        dataclasses.replace(cfg, exit_accept_ratios=(2.0, 1.0))
    with pytest.raises(ValueError, match="inversion.exit_accept_margin: must be a number >= 1"):
        dataclasses.replace(cfg, exit_accept_margin=0.5)
    with pytest.raises(ValueError, match=r"inversion.exit_accept_ratios: every ratio must be a number > 0"):
        dataclasses.replace(cfg, exit_accept_ratios=(2.0, 1.0, 0.0, 1.0))
    # hashes: a config without accept ratios keeps the key it had before the option existed
    plain = dataclasses.replace(cfg, exit_accept_ratios=None)
    assert plain.hash() == dataclasses.replace(plain, exit_accept_margin=2.0).hash()
    assert cfg.hash() not in (plain.hash(), dataclasses.replace(cfg, exit_accept_margin=1.2).hash())


def test_learnt_accept_bound_never_accepts_a_rejected_calibration_image_and_the_loop_agrees(setting, tmp_path):
    """Accept ratios learnt from known negatives (the sibling's and natural images' full runs) and the calibration
    images above the threshold: none of those would be accepted early, and the live loop (batch compaction with
    learnt exits of both kinds) gives every image the replay's exit, its trajectory up to the exit unchanged."""
    ae, cal_full, full = setting["ae"], setting["cal_full"], setting["full"]
    negatives = full[6:]  # the sibling's decodes and natural crops
    bounds = learn_bounds([r.trajectory for r in cal_full], target_tpr=0.8, config=FULL,
                          negatives=[r.trajectory for r in negatives])
    assert bounds.n_negatives == len(negatives) and all(a > 1 for a in bounds.accept_ratios)
    cfg = bounds.apply(FULL, margin=1.5, accept_margin=1.0)
    rejected = [r.trajectory for r in [*cal_full, *negatives] if r.score > bounds.threshold]
    assert rejected and accepted_early(rejected, cfg) == []
    assert rejected_early([r.trajectory for r in cal_full], cfg) == []
    live = invert(ae, setting["evaluation"], cfg)
    for e, f in zip(live, full):
        score, k, kind = replay(f.trajectory, cfg)
        assert (e.exit, e.exit_step) == (kind, k)
        torch.testing.assert_close(torch.tensor(e.trajectory), torch.tensor(f.trajectory[:e.steps_run]), rtol=1e-5,
                                   atol=0)
        if e.exit == "accept":
            assert verdict(e.score, e.exit, bounds.threshold) and e.score > bounds.threshold
    assert {e.exit for e in live} >= {"accept", "bound"}  # both learnt exits were exercised
    # a file round trip keeps the accept ratios; bounds without them refuse an accept margin
    assert ExitBounds.load(bounds.save(tmp_path / "bounds.json")) == bounds
    with pytest.raises(ValueError, match="no accept ratios"):
        dataclasses.replace(bounds, accept_ratios=None).apply(FULL, accept_margin=1.0)


# -- trend: the learnt bounds judge the running minimum carried forward by its recent fall --------------------------
def test_exit_statistic_is_the_running_minimum_carried_forward_by_its_fall():
    history = torch.tensor([[8.0, 4.0, 2.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    # j = floor(k / 2): k=0 -> 0, 1 -> 0, 2 -> 1, 3 -> 1
    assert exit_statistic(history, 3, 0.0).tolist() == [1.0, 5.0]  # trend 0: the running minimum itself
    assert exit_statistic(history, 2, 1.0).tolist() == [1.0, 5.0]  # 2 * (2 / 4); a flat one stays where it is
    assert exit_statistic(history, 3, 2.0).tolist() == [0.0625, 5.0]  # 1 * (1 / 4) ** 2
    assert exit_statistic(history, 0, 2.0).tolist() == [8.0, 5.0]  # nothing to look back on
    assert statistics(history.numpy(), 1.0).tolist() == [[8.0, 2.0, 1.0, 0.25], [5.0, 5.0, 5.0, 5.0]]
    # the ratios are of the statistic, and may fall below 1: an image still falling fast is heading below t
    # (from the images still above t only: the second, below t from the start, adds nothing, not even a floor of 1)
    assert learn_ratios([[8.0, 4.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]], threshold=1.5, trend=1.0) == (
        8 / 1.5, 2 / 1.5, 1 / 1.5, 1.0)
    assert learn_accept_ratios([[8.0, 4.0, 2.0, 2.0]], 1.5, trend=1.0) == (8 / 1.5, 2 / 1.5, 1 / 1.5, 1 / 1.5)


def test_trend_bounds_keep_their_guarantees_and_the_loop_equals_the_replay(setting, tmp_path):
    """Bounds learnt on the trend statistic: no calibration image the full run calls belonging is rejected early
    and no rejected image learnt from is accepted early; the live loop (compaction, both learnt exits, the history
    it looks back on) gives every image the replay's exit and keeps its trajectory up to the exit."""
    ae, cal_full, full = setting["ae"], setting["cal_full"], setting["full"]
    negatives = full[6:]
    config = dataclasses.replace(FULL, exit_trend=2.0)
    bounds = learn_bounds([r.trajectory for r in cal_full], target_tpr=0.8, config=config,
                          negatives=[r.trajectory for r in negatives])
    assert bounds.trend == 2.0
    plain = learn_bounds([r.trajectory for r in cal_full], target_tpr=0.8, config=FULL,
                         negatives=[r.trajectory for r in negatives])
    assert bounds.ratios != plain.ratios and bounds.threshold == plain.threshold
    cfg = bounds.apply(config, margin=1.0, accept_margin=1.0)
    assert cfg.exit_trend == 2.0
    rejected = [r.trajectory for r in [*cal_full, *negatives] if r.score > bounds.threshold]
    assert rejected and accepted_early(rejected, cfg) == []
    assert rejected_early([r.trajectory for r in cal_full], cfg) == []
    live = invert(ae, setting["evaluation"], cfg)
    replayed = replay_frame([f.trajectory for f in full], cfg)
    for i, (e, f) in enumerate(zip(live, full)):
        score, k, kind = replay(f.trajectory, cfg)
        assert (e.exit, e.exit_step) == (kind, k) and replayed["exit"][i] == kind
        torch.testing.assert_close(torch.tensor(e.trajectory), torch.tensor(f.trajectory[:e.steps_run]), rtol=1e-5,
                                   atol=0)
    assert {e.exit for e in live} >= {"accept", "bound"}
    # the trend changes when images leave, and the hash; 0 keeps the keys made before the option
    assert [e.steps_run for e in live] != [e.steps_run for e in invert(ae, setting["evaluation"],
                                                                     plain.apply(FULL, 1.0, accept_margin=1.0))]
    assert cfg.hash() != dataclasses.replace(cfg, exit_trend=1.0).hash()
    off = plain.apply(FULL, margin=1.0)
    assert off.hash() == dataclasses.replace(off, exit_trend=0.0).hash() and "exit_trend" not in off.identity()
    # the file keeps the trend; bounds applied with another trend are refused
    assert ExitBounds.load(bounds.save(tmp_path / "bounds.json")) == bounds
    with pytest.raises(ValueError, match="learnt for exit_trend 2, the config asks for 1"):
        bounds.apply(dataclasses.replace(FULL, exit_trend=1.0))
    with pytest.raises(ValueError, match="inversion.exit_trend: must be a number >= 0"):
        dataclasses.replace(FULL, exit_trend=-1.0)
