"""The early-exit frontier study (latenttracer.studies.exit_frontier): its checks, its published tables, a micro run
whose rows equal early exit replayed here by hand."""

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
from latenttracer.early_exit import learn_bounds, replay_frame
from latenttracer.inversion import InversionConfig, verdict
from latenttracer.metrics import calibrate_threshold
from latenttracer.studies import STUDIES
from latenttracer.studies import exit_frontier as ef

RESULTS = Path(__file__).resolve().parents[1] / "results"
SPEED = "123 KL-decoder image-steps/s (a stand-in for the test)"


def _cfg(**changes):
    return OmegaConf.create({**OmegaConf.to_container(OmegaConf.structured(ef.ExitFrontierConfig(out="x"))),
                             **changes})


@pytest.mark.parametrize(("changes", "message"), [
    ({"trends": []}, r"exit_frontier.trends: a non-empty list of distinct numbers >= 0, got \[\]"),
    ({"trends": [-1]}, r"exit_frontier.trends: .* >= 0, got \[-1\]"),
    ({"margins": [0.9]}, r"exit_frontier.margins: .* >= 1, got \[0.9\]"),
    ({"margins": [1.5, 1.5]}, r"exit_frontier.margins: a non-empty list of distinct"),
    ({"accept_margins": [None, "x"]}, r"exit_frontier.accept_margins: .* >= 1 \(or null: none\), got \[None, 'x'\]"),
    ({"pinned": [{"trend": 2, "margin": 1.5}]}, r"exit_frontier.pinned\[0\]: needs exactly the keys"),
    ({"goal_agreement": 99}, r"exit_frontier.goal_agreement: a fraction in \(0, 1\], got 99"),
    ({"pinned": [{"trend": 2, "margin": 1.3, "accept_margin": None}]},
     r"exit_frontier.pinned\[0\].margin: 1.3 is not in the grid's margins \[1.0, 1.2, 1.5, 2.0\]"),
])
def test_a_bad_grid_or_pinned_entry_is_an_error_naming_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        ef.pinned_settings(_cfg(**changes))


def test_pinned_settings_read_null_as_no_accept_bound():
    cfg = _cfg(pinned=[{"trend": 2, "margin": 1.5, "accept_margin": 1.5},
                       {"trend": 0, "margin": 1.2, "accept_margin": None}])
    assert ef.pinned_settings(cfg) == [(2.0, 1.5, 1.5), (0.0, 1.2, None)]


def _row(name, trend, accept, agreement, steps, sel_agreement, sel_steps):
    return {"inspected": name, "schedule": "paper", "steps": 100, "lr": 0.05, "trend": trend, "margin": 1.5,
            "accept_margin": accept, "agreement": agreement, "image_steps_fraction": steps, "tpr": 1.0, "fpr": 0.05,
            "tpr_authors": 0.95, "fpr_authors": 0.06, "disagreements": "", "selection_agreement": sel_agreement,
            "selection_image_steps": sel_steps, "n_evaluation": 350, "n_calibration": 50, "n_negatives": 275,
            "selection_folds": 5, "goal_agreement": 0.99, "goal_image_steps": 0.1, "pinned": accept != accept}


TABLE = pd.DataFrame([
    _row("a", 0.0, np.nan, 0.997, 0.17, 0.998, 0.15),   # no accept bound: chosen on selection for a (too costly)
    _row("a", 2.0, 1.5, 0.995, 0.08, 0.985, 0.07),      # meets both goals on evaluation: the oracle's pick
    _row("b", 0.0, np.nan, 0.999, 0.09, 0.999, 0.09),   # meets both, no accept bound
    _row("b", 2.0, 1.5, 0.992, 0.05, 0.993, 0.05),      # cheaper, also meets both: chosen and oracle for b
])


def test_tables_on_a_hand_made_frontier_keep_the_settings_without_an_accept_bound():
    text = ef.markdown(TABLE, ["a note"], "T")
    chosen = text.split("## Chosen")[1].split("## Oracle")[0]
    row = "| a | paper | 0.0 | 1.50 | none | 0.9980 | 0.1500 | 0.9970 | 0.1700 | 1.00 / 0.050 | 0.95 / 0.060 |  | no |"
    assert row in chosen
    assert "| b | paper | 2.0 | 1.50 | 1.50 | 0.9930 | 0.0500 | 0.9920 | 0.0500 |" in chosen
    one = text.split("## One setting for every model, chosen on the selection set")[1].split("## Oracle")[0]
    # on the selection set both settings meet both goals on b only; the trend-2 one is cheaper in the worst case
    assert "Both goals on the selection set for 1 of 2 models; on the evaluation images for 2 of 2." in one
    assert "| a | paper | 2.0 | 1.50 | 1.50 | 0.9950 | 0.0800 | 1.00 / 0.050 | 0.95 / 0.060 |  | yes |" in one
    assert "| both goals (one setting) |" in one
    oracle = text.split("## Oracle")[1].split("## One setting")[0]
    assert "| a | paper | 2.0 | 1.50 | 1.50 | 0.9950 | 0.0800 | yes |" in oracle
    single = text.split("## One setting for every model: the settings")[1].split("## Pinned")[0]
    # both settings are kept as groups (a NaN accept margin is a setting, not a missing value)
    assert "| paper | 2.0 | 1.50 | 1.50 | 2 | 2 | 0.9920 | 0.0800 |" in single
    assert "| paper | 0.0 | 1.50 | none | 1 | 2 | 0.9970 | 0.1700 |" in single
    assert "Both goals on 1 of 2 (model, setting) pairs." in text.split("## Pinned")[1]


@pytest.mark.parametrize("stem", ["exit_frontier", "exit_frontier_holdout", "exit_frontier_holdout2"])
def test_published_markdown_is_its_csv_rendered(stem):
    published, notes = published_notes(RESULTS / f"{stem}.md", 4, ef.ExitFrontier.command)
    assert published.split("\n")[0] == f"# {ef.ExitFrontier.title}"
    assert ef.markdown(pd.read_csv(RESULTS / f"{stem}.csv"), notes, ef.ExitFrontier.title) == published


def test_registered_with_a_report_section():
    s = STUDIES.get("exit_frontier")
    assert s is ef.ExitFrontier
    assert s.section.tables == ("exit_frontier.csv", "exit_frontier_holdout.csv", "exit_frontier_holdout2.csv")


RUN = ["inspected=[kl-a]", "logger=none", "inversion.steps=4", "selection_folds=2", "trends=[0,2]",
       "margins=[1.2]", "accept_margins=[null,1.5]", "pinned=[{trend:2,margin:1.2,accept_margin:1.5}]"]


def test_micro_run_rows_equal_early_exit_replayed_by_hand(micro_zoo, workspace, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(ef.zoo, "machine_speed", lambda threads=1: SPEED)  # the real one times a decoder for seconds
    cfg = job("exit_frontier", workspace, micro_zoo, tmp_path / "out", RUN)
    rows = study.run(cfg, "exit_frontier").frame
    assert len(rows) == 4 and not rows.duplicated(list(ef.KEY)).any()
    assert set(rows["trend"]) == {0.0, 2.0} and rows["accept_margin"].isna().sum() == 2
    pinned = rows[rows["pinned"]]
    assert len(pinned) == 1 and pinned.iloc[0]["trend"] == 2.0 and pinned.iloc[0]["accept_margin"] == 1.5
    # kl-a's own 3 calibration images; the other five members' calibration halves (3 each) as known negatives
    assert (rows["n_calibration"] == 3).all() and (rows["n_negatives"] == 5 * 3).all()
    assert (rows["selection_folds"] == 2).all()
    assert (rows["n_evaluation"] == 3 + 5 * 3 + 4).all()
    for _, row in rows.iterrows():
        flips = sum(int(part.split(":")[1]) for part in str(row["disagreements"]).split() if ":" in part)
        assert flips == round((1 - row["agreement"]) * row["n_evaluation"])
        assert 0 <= row["selection_agreement"] <= 1 and 0 < row["selection_image_steps"] <= 0.05
        assert 0 <= row["tpr"] <= 1 and 0 <= row["fpr"] <= 1
    # the pinned row recomputed here from the store's trajectories
    ctx = common.Context(cfg)
    spec = ctx.model_spec("kl-a")
    ae = ctx.load_model(spec)
    sets = ctx.image_sets()
    grid = protocol.grid_images(sets, "kl-a")
    cal = grid.loc[(grid["source"] == "kl-a") & (grid["split"] == "calibration"), "path"].tolist()
    evaluation = grid[grid["split"] == "evaluation"]
    neg = [str(p) for s, parts in sets.items() if s != "kl-a" for p in parts.get("calibration", [])]
    schedule = replace(ctx.inversion_config(dtype=spec.dtype), early_exit=False)
    authors = InversionConfig(device="cpu", dtype=str(spec.dtype), batch_size=schedule.batch_size)

    def runs(config, paths):
        return ctx.invert_paths(ae, paths, config).set_index("path").loc[paths]

    t = calibrate_threshold(runs(schedule, cal)["score"], ctx.split_settings().target_tpr)
    t_authors = calibrate_threshold(runs(authors, cal)["score"], ctx.split_settings().target_tpr)
    bounds = learn_bounds(runs(schedule, cal)["trajectory"].tolist(), threshold=t, config=schedule,
                          negatives=runs(schedule, neg)["trajectory"].tolist(), trend=2.0)
    config = bounds.apply(replace(schedule, exit_trend=2.0), margin=1.2, accept_margin=1.5)
    replayed = replay_frame(runs(schedule, evaluation["path"].tolist())["trajectory"].tolist(), config)
    verdicts = np.array([verdict(s, e, t) for s, e in zip(replayed["score"], replayed["exit"])])
    truth = runs(authors, evaluation["path"].tolist())["score"].to_numpy() <= t_authors
    own = (evaluation["source"] == "kl-a").to_numpy()
    row = pinned.iloc[0]
    assert row["agreement"] == pytest.approx(np.mean(verdicts == truth))
    assert row["image_steps_fraction"] == pytest.approx(np.mean(replayed["steps_run"]) / 100)
    assert row["tpr"] == pytest.approx(verdicts[own].mean()) and row["fpr"] == pytest.approx(verdicts[~own].mean())
    assert row["tpr_authors"] == pytest.approx(truth[own].mean())
    # published: results/debug/exit_frontier.{csv,md}, its sets record and the figure
    results = workspace / "results" / "debug"
    assert len(pd.read_csv(results / "exit_frontier.csv")) == 4
    text = (results / "exit_frontier.md").read_text()
    assert "## Chosen on the selection set" in text and "| kl-a | paper |" in text and SPEED in text
    assert "| kl-a | paper | 2.0 | 1.20 | 1.50 |" in text.split("## Pinned")[1]
    assert (results / "exit_frontier.sets.json").exists()
    assert (Path(cfg.outputs.figures) / "exit_frontier.png").stat().st_size > 0


def test_a_trend_in_the_inversion_node_is_refused_not_ignored(micro_zoo, workspace, tmp_path):  # noqa: F811
    cfg = job("exit_frontier", workspace, micro_zoo, tmp_path / "out",
              ["inspected=[kl-a]", "logger=none", "inversion.exit_trend=2"])
    with pytest.raises(ValueError, match=r"inversion.exit_trend=2.0 would be ignored: the trends are the grid's"):
        study.run(cfg, "exit_frontier")
