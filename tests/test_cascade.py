"""The two-stage cascade (latenttracer.cascade): the band rule, the live run against its replay, calibration."""

import dataclasses

import numpy as np
import pytest
import torch
from test_early_exit import ElementwiseAE

from latenttracer.cascade import DEFAULT_BAND_MARGIN, Cascade, learn_cascade, replay_cascade, run_cascade
from latenttracer.inversion import InversionConfig, invert

VERDICT = InversionConfig(steps=30, batch_size=64, record_trajectory=True, exit_margin=1.5)
SCREEN = dataclasses.replace(VERDICT, steps=8, lr=0.2)


def test_band_rule_on_hand_made_trajectories():
    # final verdict scores 1, 2, 3, 4 (threshold 2.5 given: the first two accepted); screen scores 10, 30, 20, 40
    verdict = [[5.0, 1.0], [5.0, 2.0], [5.0, 3.0], [5.0, 4.0]]
    screen = [[50.0, 10.0], [50.0, 30.0], [50.0, 20.0], [50.0, 40.0]]
    c = learn_cascade(screen, verdict, threshold=2.5, band_margin=1.0)
    # low: the smallest screen score the verdict rejects (20); high: the largest it accepts (30)
    assert (c.low, c.high, c.verdict.threshold) == (20.0, 30.0, 2.5)
    assert [c.screen_decision(s, "") for s in (19.0, 20.0, 25.0, 30.0, 31.0)] == [True, True, None, None, False]
    assert c.screen_decision(25.0, "bound") is False and c.screen_decision(25.0, "threshold") is True
    wide = learn_cascade(screen, verdict, threshold=2.5, band_margin=2.0)
    assert (wide.low, wide.high) == (10.0, 60.0)
    assert learn_cascade(screen, verdict, threshold=2.5).band_margin == DEFAULT_BAND_MARGIN
    # a screen that orders the images as the verdict does: no band (low is clamped to high)
    ordered = learn_cascade([[9.0, 1.0], [9.0, 2.0], [9.0, 3.0], [9.0, 4.0]], verdict, threshold=2.5,
                            band_margin=1.0)
    assert ordered.low == ordered.high == 2.0
    # no calibration image rejected: low is the screen's own calibrated threshold
    none_rejected = learn_cascade(screen, verdict, threshold=10.0, target_tpr=0.5, band_margin=1.0)
    assert none_rejected.high == 40.0 and none_rejected.low <= none_rejected.high
    # the screen's bound is relative to high: the loop's config scales the ratios by high / low
    cfg = c.screen_config(InversionConfig(steps=2, exit_margin=1.5))
    assert cfg.early_exit and cfg.exit_threshold == 20.0
    np.testing.assert_allclose(np.array(cfg.exit_ratios) * 1.5 * 20.0, np.array(c.screen_ratios) * 1.5 * 30.0)


def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="band_margin"):
        learn_cascade([[1.0]], [[1.0]], threshold=1.0, band_margin=0.5)
    with pytest.raises(ValueError, match="2 screen trajectories but 1"):
        learn_cascade([[1.0], [2.0]], [[1.0]], threshold=1.0)
    with pytest.raises(ValueError, match="accepts none"):
        learn_cascade([[1.0], [2.0]], [[3.0], [4.0]], threshold=1.0)
    with pytest.raises(ValueError, match="0 < low <= high"):
        Cascade(low=2.0, high=1.0, screen_ratios=(1.0,), verdict=None)
    c = learn_cascade([[5.0, 1.0], [5.0, 3.0]], [[5.0, 1.0], [5.0, 3.0]], threshold=2.0, screen=SCREEN,
                      verdict=VERDICT)
    with pytest.raises(ValueError, match="other screen settings"):
        c.screen_config(dataclasses.replace(SCREEN, lr=0.3))
    with pytest.raises(ValueError, match="other inversion settings"):
        c.verdict_config(dataclasses.replace(VERDICT, lr=0.3))


@pytest.fixture(scope="module")
def runs():
    """A decoder whose rows are independent to the last bit, its own decodes (calibration, and belonging evaluation
    images) and random images; full runs of both schedules, with trajectories."""
    ae = ElementwiseAE()
    gen = torch.Generator().manual_seed(3)
    calibration = ae.decode(torch.randn(24, 3, 8, 8, generator=gen))
    evaluation = torch.cat([ae.decode(torch.randn(12, 3, 8, 8, generator=gen)),
                            ae.decode(1.5 * torch.randn(6, 3, 8, 8, generator=gen)).clamp(0.2, 0.8),
                            torch.rand(12, 3, 8, 8, generator=gen)])
    full = {name: {"calibration": invert(ae, calibration, cfg), "evaluation": invert(ae, evaluation, cfg)}
            for name, cfg in (("screen", SCREEN), ("verdict", VERDICT))}
    return {"ae": ae, "calibration": calibration, "evaluation": evaluation, "full": full}


def _trajectories(runs, stage, split):
    return [r.trajectory for r in runs["full"][stage][split]]


def _cascade(runs, band_margin):
    return learn_cascade(_trajectories(runs, "screen", "calibration"), _trajectories(runs, "verdict", "calibration"),
                         target_tpr=0.75, band_margin=band_margin, screen=SCREEN, verdict=VERDICT)


@pytest.mark.parametrize("band_margin", [1.0, 1.3])
def test_calibration_images_keep_the_verdict_schedules_verdicts(runs, band_margin):
    """On its own calibration images the cascade never contradicts the verdict schedule's full run: an image on
    which the screen would is in the band, and the verdict stage's bound rejects no belonging one."""
    c = _cascade(runs, band_margin)
    out = replay_cascade(_trajectories(runs, "screen", "calibration"), _trajectories(runs, "verdict", "calibration"),
                         c, SCREEN, VERDICT)
    full = np.array([r.score <= c.verdict.threshold for r in runs["full"]["verdict"]["calibration"]])
    np.testing.assert_array_equal(out["belonging"], full)
    assert (~full).any() and full.any()  # both kinds present: the check is not vacuous


def test_live_run_is_its_replay(runs):
    """Both stages live (the screen on every image, the band through the verdict schedule) give what the replay
    of the full-run trajectories gives: verdicts, stages, scores and the steps of both stages."""
    c = _cascade(runs, 1.3)
    live = run_cascade(runs["ae"], runs["evaluation"], c, SCREEN, VERDICT)
    screen_t, verdict_t = _trajectories(runs, "screen", "evaluation"), _trajectories(runs, "verdict", "evaluation")
    want = replay_cascade(screen_t, verdict_t, c, SCREEN, VERDICT)
    assert [r.belonging for r in live] == want["belonging"].tolist()
    assert [r.stage for r in live] == want["stage"].tolist()
    assert [r.steps_run for r in live] == want["steps_run"].tolist()
    assert [r.screen_steps for r in live] == want["screen_steps"].tolist()
    np.testing.assert_allclose([r.score for r in live], want["score"], rtol=1e-6)
    stages = set(want["stage"])
    assert stages == {"screen", "verdict"}, stages  # both stages decide some image here
    for r, s in zip(live, screen_t):
        if r.stage == "verdict":  # a band image: the screen ran to its end, then the verdict schedule ran
            assert c.low < r.screen_score <= c.high and r.steps_run > r.screen_steps == len(s)
    # a band image's verdict is the verdict schedule's full-run verdict unless its learnt bound rejected it
    for r, f in zip(live, runs["full"]["verdict"]["evaluation"]):
        if r.stage == "verdict" and r.exit != "bound":
            assert r.belonging == (f.score <= c.verdict.threshold)
    # and it costs less than the verdict schedule run to the end on every image
    assert np.mean(want["steps_run"]) < VERDICT.scored_steps
