"""The transfer study: pooled and hardest-pair AUC per method and domain, the findings' sentences, missing domains."""

import math

import numpy as np
import pandas as pd
import pytest
from helpers.auc import pairwise_auc
from helpers.transfer_scores import score_frame, write_domain
from omegaconf import OmegaConf

from latenttracer.intervals import auc_difference, auc_interval
from latenttracer.studies.transfer import (
    COLUMNS,
    Transfer,
    finding_row,
    hardest_pair,
    markdown,
    normalise,
    pooled,
    table1_domain,
    transfer_table,
    verdict,
)


def _eval(frame):
    return frame[frame["split"] == "evaluation"]


def test_pooled_auc_pools_every_inspected_models_pairs():
    frame = score_frame(1.0, models=("a", "b", "c"), n=5, seed=3)
    rows = normalise(frame, "synthetic", "m")
    got = pooled(rows)
    ev = _eval(frame)
    own = ev[ev["source"] == ev["inspected"]]["score"].to_numpy()
    other = ev[ev["source"] != ev["inspected"]]["score"].to_numpy()
    assert got["auc_pooled"] == pytest.approx(pairwise_auc(own, other))
    assert (got["auc_pooled_lo"], got["auc_pooled_hi"]) == pytest.approx(auc_interval(own, other)[1:3])
    assert (got["n_belonging"], got["n_non_belonging"], got["n_models"]) == (len(own), len(other), 3)


def test_hardest_pair_is_the_lowest_model_cell_and_skips_the_real_crops():
    # the real crops score like the belonging images (the lowest cell of all), c is the hardest model
    frame = score_frame(2.0, models=("a", "b", "c"), n=6, seed=1, shifts={"real": 0.0, "c": 0.3})
    got = hardest_pair(normalise(frame, "synthetic", "m"))
    ev = _eval(frame)
    cells = {}
    for (inspected, source), group in ev.groupby(["inspected", "source"]):
        if source not in (inspected, "real"):
            own = ev[(ev["inspected"] == inspected) & (ev["source"] == inspected)]["score"].to_numpy()
            cells[(inspected, source)] = (pairwise_auc(own, group["score"].to_numpy()), own, group["score"])
    (inspected, source), (auc, own, other) = min(cells.items(), key=lambda kv: kv[1][0])
    assert (got["hardest_inspected"], got["hardest_source"]) == (inspected, source) and source == "c"
    assert got["auc_hardest"] == pytest.approx(auc)
    assert (got["auc_hardest_lo"], got["auc_hardest_hi"]) == pytest.approx(auc_interval(own, other)[1:3])


@pytest.mark.parametrize("a_shift, b_shift, n, expected", [
    (3.0, 0.0, 20, "holds"),        # a separates, b does not
    (0.0, 3.0, 20, "reversed"),     # the other way round
    (0.2, 0.0, 4, "not resolved"),  # too few images to tell
])
def test_the_sentence_follows_the_paired_interval(a_shift, b_shift, n, expected):
    frames = {"A": normalise(score_frame(a_shift, n=n, seed=0), "a", "A"),
              "B": normalise(score_frame(b_shift, n=n, seed=5), "b", "B")}
    finding = OmegaConf.create({"claim": "A beats B", "a": "A", "b": "B", "scope": "pooled", "pair_of": "A"})
    row = finding_row(finding, "d", frames)
    ev_a, ev_b = _eval(score_frame(a_shift, n=n, seed=0)), _eval(score_frame(b_shift, n=n, seed=5))

    def classes(ev):
        own = ev["source"] == ev["inspected"]
        return ev[own]["score"].to_numpy(), ev[~own]["score"].to_numpy()

    diff, lo, hi = auc_difference(*classes(ev_a), *classes(ev_b))
    assert (row["diff"], row["diff_lo"], row["diff_hi"]) == pytest.approx((diff, lo, hi))
    assert row["verdict"].startswith(expected)
    side = "holds" if lo > 0 else "reversed" if hi < 0 else "not resolved"
    assert side == expected
    if expected == "not resolved":
        assert row["verdict"] == f"not resolved at n = {row['n_belonging']} + {row['n_non_belonging']}"


def test_verdict_words():
    assert verdict(0.1, 0.01, 0.2, 5, 7) == "holds"
    assert verdict(-0.1, -0.2, -0.01, 5, 7) == "reversed"
    assert verdict(0.1, -0.01, 0.2, 5, 7) == "not resolved at n = 5 + 7"


def test_against_chance_on_the_hardest_pair():
    frames = {"A": normalise(score_frame(3.0, models=("a", "b", "c"), n=10, seed=2, shifts={"c": 0.0}), "a", "A")}
    finding = OmegaConf.create({"claim": "A above chance on its hardest pair", "a": "A", "b": None,
                                "scope": "hardest", "pair_of": "A"})
    row = finding_row(finding, "d", frames)
    cell = hardest_pair(frames["A"])
    assert (row["inspected"], row["source"]) == (cell["hardest_inspected"], cell["hardest_source"])
    assert row["diff"] == pytest.approx(cell["auc_hardest"] - 0.5)
    assert row["diff_lo"] == pytest.approx(cell["auc_hardest_lo"] - 0.5)


def test_a_missing_domain_or_method_is_not_run_with_its_command(tmp_path):
    entry = OmegaConf.create({"name": "gone", "kind": "table1", "table1": str(tmp_path / "none.parquet"),
                              "method_runs": str(tmp_path / "none"), "command": "make produce-it", "about": ""})
    dom = table1_domain(entry)
    assert dom.missing and not dom.frames
    table = transfer_table(["latenttracer", "aedr"], [dom], {"gone": "make produce-it"})
    assert list(table.columns) == COLUMNS
    assert (table["status"] == "not run").all() and table["scores_from"].str.contains("make produce-it").all()
    finding = OmegaConf.create({"claim": "c", "a": "latenttracer", "b": "aedr", "scope": "pooled",
                                "pair_of": "latenttracer"})
    row = finding_row(finding, "gone", dom.frames)
    assert row["verdict"].startswith("not run") and math.isnan(row["diff"])
    text = markdown(table, pd.DataFrame([row]), [dom], [entry])
    assert "not run" in text and "make produce-it" in text


def test_a_malformed_score_file_names_the_file(tmp_path):
    table1, _ = write_domain(tmp_path, score_frame(1.0).drop(columns=["score"]), {})
    entry = OmegaConf.create({"name": "d", "kind": "table1", "table1": str(table1), "method_runs": None,
                              "command": "x", "about": ""})
    with pytest.raises(ValueError, match=str(table1)):
        table1_domain(entry)


def test_the_study_reads_two_domains_and_publishes_both_tables(tmp_path):
    zoo = write_domain(tmp_path / "zoo", score_frame(3.0, seed=0),
                       {"aedr": score_frame(0.5, seed=1, method="aedr")})
    real = write_domain(tmp_path / "real", score_frame(2.0, models=("x", "y", "z"), seed=2), {})
    cfg = OmegaConf.create({
        "methods": ["latenttracer", "aedr"], "out": str(tmp_path / "transfer"),
        "domains": [{"name": "zoo", "kind": "table1", "table1": str(zoo[0]), "method_runs": str(zoo[1]),
                     "command": "make zoo-scores", "about": ""},
                    {"name": "real", "kind": "table1", "table1": str(real[0]), "method_runs": str(real[1]),
                     "command": "make real-scores", "about": ""}],
        "findings": [{"claim": "LatentTracer beats AEDR", "a": "latenttracer", "b": "aedr", "scope": "pooled",
                      "pair_of": "latenttracer"}]})
    result = Transfer().run(cfg, ctx=None)
    table, findings = result.tables[""], result.tables["_findings"]
    assert len(table) == 4 and set(table["domain"]) == {"zoo", "real"}
    row = table[(table["method"] == "aedr") & (table["domain"] == "real")].iloc[0]
    assert row["status"] == "not run" and "make real-scores" in row["scores_from"]
    ok = table[table["status"] == "ok"]
    assert ((ok["auc_pooled_lo"] <= ok["auc_pooled"]) & (ok["auc_pooled"] <= ok["auc_pooled_hi"])).all()
    zoo_finding = findings[findings["domain"] == "zoo"].iloc[0]
    assert zoo_finding["verdict"] == verdict(zoo_finding["diff"], zoo_finding["diff_lo"], zoo_finding["diff_hi"],
                                             zoo_finding["n_belonging"], zoo_finding["n_non_belonging"])
    assert findings[findings["domain"] == "real"].iloc[0]["verdict"].startswith("not run")
    assert zoo_finding["verdict"] in result.markdown
    assert np.isclose(result.objective, table[table["method"] == "latenttracer"]["auc_pooled"].mean())


def test_a_real_decoder_domain_without_its_sets_is_not_run(tmp_path):
    from helpers.configs import compose_resolved

    from experiments import common
    from latenttracer.studies.transfer import real_decoder_domain

    cfg, _ = compose_resolved("transfer", [], tmp_path)
    entry = OmegaConf.create({"name": "taef2", "kind": "real_decoder", "config": "real_decoder",
                              "overrides": [f"paths.root_dir={tmp_path}"], "command": "make real-decoder"})
    dom = real_decoder_domain(entry, common.Context(cfg))
    assert not dom.frames and "no decoded sets" in dom.missing and str(tmp_path) in dom.missing
