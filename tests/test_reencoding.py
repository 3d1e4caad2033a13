"""Calibration under a perturbation family end to end: the family syntax, `trace --calibrate-perturb`, and the
robustness study's `calibration` setting (a `calibration` column; thresholds set on clean + perturbed copies)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers.cli import FAST, folders  # noqa: F401, F811  (fixture)
from helpers.cli import run_trace as _run
from helpers.micro_zoo import job, micro_zoo, workspace  # noqa: F401  (fixtures)

from experiments import common, study
from latenttracer import protocol
from latenttracer.reencoding import family_name, parse_family
from latenttracer.metrics import calibrate_threshold
from latenttracer.perturbations import parse_perturbation, perturbed_set


def test_family_ranges_expand_to_aeroblades_grid_points():
    names = [p.name for p in parse_family("jpeg:90..70, downscale:0.5")]
    assert names == ["jpeg90", "jpeg80", "jpeg70", "downscale0.5"]
    assert [p.name for p in parse_family("blur:2..1")] == ["blur1", "blur2"]
    assert [p.name for p in parse_family("noise:0.1..0.2")] == ["noise0.1", "noise0.15", "noise0.2"]
    assert family_name(" jpeg:90..70,downscale:0.5") == "jpeg:90..70,downscale:0.5"
    assert family_name("clean") == "clean"


@pytest.mark.parametrize("spec, words", [("jpeg:95..99", "no point of AEROBLADE's jpeg grid"),
                                         ("jpg:90", "'jpg' is not one of"), ("jpeg:a..b", "not 'number..number'"),
                                         ("jpeg:90,jpeg:90..80", "duplicate"), ("", "expected 'kind:strength")])
def test_bad_families_are_named(spec, words):
    with pytest.raises(ValueError, match=words):
        parse_family(spec)


def test_trace_calibrate_perturb_sets_the_threshold_on_clean_and_perturbed_copies(  # noqa: F811
        tmp_path, tiny_dirs, folders, capsys):  # noqa: F811
    model, cache = tiny_dirs["AutoencoderTiny-0"], tmp_path / "store" / "scores"
    args = ["--model", model, "--calibrate", folders["cal"], "--cache", cache, "--resolution", 32, *FAST]
    clean_out, pert_out = tmp_path / "clean.csv", tmp_path / "pert.csv"
    assert _run("--images", folders["cal"], "--out", clean_out, *args) == 0
    assert _run("--images", folders["own"], "--out", pert_out, "--calibrate-perturb", "jpeg:90..80", *args) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "perturbed copies" in x)
    assert "18 images" in line and "jpeg90, jpeg80" in line
    # the perturbed copies were written beside the store, once per condition
    copies = {p.name: sorted(p.iterdir()) for p in (tmp_path / "store" / "perturbed").iterdir()}
    assert set(copies) == {"jpeg90-v1", "jpeg80-v1"} and all(len(v) == 6 for v in copies.values())
    # the threshold is the 95%-TPR rule on the 6 clean and the 12 perturbed calibration scores, pooled
    clean = pd.read_csv(clean_out)["score"].to_numpy()
    perturbed = []
    for name in ("jpeg90-v1", "jpeg80-v1"):
        out = tmp_path / f"{name}.csv"
        assert _run("--images", tmp_path / "store" / "perturbed" / name, "--out", out, "--threshold", 1, "--model",
                    model, "--cache", cache, "--resolution", 32, *FAST) == 0
        scored = pd.read_csv(out)
        assert scored["cached"].all()  # scored once, during the calibration
        perturbed += list(scored["score"])
    expected = calibrate_threshold(np.r_[clean, perturbed], 0.95)
    assert f"threshold {expected:.4g}:" in capsys.readouterr().err + err
    assert max(perturbed) > max(clean)  # what the perturbation adds raises the threshold above the clean one
    assert expected >= calibrate_threshold(clean, 0.95)


def test_robustness_calibration_rows(micro_zoo, workspace, tmp_path):  # noqa: F811
    overrides = ["inspected=[kl-a]", "perturbation.conditions=[jpeg:50]", "logger=none",
                 "calibration=[clean,'jpeg:90..70']", "calibration_n=2",
                 "methods=[{name: aeroblade, options: {distance: l2}}]"]
    cfg = job("robustness", workspace, micro_zoo, tmp_path / "out", overrides)
    rows = study.run(cfg, "robustness").frame
    assert list(rows["calibration"]) == ["clean", "jpeg:90..70"] * 2
    assert list(rows["condition"]) == ["clean", "clean", "jpeg50", "jpeg50"]
    # AUC needs no threshold: equal under both calibrations; the threshold is one per calibration
    assert rows.groupby("condition")["auc"].nunique().eq(1).all()
    thresholds = rows.groupby("calibration")["threshold"].unique()
    assert all(len(v) == 1 for v in thresholds)
    # recomputed here: the clean calibration half and perturbed copies of a seeded subset of 2 of its images
    ctx = common.Context(cfg)
    spec = ctx.model_spec("kl-a")
    ae, method = ctx.load_model(spec), ctx.method(cfg.methods[0], dtype=spec.dtype)
    calibration = list(ctx.image_sets()["kl-a"]["calibration"])
    some = protocol.subset(calibration, 2, int(cfg.subset_seed))
    paths = [*map(str, calibration)]
    for q in (90, 80, 70):
        paths += [str(p) for p in perturbed_set(some, parse_perturbation(f"jpeg:{q}"), cfg.perturbed_dir)]
    scored = ctx.score_paths(ae, paths, method, store=ctx.store()).set_index("path").loc[paths, "score"].to_numpy()
    assert len(scored) == len(calibration) + 6
    assert thresholds["jpeg:90..70"][0] == pytest.approx(method.calibrate(scored, 0.95))
    assert thresholds["clean"][0] == pytest.approx(method.calibrate(scored[:len(calibration)], 0.95))
    published = pd.read_csv(workspace / "results" / "debug" / "robustness.csv")
    assert list(published["calibration"]) == list(rows["calibration"])
    with pytest.raises(ValueError, match="key calibration.*jpg"):
        study.run(job("robustness", workspace, micro_zoo, tmp_path / "bad", [*overrides[:3], "calibration=[jpg:1]"]),
                  "robustness")
