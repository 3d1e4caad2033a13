"""The cascade-frontier study (latenttracer.studies.cascade_frontier): its rules, its published table, a micro run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.published import published_notes
from omegaconf import OmegaConf
from test_experiments import _wandb_sandbox, job, micro_zoo, workspace  # noqa: F401  (fixtures)

from experiments import common, study
from latenttracer import protocol
from latenttracer.cascade import learn_cascade, replay_cascade
from latenttracer.inversion import InversionConfig
from latenttracer.metrics import calibrate_threshold
from latenttracer.studies import STUDIES
from latenttracer.studies import cascade_frontier as cf

RESULTS = Path(__file__).resolve().parents[1] / "results"
SPEED = "123 KL-decoder image-steps/s (a stand-in for the test)"


def _row(name, verdict, bm, agreement, steps, sel_agreement, sel_steps):
    return {"inspected": name, "screen": "fast", "screen_steps": 25, "screen_lr": 0.2, "verdict": verdict,
            "band_margin": bm, "screen_margin": 1.5, "verdict_margin": 1.5, "agreement": agreement,
            "image_steps_fraction": steps, "n_band": 0, "disagreements": "", "selection_agreement": sel_agreement,
            "selection_image_steps": sel_steps, "n_evaluation": 350, "n_calibration": 50, "n_negatives": 250,
            "selection_folds": 5, "goal_agreement": 0.99, "goal_image_steps": 0.1, "pinned": False}


TABLE = pd.DataFrame([
    _row("a", "authors", 1.0, 0.985, 0.08, 0.995, 0.07),   # cheapest at the goal on selection (not on evaluation)
    _row("a", "authors", 1.1, 0.995, 0.09, 0.992, 0.09),   # the oracle's pick, and meets both goals
    _row("a", "authors", 1.2, 0.997, 0.12, 0.999, 0.12),
    _row("b", "authors", 1.0, 0.970, 0.05, 0.980, 0.05),   # nothing reaches the goal on selection: most agreeing
    _row("b", "authors", 1.1, 0.992, 0.11, 0.985, 0.11),
    _row("b", "authors", 1.2, 0.999, 0.13, 0.985, 0.10),   # ... the cheaper of the two tied
])


def test_chosen_oracle_and_single_settings_on_a_hand_made_table():
    c = cf.chosen(TABLE).set_index("inspected")
    assert c.loc["a", "band_margin"] == 1.0 and c.loc["b", "band_margin"] == 1.2
    o = cf.oracle(TABLE).set_index("inspected")
    assert o.loc["a", "band_margin"] == 1.1 and o.loc["b", "band_margin"] == 1.1
    s = cf.single_settings(TABLE)
    assert list(s["band_margin"]) == [1.1, 1.0, 1.2]  # 1.1 meets both goals on a; then the lower worst cost
    assert list(s["meeting_both"]) == [1, 0, 0] and (s["models"] == 2).all()
    assert s.loc[0, "worst_agreement"] == 0.992 and s.loc[0, "worst_image_steps"] == 0.11
    text = cf.markdown(TABLE, ["a note"])
    assert "| a | fast | authors | 1.00 | 1.50 | 1.50 | 0.9950 | 0.0700 | 0.9850 | 0.0800 |  | no |" in text
    assert "| b | fast | authors | 1.10 | 1.50 | 1.50 | 0.9920 | 0.1100 | no |" in text  # the oracle's b row
    assert "| fast | authors | 1.10 | 1.50 | 1.50 | 1 | 2 | 0.9920 | 0.1100 |" in text
    none = TABLE.assign(agreement=0.5)
    assert "No setting reaches the agreement goal on: a, b." in cf.markdown(none, ["a note"])
    assert "## Pinned" not in text


def test_pinned_rows_get_a_table_of_their_own():
    table = TABLE.assign(pinned=TABLE["band_margin"] == 1.1)
    text = cf.markdown(table, ["a note"])
    pinned = text.split("## Pinned")[1]
    assert "both goals on 1 of 2 (model, setting) pairs" in pinned
    assert "| a | fast | authors | 1.10 | 1.50 | 1.50 | 0.9950 | 0.0900 |  | yes |" in pinned
    assert "| b | fast | authors | 1.10 | 1.50 | 1.50 | 0.9920 | 0.1100 |  | no |" in pinned
    assert cf.pinned_rows(TABLE.drop(columns="pinned")).empty  # a CSV from before the column: nothing pinned


GRID = {"verdicts": [{"name": "authors"}], "band_margins": [1.0, 1.1], "screen_margins": [1.2],
        "verdict_margins": [1.0]}


@pytest.mark.parametrize(("pinned", "words"), [
    ([{"verdict": "authors", "band_margin": 1.1}], r"cascade_frontier.pinned\[0\]: needs exactly the keys"),
    ([{"verdict": "authors", "band_margin": 1.1, "screen_margin": 1.2, "verdict_margin": 1.0},
      {"verdict": "other", "band_margin": 1.1, "screen_margin": 1.2, "verdict_margin": 1.0}],
     r"cascade_frontier.pinned\[1\].verdict: 'other' is not in the grid's verdicts \['authors'\]"),
    ([{"verdict": "authors", "band_margin": 1.3, "screen_margin": 1.2, "verdict_margin": 1.0}],
     r"cascade_frontier.pinned\[0\].band_margin: 1.3 is not in the grid's band_margins"),
])
def test_bad_pinned_settings_name_the_key(pinned, words):
    with pytest.raises(ValueError, match=words):
        cf.pinned_settings(OmegaConf.create({**GRID, "pinned": pinned}))
    good = {"verdict": "authors", "band_margin": 1.1, "screen_margin": 1.2, "verdict_margin": 1.0}
    assert cf.pinned_settings(OmegaConf.create({**GRID, "pinned": [good]})) == [("authors", 1.1, 1.2, 1.0)]


@pytest.mark.parametrize(("verdicts", "words"), [
    ([], "cascade_frontier.verdicts: list at least one verdict schedule"),
    ([{"lr": 0.1}], "cascade_frontier.verdicts[0]: needs a name"),
    ([{"name": "a"}, {"name": "a"}], "cascade_frontier.verdicts[1]: the name 'a' is used twice"),
    ([{"name": "x", "stepz": 3}], "cascade_frontier.verdicts[0] (x): unknown inversion key(s) ['stepz']"),
    ([{"name": "x", "exit_margin": 1.0}], "cascade_frontier.verdicts[0] (x): ['exit_margin'] are set by the study"),
    ([{"name": "x", "lr": -1}], "cascade_frontier.verdicts[0] (x): inversion.lr: must be a positive number"),
])
def test_bad_verdicts_name_the_key(verdicts, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        cf.verdict_schedules(OmegaConf.create({"verdicts": verdicts}), InversionConfig())


def test_bad_margins_name_the_key():
    with pytest.raises(ValueError, match=r"cascade_frontier.band_margins: a non-empty list of numbers >= 1"):
        cf._margins(OmegaConf.create({"band_margins": [0.9]}), "band_margins")


@pytest.mark.parametrize("stem", ["cascade_frontier", "real_decoder_cascade_frontier", "cascade_frontier_holdout"])
def test_published_markdown_is_its_csv_rendered(stem):
    """results/<stem>.md is results/<stem>.csv through :func:`markdown` (its notes and title read back)."""
    study_name = stem.removesuffix("_holdout")  # the holdout page: the same study, on fresh sets
    published, notes = published_notes(RESULTS / f"{stem}.md", 4, f"python -m experiments.{study_name}")
    title = published.split("\n")[0].removeprefix("# ")
    assert title == STUDIES.get(study_name).title
    assert cf.markdown(pd.read_csv(RESULTS / f"{stem}.csv"), notes, title) == published


def test_registered_with_a_report_section():
    s = STUDIES.get("cascade_frontier")
    assert s is cf.CascadeFrontier and s.section.tables == ("cascade_frontier.csv", "cascade_frontier_holdout.csv")
    assert s.section.figures == ("cascade_frontier.png", "cascade_frontier_holdout.png")
    rd = STUDIES.get("real_decoder_cascade_frontier")
    assert issubclass(rd, cf.CascadeFrontier) and rd.section.tables == ("real_decoder_cascade_frontier.csv",)
    assert rd.section.figures == ("real_decoder_cascade_frontier.png",)


RUN = ["inspected=[kl-a]", "logger=none", "inversion=fast", "inversion.steps=3", "inversion.lr=0.1",
       "selection_folds=5", "band_margins=[1.0,1.3]", "screen_margins=[1.5]", "verdict_margins=[1.0]",
       "verdicts=[{name:authors},{name:short,steps:20}]",
       "pinned=[{verdict:short,band_margin:1.3,screen_margin:1.5,verdict_margin:1.0}]"]


def test_micro_run_rows_equal_a_cascade_replayed_by_hand(micro_zoo, workspace, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(cf.zoo, "machine_speed", lambda threads=1: SPEED)  # the real one times a decoder for seconds
    cfg = job("cascade_frontier", workspace, micro_zoo, tmp_path / "out", RUN)
    rows = study.run(cfg, "cascade_frontier").frame
    assert len(rows) == 4 and not rows.duplicated(list(cf.KEY)).any()
    assert set(rows["verdict"]) == {"authors", "short"} and (rows["screen"] == "fast").all()
    pinned = rows[rows["pinned"]]
    assert len(pinned) == 1 and (pinned["verdict"] == "short").all() and (pinned["band_margin"] == 1.3).all()
    # kl-a's own 3 calibration images; the other five members' calibration halves (3 each) as known negatives
    assert (rows["n_calibration"] == 3).all() and (rows["n_negatives"] == 5 * 3).all()
    assert (rows["selection_folds"] == 3).all()  # 5 asked, one per calibration image at most
    assert (rows["n_evaluation"] == 3 + 5 * 3 + 4).all()
    for _, row in rows.iterrows():
        flips = sum(int(part.split(":")[1]) for part in str(row["disagreements"]).split() if ":" in part)
        assert flips == round((1 - row["agreement"]) * row["n_evaluation"])
        assert 0 <= row["selection_agreement"] <= 1 and row["selection_image_steps"] > 0
    # one row recomputed here from the store's trajectories: the authors' verdict schedule, band margin 1.3
    ctx = common.Context(cfg)
    spec = ctx.model_spec("kl-a")
    ae = ctx.load_model(spec)
    grid = protocol.grid_images(ctx.image_sets(), "kl-a")
    cal = grid.loc[(grid["source"] == "kl-a") & (grid["split"] == "calibration"), "path"].tolist()
    ev = grid[grid["split"] == "evaluation"]["path"].tolist()
    screen = replace(ctx.inversion_config(dtype=spec.dtype), exit_margin=1.5)
    authors = InversionConfig(device="cpu", dtype=str(spec.dtype), batch_size=screen.batch_size)
    verdict = replace(authors, exit_margin=1.0)

    def trajectories(config, paths):
        return ctx.invert_paths(ae, paths, config).set_index("path").loc[paths, "trajectory"].tolist()

    t = calibrate_threshold([min(x) for x in trajectories(authors, cal)], ctx.split_settings().target_tpr)
    cascade = learn_cascade(trajectories(screen, cal), trajectories(authors, cal), threshold=t, band_margin=1.3,
                            screen=screen, verdict=verdict)
    replayed = replay_cascade(trajectories(screen, ev), trajectories(authors, ev), cascade, screen, verdict)
    truth = np.array([min(x) <= t for x in trajectories(authors, ev)])
    row = rows[(rows["verdict"] == "authors") & (rows["band_margin"] == 1.3)].iloc[0]
    assert row["agreement"] == pytest.approx(np.mean(replayed["belonging"] == truth))
    assert row["image_steps_fraction"] == pytest.approx(np.mean(replayed["steps_run"]) / 100)
    assert row["n_band"] == int(np.sum(replayed["stage"] == "verdict"))
    # published: results/debug/cascade_frontier.{csv,md} and the figure
    results = workspace / "results" / "debug"
    merged = pd.read_csv(results / "cascade_frontier.csv")
    assert len(merged) == 4
    text = (results / "cascade_frontier.md").read_text()
    assert "## Chosen on the selection set" in text and "| kl-a | fast |" in text and SPEED in text
    assert "| kl-a | fast | short | 1.30 | 1.50 | 1.00 |" in text.split("## Pinned")[1]
    assert (Path(cfg.outputs.figures) / "cascade_frontier.png").stat().st_size > 0


def test_the_authors_schedule_cannot_screen(micro_zoo, workspace, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(cf.zoo, "machine_speed", lambda threads=1: SPEED)
    cfg = job("cascade_frontier", workspace, micro_zoo, tmp_path / "out",
              ["inspected=[kl-a]", "logger=none", "inversion=paper"])
    with pytest.raises(ValueError, match="the authors' schedule screens nothing"):
        study.run(cfg, "cascade_frontier")
