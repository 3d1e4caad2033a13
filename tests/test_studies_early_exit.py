"""The early-exit study (latenttracer.studies.early_exit): its published table, and a run on the micro zoo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.published import published_notes
from test_experiments import _wandb_sandbox, job, micro_zoo, workspace  # noqa: F401  (fixtures)
from test_studies import _pairwise_auc

from experiments import common, study
from latenttracer import protocol
from latenttracer.metrics import calibrate_threshold
from latenttracer.studies import STUDIES
from latenttracer.studies import early_exit as ee

RESULTS = Path(__file__).resolve().parents[1] / "results"
SPEED = "123 KL-decoder image-steps/s (a stand-in for the test)"
RUN = ["inspected=[kl-a]", "timing_images=4", "logger=none"]


@pytest.mark.parametrize(("stem", "seed", "suite"), [("early_exit", None, None),
                                                     ("early_exit_holdout", 1000, "zoo_fresh"),
                                                     ("early_exit_holdout2", 2000, "zoo_fresh2")])
def test_published_markdown_is_its_csv_rendered(stem, seed, suite):
    """results/<stem>.md is results/<stem>.csv through :func:`markdown` (its notes, with the run's wall time, are
    read back from the file): the table cannot drift from the CSV. The holdout pages: the same study on
    suite=zoo_fresh / zoo_fresh2, and their notes say so."""
    published, notes = published_notes(RESULTS / f"{stem}.md", 4, "python -m experiments.early_exit")
    assert ee.markdown(pd.read_csv(RESULTS / f"{stem}.csv"), notes) == published
    assert ("fresh sets: generation seed" in notes[0]) == (seed is not None)
    if seed is not None:
        assert f"fresh sets: generation seed {seed}," in notes[0] and f" suite={suite}`;" in notes[-1]


def test_registered_with_a_report_section():
    s = STUDIES.get("early_exit")
    assert s is ee.EarlyExit and s.section.tables == ("early_exit.csv", "early_exit_holdout.csv",
                                                       "early_exit_holdout2.csv")


def test_micro_run_rows_and_merge(micro_zoo, workspace, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(ee.zoo, "machine_speed", lambda threads=1: SPEED)  # the real one times a decoder for seconds
    cfg = job("early_exit", workspace, micro_zoo, tmp_path / "out", RUN)
    rows = study.run(cfg, "early_exit").frame.set_index("mode")
    assert list(rows.index) == ["full", "exact", "early_exit"]
    assert (rows["schedule"] == "paper").all() and (rows["steps"] == 3).all()  # the preset, at the micro steps
    # evaluation images: kl-a's own 3, 3 of each of the 5 other members, the 4 real images
    assert (rows["n_evaluation"] == 3 + 5 * 3 + 4).all() and (rows["n_calibration"] == 3).all()
    assert (rows["n_timed"] == 4).all() and (rows["live_mismatches"] == 0).all()  # the replay is what the loop does
    assert rows.loc["full", "image_steps_fraction"] == pytest.approx(3 / 100)
    assert rows.loc["exact", "image_steps_fraction"] <= rows.loc["full", "image_steps_fraction"]
    assert rows.loc["exact", "agreement_schedule"] == 1.0  # stopping at the threshold never changes a verdict
    assert rows.loc["early_exit", "margin"] == cfg.inversion.exit_margin and rows.loc["full", "margin"] == 1.0
    assert (rows["machine_speed"] == 123).all()
    # the threshold and the full run's AUC recomputed from the store's scores (the 3-step run is the authors' cut)
    ctx = common.Context(cfg)
    spec = ctx.model_spec("kl-a")
    ae, inv = ctx.load_model(spec), ctx.inversion_config(dtype=spec.dtype)
    grid = protocol.grid_images(ctx.image_sets(), "kl-a")
    calibration = grid.loc[(grid["source"] == "kl-a") & (grid["split"] == "calibration"), "path"].tolist()
    evaluation = grid[grid["split"] == "evaluation"]
    cal = ctx.invert_paths(ae, calibration, inv, trajectory_steps=100)
    threshold = calibrate_threshold(cal["score"], ctx.split_settings().target_tpr)
    assert (rows["threshold"] == threshold).all()
    scores = ctx.invert_paths(ae, evaluation["path"].tolist(), inv, trajectory_steps=100).set_index("path")["score"]
    own = (evaluation["source"] == "kl-a").to_numpy()
    paths = evaluation["path"].to_numpy()
    want = _pairwise_auc(scores[paths[own]].to_numpy(), scores[paths[~own]].to_numpy())
    assert rows.loc["full", "auc_full"] == pytest.approx(want, abs=1e-12)
    assert rows.loc["full", "auc_early_exit"] == rows.loc["full", "auc_full"]
    # published: merged into results/debug/early_exit.csv; another schedule's rows are added, the first kept
    results = workspace / "results" / "debug"
    first = pd.read_csv(results / "early_exit.csv")
    assert list(first["mode"]) == ["full", "exact", "early_exit"]
    # ... with a cascade row: this schedule screens, its band runs the authors' (at the micro steps here)
    again = study.run(job("early_exit", workspace, micro_zoo, tmp_path / "again",
                          [*RUN, "inversion.lr=0.1", "cascade_band_margin=1.1"]), "early_exit").frame.set_index("mode")
    assert list(again.index) == ["full", "exact", "early_exit", "cascade"]
    cascade = again.loc["cascade"]
    assert cascade["band_margin"] == 1.1 and cascade["margin"] == cfg.inversion.exit_margin
    assert cascade["live_mismatches"] == 0 and cascade["calibration_rejected_early"] == 0
    assert np.isnan(cascade["auc_early_exit"]) and 0 <= cascade["n_band"] <= cascade["n_evaluation"]
    assert np.isnan(again.loc["early_exit", "band_margin"])
    assert 0 < cascade["screen_steps_fraction"] <= cascade["image_steps_fraction"]
    for frame in (rows, again):  # disagreements: the flipped verdicts counted by source
        for _, row in frame.iterrows():
            flips = sum(int(part.split(":")[1]) for part in row["disagreements"].split())
            assert flips == round((1 - row["agreement"]) * row["n_evaluation"])
            assert (row["disagreements"] == "") == (row["agreement"] == 1.0)
    merged = pd.read_csv(results / "early_exit.csv")
    assert list(merged["lr"]) == [0.05] * 3 + [0.1] * 4
    pd.testing.assert_frame_equal(merged.head(3), first)
    text = (results / "early_exit.md").read_text()
    assert text.count("| kl-a | paper | 3 |") == 7 and "machine speed " + SPEED in text
    assert "| cascade | 1.50 | 1.10 |" in text
    assert np.isfinite(merged["speedup"]).all()
    # the verdict stage's own margin: one more cascade row (a key of its own), its live run again the replay
    third = study.run(job("early_exit", workspace, micro_zoo, tmp_path / "third",
                          [*RUN, "inversion.lr=0.1", "cascade_band_margin=1.1", "cascade_verdict_margin=1.0"]),
                      "early_exit").frame.set_index("mode").loc["cascade"]
    assert third["verdict_margin"] == 1.0 and third["margin"] == cfg.inversion.exit_margin
    assert third["live_mismatches"] == 0 and third["calibration_rejected_early"] == 0
    assert cascade["verdict_margin"] == cfg.inversion.exit_margin  # by default: the screen's margin
    merged = pd.read_csv(results / "early_exit.csv")
    assert len(merged) == 8 and sorted(merged["verdict_margin"].dropna()) == [1.0, cfg.inversion.exit_margin]
    assert "| cascade | 1.50 | 1.10 | 1.00 |" in (results / "early_exit.md").read_text()
    # early accept: its bound learnt from the other members' calibration halves; the live run is the replay
    accept = study.run(job("early_exit", workspace, micro_zoo, tmp_path / "fourth", [*RUN, "accept_margin=1.0"]),
                       "early_exit").frame.set_index("mode")
    assert list(accept.index) == ["full", "exact", "early_exit", "early_accept"]
    row = accept.loc["early_accept"]
    assert row["accept_margin"] == 1.0 and row["margin"] == cfg.inversion.exit_margin
    assert row["live_mismatches"] == 0 and row["calibration_rejected_early"] == 0
    assert 0 < row["image_steps_fraction"] <= accept.loc["full", "image_steps_fraction"]
    assert np.isnan(accept.loc["early_exit", "accept_margin"])
    merged = pd.read_csv(results / "early_exit.csv")
    assert len(merged) == 9 and list(merged["accept_margin"].dropna()) == [1.0]
    assert "| early_accept | 1.50 |  |  | 1.00 |" in (results / "early_exit.md").read_text()


def test_a_bad_verdict_margin_names_the_key():
    with pytest.raises(ValueError, match=r"cascade_verdict_margin: must be a number >= 1 \(or null"):
        ee.verdict_exit_margin({"cascade_verdict_margin": 0.5}, 1.5)
    with pytest.raises(ValueError, match=r"accept_margin: must be a number >= 1 \(or null: none\), got True"):
        ee.margin_or_none({"accept_margin": True}, "accept_margin")
    assert ee.verdict_exit_margin({"cascade_verdict_margin": None}, 1.5) == 1.5
