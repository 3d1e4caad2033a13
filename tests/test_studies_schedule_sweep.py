"""The schedule search (latenttracer.studies.schedule_sweep): its published table, jobs merging into one table under
a lock, and its objective."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest
from helpers.auc import pairwise_auc
from helpers.micro_zoo import _wandb_sandbox, job, micro_zoo, workspace  # noqa: F401  (fixtures)

from experiments import common, study
from latenttracer.studies import Merge, StudyResult, publish
from latenttracer.studies import schedule_sweep as sweep

RESULTS = Path(__file__).resolve().parents[1] / "results"
RUN = ["inspected=[kl-a]", "n_per_source=1", "eval_steps=[2,5]", "logger=none"]


def test_published_markdown_is_its_csv_rendered():
    published = (RESULTS / "schedule_sweep.md").read_text()
    assert sweep.sweep_markdown(pd.read_csv(RESULTS / "schedule_sweep.csv"), 8) == published


def test_concurrent_jobs_lose_no_rows(tmp_path):
    """Jobs of a multirun publish into one CSV at once: every job's rows are there afterwards, sorted by the key,
    and the Markdown is rendered from the whole merged table."""
    stem = tmp_path / "results" / "schedule_sweep"

    def job_rows(lr: float) -> pd.DataFrame:
        return pd.DataFrame({"inspected": ["kl-a", "kl-b"], "lr": lr, "lr_scale": "absolute", "halve_every": 50,
                             "steps": 25,
                             "schedule": "authors", "auc": [0.9, 0.8], "n_belonging": 3, "n_non_belonging": 5})

    def one(lr: float) -> None:
        rows = job_rows(lr)
        publish(StudyResult(rows, stem=stem, tables={"": rows},
                            merge=Merge(sweep.KEY, lambda t: sweep.sweep_markdown(t, 1), sort=True)),
                tmp_path / f"job{lr}")

    lrs = [round(0.01 * (i + 1), 2) for i in range(12)]
    threads = [threading.Thread(target=one, args=(lr,)) for lr in reversed(lrs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    table = pd.read_csv(stem.with_suffix(".csv"))
    assert list(table["inspected"]) == ["kl-a"] * len(lrs) + ["kl-b"] * len(lrs)  # sorted by the key
    assert list(table["lr"]) == lrs * 2
    text = stem.with_suffix(".md").read_text()
    assert all(f"| {lr:g} | absolute | 50 | 25 | 0.900 | 0.800 |" in text for lr in lrs)  # rows without bounds
    assert "has not been run yet" in text  # no authors' row (lr 0.05, 100 steps) among them
    # each job's own folder holds the merged table as it was when that job published
    assert all((tmp_path / f"job{lr}" / "schedule_sweep.csv").is_file() for lr in lrs)


def test_micro_sweep_objective_and_gap_to_the_authors(micro_zoo, workspace, tmp_path):  # noqa: F811
    cfg = job("schedule_sweep", workspace, micro_zoo, tmp_path / "out", RUN)
    result = study.run(cfg, "schedule_sweep")
    rows = result.frame
    assert list(rows["steps"]) == [2, 3]  # eval_steps above inversion.steps (3) are left out
    assert (rows["n_belonging"] == 3).all() and (rows["n_non_belonging"] == 5).all()  # 1 of 5 other members
    assert result.objective == rows.loc[rows["steps"] == 3, "auc"].min()
    # the AUC recomputed pair by pair from the store's scores of the same images
    ctx = common.Context(cfg)
    spec = ctx.model_spec("kl-a")
    images = sweep.calibration_images(ctx.image_sets(), "kl-a", 1, 0)
    inv = ctx.inversion_config(dtype=spec.dtype)
    scores = ctx.invert_paths(ctx.load_model(spec), images["path"].tolist(), inv,
                              trajectory_steps=3).set_index("path").loc[images["path"], "score"].to_numpy()
    belonging = images["belonging"].to_numpy()
    assert result.objective == pytest.approx(pairwise_auc(scores[belonging], scores[~belonging]), abs=1e-12)
    # the authors' reference (100 steps) on the same images: the gap column appears in the merged table
    study.run(job("schedule_sweep", workspace, micro_zoo, tmp_path / "ref", [*RUN, "inversion.steps=100"]),
              "schedule_sweep")
    results = workspace / "results" / "debug"
    table = pd.read_csv(results / "schedule_sweep.csv")
    assert list(table["steps"]) == [2, 3, 5, 100]  # one row per key (steps 2 of both runs is one key), sorted
    text = (results / "schedule_sweep.md").read_text()
    assert "worst_gap_to_authors" in text and "| 0.05 | absolute | 50 | 100 | 0.0000 |" in text
    # every AUC with its DeLong interval around it, shown in the cells
    assert ((table["auc_lo"] <= table["auc"] + 1e-12) & (table["auc"] <= table["auc_hi"] + 1e-12)).all()
    first = table.iloc[0]
    assert f"{first['auc']:.3f} [{first['auc_lo']:.2f}, {first['auc_hi']:.2f}]" in text
