"""The early-exit study (latenttracer.studies.early_exit): its published table, and a run on the micro zoo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.auc import pairwise_auc
from helpers.micro_zoo import _wandb_sandbox, job, micro_zoo, workspace  # noqa: F401  (fixtures)

from experiments import common, study
from latenttracer import protocol
from latenttracer.early_exit import DEFAULT_RISK, learn_exit_policy, wrong_exits
from latenttracer.intervals import wilson
from latenttracer.metrics import calibrate_threshold
from latenttracer.studies import STUDIES
from latenttracer.studies import early_exit as ee

RESULTS = Path(__file__).resolve().parents[1] / "results"
SPEED = "123 KL-decoder image-steps/s (a stand-in for the test)"
RUN = ["inspected=[kl-a]", "timing_images=4", "logger=none"]


def _page_notes(page: Path) -> tuple[str, list[str]]:
    text = page.read_text()
    return text, [line.removeprefix("- ") for line in text.split("\n\n")[1].splitlines()]


def test_published_markdown_is_its_csv_rendered():
    """results/early_exit.md is results/early_exit.csv through :func:`markdown` (its notes read back from the
    file): the table cannot drift from the CSV. Every suite's rows are in it, each saying how it was made."""
    published, notes = _page_notes(RESULTS / "early_exit.md")
    table = pd.read_csv(RESULTS / "early_exit.csv")
    assert ee.markdown(table, notes) == published
    assert {"zoo", "zoo seed 1000", "zoo seed 2000", "celeba", "taef2"} <= set(table["sets"])
    for label, command in table.drop_duplicates("sets")[["sets", "command"]].itertuples(index=False):
        assert f"- `{label}`: `{command}`, " in published


def test_the_default_risk_is_the_largest_that_keeps_99_percent_on_the_zoo():
    """latenttracer.early_exit.DEFAULT_RISK, as its docstring says: of the published risks, the largest at which
    every model of the seed-0 zoo keeps at least 99% of the full run's verdicts (the other sets held out)."""
    table = pd.read_csv(RESULTS / "early_exit.csv")
    zoo = table[(table["sets"] == "zoo") & (table["mode"] == "conformal") & (table["schedule"] == "paper")]
    assert sorted(set(zoo["alpha"])) == [0.02, 0.03, 0.05, 0.1]
    safe = [a for a, rows in zoo.groupby("alpha") if (rows["agreement"] >= 0.99).all()]
    assert max(safe) == DEFAULT_RISK


def test_registered_with_a_report_section():
    s = STUDIES.get("early_exit")
    assert s is ee.EarlyExit and s.section.tables == ("early_exit.csv",)
    assert STUDIES.get("real_decoder_early_exit").section is None  # its rows are in early_exit.csv


def test_micro_run_rows_and_merge(micro_zoo, workspace, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(ee.zoo, "machine_speed", lambda threads=1: SPEED)  # the real one times a decoder for seconds
    cfg = job("early_exit", workspace, micro_zoo, tmp_path / "out", [*RUN, "risks=[0.5,0.9]"])
    frame = study.run(cfg, "early_exit").frame
    assert list(frame["mode"]) == ["full", "exact", "conformal", "conformal"]
    assert frame["alpha"].isna().tolist() == [True, True, False, False] and list(frame["alpha"].dropna()) == [0.5, 0.9]
    rows = frame.set_index("mode")
    assert (rows["schedule"] == "paper").all() and (rows["steps"] == 3).all()  # the preset, at the micro steps
    # evaluation images: kl-a's own 3, 3 of each of the 5 other members, the 4 real images
    assert (rows["n_evaluation"] == 3 + 5 * 3 + 4).all() and (rows["n_calibration"] == 3).all()
    assert (rows["n_timed"] == 4).all() and (rows["live_mismatches"] == 0).all()  # the replay is what the loop does
    assert rows.loc["full", "image_steps_fraction"] == pytest.approx(3 / 100)
    assert rows.loc["exact", "image_steps_fraction"] <= rows.loc["full", "image_steps_fraction"]
    assert rows.loc["exact", "agreement_schedule"] == 1.0  # stopping at the threshold never changes a verdict
    assert (rows["machine_speed"] == 123).all()
    # 3 calibration images end belonging (95% TPR of 3: the largest score), all 3 score: risk >= 1/4 for any exit
    # from above; q is the 2nd (alpha 0.5) and the 1st (alpha 0.9) smallest of their 3 scores
    assert (frame["n_scores"].dropna() == 3).all() and frame["q"].iloc[3] <= frame["q"].iloc[2] < np.inf
    # the wrong exits and both intervals recomputed from the counts (latenttracer.intervals.wilson)
    for _, row in frame.iterrows():
        n_agree = round(row["agreement"] * row["n_evaluation"])
        assert (row["agreement_lo"], row["agreement_hi"]) == pytest.approx(wilson(n_agree, row["n_evaluation"]))
        assert row["wrong_exit_rate"] == row["wrong_exits"] / row["n_own_belonging"]
        assert (row["wrong_exit_rate_lo"], row["wrong_exit_rate_hi"]) == pytest.approx(
            wilson(row["wrong_exits"], row["n_own_belonging"]))
        assert row["agreement_lo"] <= row["agreement"] <= row["agreement_hi"]
    assert rows.loc["full", "wrong_exits"] == 0 and rows.loc["exact", "wrong_exits"] == 0  # no bound, no wrong exit
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
    ev = ctx.invert_paths(ae, evaluation["path"].tolist(), inv, trajectory_steps=100).set_index("path")
    own = (evaluation["source"] == "kl-a").to_numpy()
    paths = evaluation["path"].to_numpy()
    want = pairwise_auc(ev.loc[paths[own], "score"].to_numpy(), ev.loc[paths[~own], "score"].to_numpy())
    assert rows.loc["full", "auc_full"] == pytest.approx(want, abs=1e-12)
    assert rows.loc["full", "auc_early_exit"] == rows.loc["full", "auc_full"]
    # the conformal rows' wrong exits: the replay of the own images' full runs under the rule learnt from calibration
    for _, row in frame[frame["mode"] == "conformal"].iterrows():
        fast = learn_exit_policy(cal["trajectory"].tolist(), threshold, row["alpha"], inv).apply(inv)
        own_runs = ev.loc[paths[own], "trajectory"].tolist()
        assert (row["wrong_exits"], row["n_own_belonging"]) == wrong_exits(own_runs, fast)
    # published: merged into results/debug/early_exit.csv; another schedule's rows are added, the first kept
    results = workspace / "results" / "debug"
    first = pd.read_csv(results / "early_exit.csv")
    assert list(first["mode"]) == ["full", "exact", "conformal", "conformal"]
    again = study.run(job("early_exit", workspace, micro_zoo, tmp_path / "again", [*RUN, "inversion.lr=0.1"]),
                      "early_exit").frame
    for _, row in pd.concat([frame, again]).iterrows():  # disagreements: the flipped verdicts counted by source
        flips = sum(int(part.split(":")[1]) for part in row["disagreements"].split())
        assert flips == round((1 - row["agreement"]) * row["n_evaluation"])
        assert (row["disagreements"] == "") == (row["agreement"] == 1.0)
    merged = pd.read_csv(results / "early_exit.csv")
    assert list(merged["lr"]) == [0.05] * 4 + [0.1] * 6 and list(merged.columns) == ee.COLUMNS  # 4 default risks
    pd.testing.assert_frame_equal(merged.head(4), first)
    text = (results / "early_exit.md").read_text()
    assert text.count("| kl-a | paper | 3 |") == 10 and "s wall at machine speed 123" in text
    assert np.isfinite(merged["speedup"]).all()


def test_a_bad_risk_names_the_key():
    with pytest.raises(ValueError, match=r"risks: each must be a number in \(0, 1\), got 1.5"):
        ee.risks({"risks": [0.1, 1.5]})
    assert ee.risks({"risks": [0.05]}) == [0.05]
