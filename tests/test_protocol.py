"""The Table 1 protocol of the library (latenttracer/protocol.py) on plain path lists and a stand-in scorer."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latenttracer import protocol
from latenttracer.locks import locked
from latenttracer.metrics import calibrate_threshold


def _paths(source: str, n: int) -> list[Path]:
    return [Path(f"/sets/{source}/{i:05d}.png") for i in range(n)]


def _sets(n: int = 10, n_real: int = 4, models=("a", "b", "c")) -> dict:
    settings = protocol.SplitSettings()
    sets = {m: protocol.split(_paths(m, n), settings) for m in models}
    sets[protocol.REAL] = {"evaluation": _paths("real", n_real)}
    return sets


def _fake_scorer(calls: list):
    """Own images score low (by position), others high; image 'b/00001' fails. Records its calls."""

    def score(inspected: str, paths):
        calls.append((inspected, list(paths)))
        rows = []
        for p in paths:
            source, index = Path(p).parent.name, int(Path(p).stem)
            value = 0.01 * (index + 1) if source == inspected else 1.0 + 0.1 * index
            failed = source == "b" and index == 1
            rows.append({"path": p, "sha256": f"{source}{index}", "score": np.nan if failed else value,
                         "init_loss": 2 * value, "best_step": 0, "status": "failed" if failed else "ok",
                         "reason": "boom" if failed else "", "cached": False, "trajectory": [value]})
        return pd.DataFrame(rows)

    return score


def test_split_is_deterministic_disjoint_and_covers_the_set():
    paths = _paths("a", 11)
    one = protocol.split(paths, protocol.SplitSettings(seed=3))
    assert one == protocol.split(paths, protocol.SplitSettings(seed=3))
    assert len(one["calibration"]) == 6 and len(one["evaluation"]) == 5  # round half up
    assert sorted(one["calibration"] + one["evaluation"]) == sorted(paths)
    assert one != protocol.split(paths, protocol.SplitSettings(seed=4))
    with pytest.raises(ValueError, match="calibration_fraction"):
        protocol.SplitSettings(calibration_fraction=1.0)
    with pytest.raises(ValueError, match="target_tpr"):
        protocol.SplitSettings(target_tpr=0.0)


def test_subset_keeps_order_and_is_seeded():
    paths = _paths("r", 20)
    pick = protocol.subset(paths, 5, seed=1)
    assert len(pick) == 5 and pick == sorted(pick) and set(pick) <= set(paths)
    assert pick == protocol.subset(paths, 5, seed=1) and pick != protocol.subset(paths, 5, seed=2)
    assert protocol.subset(paths, 50, seed=1) == paths


def test_grid_images_of_one_inspected_model():
    sets = _sets()
    grid = protocol.grid_images(sets, "b")
    own = grid[grid["source"] == "b"]
    assert own["split"].tolist() == ["calibration"] * 5 + ["evaluation"] * 5
    others = grid[grid["source"] != "b"]
    assert set(others["split"]) == {"evaluation"}
    assert list(dict.fromkeys(grid["source"])) == ["a", "b", "c", "real"]  # the order of the sets
    assert len(grid) == 10 + 2 * 5 + 4
    with pytest.raises(KeyError, match="no image set"):
        protocol.grid_images(sets, "zz")


def test_evaluate_with_a_stand_in_scorer():
    sets, calls = _sets(), []
    cells, scores = protocol.evaluate(sets, ["a", "b"], _fake_scorer(calls), target_tpr=0.8)
    assert [c[0] for c in calls] == ["a", "b"]  # one call per inspected model, with its grid's paths
    assert calls[0][1] == protocol.grid_images(sets, "a")["path"].tolist()
    assert cells[["inspected", "source"]].values.tolist() == [
        ["a", "b"], ["a", "c"], ["a", "real"], ["a", "all"], ["b", "a"], ["b", "c"], ["b", "real"], ["b", "all"]]
    assert (cells["auc"] == 1.0).all()  # own images score below every other image
    assert list(scores.columns) == protocol.SCORE_COLUMNS and len(scores) == 2 * (10 + 2 * 5 + 4)
    # the threshold is set on the calibration part only, at target_tpr
    own_cal = scores[(scores.inspected == "a") & (scores.source == "a") & (scores.split == "calibration")]
    assert cells.loc[cells.inspected == "a", "threshold"].iloc[0] == calibrate_threshold(own_cal["score"], 0.8)
    # the failed image of b counts in the cells it belongs to and nowhere else
    b_eval = Path("/sets/b/00001.png") in sets["b"]["evaluation"]
    with_failures = cells[cells["n_failed"] > 0]
    assert set(with_failures["inspected"] + "/" + with_failures["source"]) == (
        {"b/a", "b/c", "b/real", "b/all"} | ({"a/b", "a/all"} if b_eval else set()))
    pooled = cells[(cells.inspected == "a") & (cells.source == "all")].iloc[0]
    assert pooled["n_non_belonging"] == 2 * 5 + 4 - (1 if b_eval else 0)  # b and c, and real
    # the baseline AUC comes from init_loss
    assert cells["auc_step0"].notna().all()


def test_a_custom_calibrator_and_a_scorer_without_a_baseline():
    sets, calls = _sets(), []
    fake = _fake_scorer(calls)

    def no_baseline(inspected, paths):
        return fake(inspected, paths).drop(columns=["init_loss", "trajectory"])

    cells, scores = protocol.evaluate(sets, ["c"], no_baseline, calibrate=lambda s: float(s.max()) + 0.5)
    own_cal = scores[(scores.source == "c") & (scores.split == "calibration")]
    assert (cells["threshold"] == own_cal["score"].max() + 0.5).all()
    assert cells["auc_step0"].isna().all()
    assert "init_loss" not in scores and "trajectory" not in scores


def test_cell_metrics_needs_own_images():
    scores = pd.DataFrame({"source": ["b"], "split": ["evaluation"], "score": [1.0], "status": ["ok"]})
    with pytest.raises(ValueError, match="no scored calibration or evaluation images"):
        protocol.cell_metrics(scores, "a", ["b"])


def test_truncate_marks_failures_inside_the_prefix_only():
    frame = pd.DataFrame({"trajectory": [[3.0, 2.0, np.nan, np.nan], [5.0, 4.0, 1.0, 0.5]], "reason": ["x", ""],
                          "score": [np.nan, 0.5], "best_step": [1, 3], "status": ["failed", "ok"]})
    two = protocol.truncate(frame, 2)
    assert two["status"].tolist() == ["ok", "ok"] and two["score"].tolist() == [2.0, 4.0]
    three = protocol.truncate(frame, 3)
    assert three["status"].tolist() == ["failed", "ok"] and three["best_step"].tolist() == [1, 2]
    assert protocol.truncate(frame, 0)["score"].tolist() == [3.0, 5.0]  # 0 steps scores iteration 0
    assert protocol.truncate(frame, 3, strategy="last")["score"].tolist()[1] == 1.0
    with pytest.raises(ValueError, match="cannot give a 5-step run"):
        protocol.truncate(frame, 5)


def test_flat_metrics_names_and_skips_nan():
    cells = pd.DataFrame([{"inspected": "a", "source": "b", "auc": 0.9, "threshold": np.nan}])
    assert protocol.flat_metrics(cells, "t", ("auc", "threshold")) == {"t/a/b/auc": 0.9}


def test_locked_serialises_blocks(tmp_path):
    order = []

    def job(tag):
        with locked(tmp_path / "deep" / "x.lock"):
            order.append(f"{tag}+")
            time.sleep(0.05)
            order.append(f"{tag}-")

    threads = [threading.Thread(target=job, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])


# -- score_once: parallel jobs never score one path at once, and jobs with other paths never wait -----------------
def _recording_run(calls: list, before=None):
    """A stand-in ``run``: one row per path (score = its length), recording each call; ``before(chosen)`` first."""

    def run(chosen):
        calls.append(list(chosen))
        if before is not None:
            before(chosen)
        return pd.DataFrame({"path": chosen, "score": [float(len(p)) for p in chosen]}), []

    return run


def _in_threads(*jobs):
    errors = []

    def wrap(fn):
        try:
            fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=wrap, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a job never finished"
    if errors:
        raise errors[0]


def test_score_once_runs_jobs_with_disjoint_paths_side_by_side(tmp_path):
    # Each job's run waits until the other job's run has started: with one lock per (model, run hash), as before,
    # the second job could not start before the first finished and the first would time out.
    started = {"a": threading.Event(), "b": threading.Event()}
    calls = {"a": [], "b": []}

    def job(tag, other):
        def before(_):
            started[tag].set()
            if not started[other].wait(10):
                raise TimeoutError(f"job {tag}: job {other} never started while {tag} was running")

        paths = [f"/sets/{tag}/{i}.png" for i in range(3)]
        frame, skipped = protocol.score_once(tmp_path / "locks" / "m-hash", paths, _recording_run(calls[tag], before))
        assert frame["path"].tolist() == paths and skipped == []

    _in_threads(lambda: job("a", "b"), lambda: job("b", "a"))
    assert calls == {"a": [[f"/sets/a/{i}.png" for i in range(3)]], "b": [[f"/sets/b/{i}.png" for i in range(3)]]}


def test_score_once_leaves_paths_a_running_job_holds_to_it_and_waits_for_them(tmp_path):
    lock = tmp_path / "m-hash"
    first, second = [], []
    b_ran_its_own = threading.Event()

    def hold(_):  # job a keeps its claim until job b has scored the path only b asked for
        if not b_ran_its_own.wait(10):
            raise TimeoutError("job b never scored its own path")

    def b_before(chosen):
        if chosen == ["/s/4.png"]:
            b_ran_its_own.set()

    shared = ["/s/2.png", "/s/3.png"]
    out = {}

    def job_a():
        out["a"] = protocol.score_once(lock, ["/s/1.png", *shared], _recording_run(first, hold))

    def job_b():
        while not list((tmp_path / "m-hash.claims").glob("*.json")):  # start once a holds its claim
            time.sleep(0.01)
        out["b"] = protocol.score_once(lock, [*shared, "/s/4.png"], _recording_run(second, b_before))

    _in_threads(job_a, job_b)
    assert first == [["/s/1.png", *shared]]
    # b scores its own path at once, the shared ones only after a released them (a store would then hold them)
    assert second == [["/s/4.png"], shared]
    assert out["b"][0]["path"].tolist() == [*shared, "/s/4.png"]  # rows in the order asked for
    assert list((tmp_path / "m-hash.claims").glob("*.json")) == []  # claims are removed when released


def test_score_once_takes_over_the_claim_of_a_job_that_died(tmp_path):
    claims = tmp_path / "m-hash.claims"
    claims.mkdir()
    (claims / "123-dead.json").write_text('["/s/1.png"]')  # nobody holds its lock: its job is gone
    calls = []
    frame, _ = protocol.score_once(tmp_path / "m-hash", ["/s/1.png", "/s/2.png"], _recording_run(calls))
    assert calls == [["/s/1.png", "/s/2.png"]] and frame["path"].tolist() == ["/s/1.png", "/s/2.png"]
    assert not (claims / "123-dead.json").exists()


def test_score_once_with_no_paths_returns_the_runs_empty_frame(tmp_path):
    frame, skipped = protocol.score_once(tmp_path / "m-hash", [], _recording_run([]))
    assert frame.empty and list(frame.columns) == ["path", "score"] and skipped == []
