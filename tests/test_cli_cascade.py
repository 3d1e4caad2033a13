"""`latenttracer trace --cascade SCREEN`: every verdict is what the cascade gives on the images' full-run
trajectories under both schedules, a rerun computes nothing, and bad flags fail before any work."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from test_cli import _run, folders  # noqa: F401  (the fixture)

from latenttracer.autoencoders import load_autoencoder
from latenttracer.calibration import pooled_threshold
from latenttracer.cascade import DEFAULT_BAND_MARGIN, learn_cascade, replay_cascade
from latenttracer.cli import CASCADE_COLUMNS, CSV_COLUMNS
from latenttracer.images import list_images, load_images
from latenttracer.inversion import InversionConfig, invert
from latenttracer.methods import LatentTracer
from latenttracer.store import ResultStore

VERDICT = ["--steps", "12", "--batch-size", "4", "--quiet"]
SCREEN = "steps=4,lr=0.2"
VERDICT_CONFIG = InversionConfig(steps=12, batch_size=4)
SCREEN_CONFIG = replace(VERDICT_CONFIG, steps=4, lr=0.2)


def _mixed(tmp_path, folders):  # noqa: F811
    """Images of the inspected model (own, and the calibration images themselves: their screen scores reach into
    the band), of a sibling model and natural crops."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("own", "cal", "other", "real"):
        for f in sorted(folders[name].iterdir())[:4 if name != "cal" else 6]:
            (mixed / f"{name}_{f.name}").write_bytes(f.read_bytes())
    return mixed


def _trajectories(ae, paths, config):
    images, _, _ = load_images(paths, ae.resolution)
    return [r.trajectory for r in invert(ae, images, replace(config, record_trajectory=True))]


def _cascade_run(tmp_path, model, mixed, folders, *extra, screen=SCREEN):  # noqa: F811
    out = tmp_path / "cascade.csv"
    code = _run("--model", model, "--images", mixed, "--out", out, "--calibrate", folders["cal"], "--cascade", screen,
                "--cache", tmp_path / "cache", "--resolution", 32, *VERDICT, *extra)
    assert code == 0
    return pd.read_csv(out, keep_default_na=False)


def test_cascade_verdicts_are_the_replay_of_both_schedules(tmp_path, tiny_dirs, folders, capsys):  # noqa: F811
    model, mixed = tiny_dirs["AutoencoderTiny-0"], _mixed(tmp_path, folders)
    # at 50% TPR the verdict schedule rejects some calibration images: the band takes in images of the model
    df = _cascade_run(tmp_path, model, mixed, folders, "--band-margin", 1.5, "--target-tpr", 0.5)
    printed = capsys.readouterr()
    assert list(df.columns) == CSV_COLUMNS + CASCADE_COLUMNS
    # the reference: the cascade learnt and replayed on full-run trajectories computed here
    ae = load_autoencoder(model, resolution=32)
    cal = list_images(folders["cal"])
    cal_verdict, cal_screen = _trajectories(ae, cal, VERDICT_CONFIG), _trajectories(ae, cal, SCREEN_CONFIG)
    threshold = pooled_threshold(LatentTracer(VERDICT_CONFIG), {"clean": [min(t) for t in cal_verdict]}, 0.5)
    cascade = learn_cascade(cal_screen, cal_verdict, threshold=threshold, band_margin=1.5, screen=SCREEN_CONFIG,
                            verdict=VERDICT_CONFIG)
    assert (f"cascade: band ({cascade.low:.4g}, {cascade.high:.4g}] of screen scores (band margin 1.5) goes to the "
            f"verdict schedule, threshold {threshold:.4g}; learnt from the full runs of 6 calibration images") \
        in printed.err
    paths = list_images(mixed)
    assert df["path"].tolist() == [str(p) for p in paths]
    replay = replay_cascade(_trajectories(ae, paths, SCREEN_CONFIG), _trajectories(ae, paths, VERDICT_CONFIG),
                            cascade, SCREEN_CONFIG, VERDICT_CONFIG)
    assert (df["status"] == "ok").all()
    # An image scored exactly at the threshold (a calibration image: at 50% TPR the threshold is one of their
    # scores) may land on either side when scored among other images (a convolution's last bits depend on the
    # batch): that tie is left out of the verdicts compared; every other verdict must be the replay's.
    clear = ~np.isclose(replay["score"], threshold, rtol=1e-6, atol=0)
    assert clear.sum() >= len(df) - 1
    assert (df["belonging"].astype(str) == "True")[clear].tolist() == replay["belonging"][clear].tolist()
    assert df["stage"].tolist() == replay["stage"].tolist()
    assert df["steps_run"].astype(int).tolist() == replay["steps_run"].tolist()
    assert df["score"].astype(float).to_numpy() == pytest.approx(replay["score"], rel=1e-5)
    assert df["screen_score"].astype(float).to_numpy() == pytest.approx(replay["screen_score"], rel=1e-5)
    assert df["exit_reason"].tolist() == replay["exit"].tolist()
    # both stages decide some images; a band image ran the whole screen, then the verdict schedule
    band = df[df["stage"] == "verdict"]
    assert 0 < len(band) < len(df)
    verdict_steps = [int(n) for n in replay_cascade(
        _trajectories(ae, band["path"], SCREEN_CONFIG), _trajectories(ae, band["path"], VERDICT_CONFIG),
        cascade, SCREEN_CONFIG, VERDICT_CONFIG)["steps_run"]]
    assert band["steps_run"].astype(int).tolist() == verdict_steps
    assert all(4 < n <= 4 + 12 for n in verdict_steps)
    assert (band["screen_score"].astype(float) > cascade.low).all()
    assert (band["screen_score"].astype(float) <= cascade.high).all()
    screen = df[df["stage"] == "screen"]
    assert (screen["steps_run"].astype(int) <= 4).all()
    assert (screen["score"] == screen["screen_score"]).all()
    n_screen, n_band = len(screen), len(band)
    assert f"cascade: {n_screen} decided by the screen" in printed.out and f"{n_band} by the verdict" in printed.out
    mean = float(np.mean(replay["steps_run"]))
    assert f"{mean:.1f} steps per image on average (both stages) against the verdict schedule's 12" in printed.out


def test_screen_margin_is_the_screens_own(tmp_path, tiny_dirs, folders):  # noqa: F811
    """``--screen-margin`` sets the screen's early-exit margin, ``--exit-margin`` then the verdict schedule's only:
    the verdicts, stages and steps are the replay of the cascade with those two margins."""
    model, mixed = tiny_dirs["AutoencoderTiny-0"], _mixed(tmp_path, folders)
    df = _cascade_run(tmp_path, model, mixed, folders, "--target-tpr", 0.5, "--screen-margin", 1.0,
                      "--exit-margin", 2.0)
    ae = load_autoencoder(model, resolution=32)
    screen, verdict = replace(SCREEN_CONFIG, exit_margin=1.0), replace(VERDICT_CONFIG, exit_margin=2.0)
    cal = list_images(folders["cal"])
    cal_verdict, cal_screen = _trajectories(ae, cal, verdict), _trajectories(ae, cal, screen)
    threshold = pooled_threshold(LatentTracer(verdict), {"clean": [min(t) for t in cal_verdict]}, 0.5)
    cascade = learn_cascade(cal_screen, cal_verdict, threshold=threshold, band_margin=DEFAULT_BAND_MARGIN,
                            screen=screen, verdict=verdict)
    paths = list_images(mixed)
    replay = replay_cascade(_trajectories(ae, paths, screen), _trajectories(ae, paths, verdict), cascade, screen,
                            verdict)
    # An image scored exactly at the threshold (a calibration image: at 50% TPR the threshold is one of their
    # scores) may land on either side when scored among other images (a convolution's last bits depend on the
    # batch): that tie is left out of the verdicts compared; every other verdict must be the replay's.
    clear = ~np.isclose(replay["score"], threshold, rtol=1e-6, atol=0)
    assert clear.sum() >= len(df) - 1
    assert (df["belonging"].astype(str) == "True")[clear].tolist() == replay["belonging"][clear].tolist()
    assert df["stage"].tolist() == replay["stage"].tolist()
    assert df["steps_run"].astype(int).tolist() == replay["steps_run"].tolist()
    # the same run with the margin at 2.0 for both stages: the screen's bounds are looser, never cheaper
    both = replay_cascade(_trajectories(ae, paths, SCREEN_CONFIG), _trajectories(ae, paths, verdict),
                          learn_cascade(cal_screen, cal_verdict, threshold=threshold, band_margin=DEFAULT_BAND_MARGIN,
                                        screen=replace(SCREEN_CONFIG, exit_margin=2.0), verdict=verdict),
                          replace(SCREEN_CONFIG, exit_margin=2.0), verdict)
    assert np.sum(both["screen_steps"]) >= np.sum(replay["screen_steps"])


def test_cascade_rerun_computes_nothing_and_writes_html(tmp_path, tiny_dirs, folders, capsys):  # noqa: F811
    model, mixed = tiny_dirs["AutoencoderTiny-0"], _mixed(tmp_path, folders)
    first = _cascade_run(tmp_path, model, mixed, folders)
    assert not (first["cached"].astype(str) == "True").any()
    n_rows = len(ResultStore(tmp_path / "cache").load())
    capsys.readouterr()
    page = tmp_path / "report.html"
    again = _cascade_run(tmp_path, model, mixed, folders, "--html", page)
    printed = capsys.readouterr()
    assert (again["cached"].astype(str) == "True").all()
    assert f"{len(again)} from cache" in printed.out
    assert len(ResultStore(tmp_path / "cache").load()) == n_rows  # nothing new stored
    pd.testing.assert_frame_equal(again.drop(columns=["cached", "seconds"]), first.drop(columns=["cached", "seconds"]))
    n_bel = int((again["belonging"].astype(str) == "True").sum())
    html = page.read_text()
    assert page.is_file() and f"{n_bel} of {len(again)}" in html
    # each stage's scores on their own scale: the screen's against its band, the verdict schedule's against t
    files = tmp_path / "report_files"
    for stage in ("screen", "verdict"):
        has = bool((again["stage"] == stage).any())
        assert (files / f"scores_{stage}.png").is_file() == has and (f"scores_{stage}.png" in html) == has
    assert not (files / "scores.png").exists() and "screen band" in html


def test_histogram_colours_by_the_given_verdicts():
    """A screen decides by its band, not by the verdict threshold: the page colours its images by their verdicts."""
    from latenttracer import tables

    fig = tables.score_histogram([1e-4, 2e-4, 1e-3], 5e-5, belonging=[True, False, False], band=(1.5e-4, 3e-4))
    green, grey = (sum(p.get_height() for p in c.patches) for c in fig.axes[0].containers)
    assert (green, grey) == (1, 2)  # by the verdicts given; by the threshold all three would be grey
    assert "band" in " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_cascade_with_calibrate_perturb_and_a_latent_rms_screen(tmp_path, tiny_dirs, folders, capsys):  # noqa: F811
    model, mixed = tiny_dirs["AutoencoderTiny-0"], _mixed(tmp_path, folders)
    df = _cascade_run(tmp_path, model, mixed, folders, "--calibrate-perturb", "jpeg:90", "--early-exit",
                      screen="steps=4,lr=0.2,lr_scale=latent_rms")
    err = capsys.readouterr().err
    assert "AutoencoderTiny-0 (screen): --lr-scale latent_rms: lr 0.2 x latent RMS" in err
    assert f"(band margin {DEFAULT_BAND_MARGIN:g})" in err
    assert "learnt from the full runs of 12 calibration images under both schedules" in err
    assert set(df["stage"]) <= {"screen", "verdict"} and (df["status"] == "ok").all()


@pytest.mark.parametrize("extra, words", [
    (["--cascade", SCREEN], "--cascade needs --calibrate DIR"),
    (["--cascade", SCREEN, "--threshold", "0.01"], "--cascade needs --calibrate DIR"),
    (["--calibrate", "CAL", "--cascade", "stepz=4"], "--cascade stepz: not a setting of --method latenttracer"),
    (["--calibrate", "CAL", "--cascade", "steps=4,exit_margin=2"], "--cascade exit_margin: an early-exit setting"),
    (["--calibrate", "CAL", "--cascade", "early_exit=true"], "--cascade early_exit: an early-exit setting"),
    (["--calibrate", "CAL", "--cascade", "steps=four"], "--cascade steps=four: not a valid int"),
    (["--calibrate", "CAL", "--cascade", "schedule=fast"], "--cascade schedule=fast: 'fast' is not one of"),
    (["--calibrate", "CAL", "--cascade", "lr=-1"], "--cascade lr=-1.0: inversion.lr: must be a positive number"),
    (["--calibrate", "CAL", "--cascade", "strategy=last"], "--cascade strategy=last: inversion.early_exit: needs"),
    (["--calibrate", "CAL", "--cascade", "steps"], "--cascade 'steps': not key=value"),
    (["--calibrate", "CAL", "--cascade", "steps=4,steps=5"], "--cascade steps: given twice"),
    (["--calibrate", "CAL", "--cascade", "batch_size=2"], "--cascade batch_size: set for both stages"),
    (["--calibrate", "CAL", "--cascade", " "], "--cascade: empty SCREEN"),
    (["--calibrate", "CAL", "--cascade", "steps=100", "--steps", "100"], "the screen is the method's own schedule"),
    (["--calibrate", "CAL", "--band-margin", "1.5"], "--band-margin needs --cascade SCREEN"),
    (["--calibrate", "CAL", "--cascade", SCREEN, "--band-margin", "0.5"], "--band-margin: must be a number >= 1"),
    (["--calibrate", "CAL", "--screen-margin", "1.2"], "--screen-margin needs --cascade SCREEN"),
    (["--calibrate", "CAL", "--cascade", SCREEN, "--screen-margin", "0.5"], "--screen-margin: must be a number >= 1"),
    (["--calibrate", "CAL", "--cascade", "steps=100", "--steps", "100", "--screen-margin", "1.2"],
     "the screen is the method's own schedule"),
    (["--calibrate", "CAL", "--cascade", SCREEN, "--method", "aedr"], "--method aedr does not take --cascade"),
    (["--calibrate", "CAL", "--cascade", SCREEN, "--method", "relative"], "--cascade: method relative: early exit"),
])
def test_bad_cascade_flags_fail_before_any_work(tmp_path, folders, capsys, extra, words):  # noqa: F811
    # the model does not exist: any work would fail on it, so the flags' error must come first
    extra = [str(folders["cal"]) if e == "CAL" else e for e in extra]
    code = _run("--model", tmp_path / "no_model", "--images", folders["own"], "--out", tmp_path / "s.csv",
                "--no-cache", *extra)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
