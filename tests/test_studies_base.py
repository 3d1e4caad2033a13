"""latenttracer/studies/base.py: merged study tables record the image sets their rows were measured on
(<stem>.sets.json) and refuse rows of other sets: the key columns do not name the sets, so without the record a
rerun on other sets would replace some rows and sit beside others unseen."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from helpers.configs import compose_resolved
from helpers.micro_zoo import _wandb_sandbox, job, micro_zoo, workspace  # noqa: F401  (fixtures)

from experiments import common, study
from latenttracer.studies import STUDIES, Merge, OtherSetsError, StudyResult, check_sets, publish
from latenttracer.studies.base import sets_path

RESULTS = Path(__file__).resolve().parents[1] / "results"
SETS = {"suite": "zoo", "generation_seed": 0, "real_seed": 0}


def _publish(stem: Path, job_dir: Path, value: float, sets: dict | None) -> None:
    rows = pd.DataFrame({"inspected": ["kl-a", "kl-b"], "mode": "full", "agreement": value})
    publish(StudyResult(rows, stem=stem, tables={"": rows},
                        merge=Merge(("inspected", "mode"), lambda t: t.to_csv(index=False), sets=sets)), job_dir)


def test_rows_of_other_sets_are_refused_and_kept_aside(tmp_path):
    stem = tmp_path / "results" / "early_exit"
    _publish(stem, tmp_path / "job1", 0.9, SETS)
    assert json.loads(sets_path(stem).read_text()) == SETS
    _publish(stem, tmp_path / "job2", 0.8, SETS)  # the same sets: merged (the rows replaced by key)
    assert list(pd.read_csv(stem.with_suffix(".csv"))["agreement"]) == [0.8, 0.8]
    fresh = {**SETS, "generation_seed": 1000}
    with pytest.raises(OtherSetsError) as err:
        _publish(stem, tmp_path / "job3", 0.7, fresh)
    text = str(err.value)
    assert str(stem.with_suffix(".csv")) in text and "generation_seed: 0 there, 1000 in this run" in text
    assert "real_seed" not in text  # only what differs is named
    # the published table and its record are untouched; this run's rows are kept, unmerged, in its job folder
    assert list(pd.read_csv(stem.with_suffix(".csv"))["agreement"]) == [0.8, 0.8]
    assert json.loads(sets_path(stem).read_text()) == SETS
    kept = tmp_path / "job3" / "early_exit.csv"
    assert str(kept) in text and list(pd.read_csv(kept)["agreement"]) == [0.7, 0.7]
    # a setting only one side records differs too
    with pytest.raises(OtherSetsError, match="n_per_source: None there, 8 in this run"):
        check_sets(stem, {**SETS, "n_per_source": 8})


def test_labelled_sets_sit_side_by_side_and_each_label_is_checked(tmp_path):
    """A table whose key names its sets (Merge label): one record entry per label; rows of another label are
    merged beside, rows of other sets under a recorded label are refused."""
    stem = tmp_path / "results" / "early_exit"

    def publish_as(label: str, sets: dict, value: float, job_dir: str) -> None:
        rows = pd.DataFrame({"sets": label, "inspected": ["kl-a", "kl-b"], "mode": "full", "agreement": value})
        publish(StudyResult(rows, stem=stem, tables={"": rows},
                            merge=Merge(("sets", "inspected", "mode"), lambda t: t.to_csv(index=False), sets=sets,
                                        label=label)), tmp_path / job_dir)

    fresh = {**SETS, "generation_seed": 1000}
    publish_as("zoo", SETS, 0.9, "job1")
    publish_as("zoo seed 1000", fresh, 0.8, "job2")
    assert json.loads(sets_path(stem).read_text()) == {"zoo": SETS, "zoo seed 1000": fresh}
    table = pd.read_csv(stem.with_suffix(".csv"))
    assert list(table["sets"]) == ["zoo", "zoo", "zoo seed 1000", "zoo seed 1000"]
    assert list(table["agreement"]) == [0.9, 0.9, 0.8, 0.8]
    with pytest.raises(OtherSetsError, match="sets 'zoo' generation_seed: 0 there, 1000 in this run"):
        publish_as("zoo", fresh, 0.7, "job3")
    check_sets(stem, fresh, "zoo seed 1000")  # its own entry: no error
    check_sets(stem, {**SETS, "suite": "celeba"}, "celeba")  # a new label: no error


def test_a_table_without_a_record_is_adopted_with_a_warning(tmp_path, caplog):
    stem = tmp_path / "early_exit"
    _publish(stem, tmp_path / "job1", 0.9, None)  # a table published before the sets were recorded
    assert not sets_path(stem).exists()
    with caplog.at_level(logging.WARNING):
        _publish(stem, tmp_path / "job2", 0.8, SETS)
    assert "no record of the image sets" in caplog.text
    assert json.loads(sets_path(stem).read_text()) == SETS


def test_an_unreadable_record_is_an_error_naming_it(tmp_path):
    stem = tmp_path / "early_exit"
    sets_path(stem).write_text("{not json")
    with pytest.raises(OtherSetsError, match=r"early_exit\.sets\.json: unreadable record"):
        check_sets(stem, SETS)


@pytest.mark.parametrize(("name", "overrides", "stem", "label"), [
    ("early_exit", [], "early_exit", "zoo"),
    ("early_exit", ["suite=zoo_fresh"], "early_exit", "zoo seed 1000"),
    ("early_exit", ["suite=zoo_fresh2"], "early_exit", "zoo seed 2000"),
    ("early_exit", ["experiment=table1_celeba"], "early_exit", "celeba"),
    ("real_decoder_early_exit", [], "early_exit", "taef2"),
    ("schedule_sweep", [], "schedule_sweep", None),
])
def test_each_published_table_records_the_sets_of_its_command(name, overrides, stem, label, tmp_path):
    """The record beside each published merged table equals the sets of the config that publishes it (under its
    label where the table's key names the sets), so a rerun of the documented command merges and a run on other
    sets is refused."""
    cfg, _ = compose_resolved(name, overrides, tmp_path)
    ctx = common.Context(cfg)
    study_ = STUDIES.get(name)()
    assert study_.sets_label(cfg, ctx) == label
    record = json.loads(sets_path(RESULTS / stem).read_text())
    expected = json.loads(json.dumps(study_.sets_record(cfg, ctx)))
    assert (record if label is None else record[label]) == expected
    check_sets(RESULTS / stem, expected, label)  # no error


def test_a_study_refuses_an_out_of_other_sets_before_any_work(micro_zoo, workspace, tmp_path):  # noqa: F811
    cfg = job("early_exit", workspace, micro_zoo, tmp_path / "out", ["inspected=[kl-a]", "logger=none"])
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sets_path(out).write_text(json.dumps({**common.protocol(cfg), "generation_seed": 1000}))
    with pytest.raises(OtherSetsError, match="generation_seed: 1000 there, 0 in this run"):
        study.run(cfg, "early_exit")
    assert not out.with_suffix(".csv").exists()
