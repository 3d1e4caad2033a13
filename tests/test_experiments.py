"""The experiment entry points end to end on a micro zoo (untrained members, a few images, a few steps).

In-process runs compose the configs like ``@hydra.main`` and call each entry point's ``run(cfg)``; the joblib and
submitit launchers are exercised through the real command line. W&B runs offline into tmp dirs (never the
network, never the home directory).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import micro_zoo as _micro
from helpers.micro_zoo import MEMBERS, MICRO, REPO, job

from experiments import ablations, common, figures, generate, invert, table1
from latenttracer import protocol, tables, tracking
from latenttracer.store import ResultStore

# The shared fixtures (tests/helpers/micro_zoo.py), bound here so that this module uses them.
_wandb_sandbox, micro_zoo, workspace = _micro._wandb_sandbox, _micro.micro_zoo, _micro.workspace


def offline_records(run_file: Path) -> list:
    """The protobuf records of an offline W&B run file (a LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, chunks, partial = run_file.read_bytes(), 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        piece, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            chunks.append(piece)
        elif kind in (2, 3):
            partial = (b"" if kind == 2 else partial) + piece
        elif kind == 4:
            chunks.append(partial + piece)
            partial = b""
    records = []
    for chunk in chunks:
        rec = pb.Record()
        rec.ParseFromString(chunk)
        records.append(rec)
    return records


def wandb_summary(out: Path) -> tuple[dict, list]:
    """(summary values, record types) of the one offline W&B run under ``out``."""
    runs = list(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    import json

    summary, kinds = {}, []
    for rec in offline_records(runs[0]):
        kinds.append(rec.WhichOneof("record_type"))
        if kinds[-1] == "summary":
            for item in rec.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary, kinds


# -- table1 ------------------------------------------------------------------------------------------------------
def test_table1_end_to_end_with_wandb_offline(micro_zoo, workspace, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = job("table1", workspace, micro_zoo, out, ["logger=wandb"])
    cells = table1.run(cfg)

    # the grid: 6 inspected models x (5 other members + real + all pooled), counts as the protocol says
    assert len(cells) == 6 * 7
    other = cells[~cells["source"].isin(["real", "all"])]
    assert (cells["n_belonging"] == 3).all() and (other["n_non_belonging"] == 3).all()
    assert (cells.loc[cells["source"] == "real", "n_non_belonging"] == 4).all()
    assert (cells.loc[cells["source"] == "all", "n_non_belonging"] == 5 * 3 + 4).all()
    assert not (cells["inspected"] == cells["source"]).any()
    assert cells[["auc", "ap", "tpr_at_1fpr", "tpr_at_5fpr", "accuracy", "balanced_accuracy"]].apply(
        lambda c: c.between(0, 1)).all().all()

    # published files and the job's own copies
    results = workspace / "results" / "debug"
    for suffix in (".md", ".csv", ".tex"):
        assert (results / f"table1{suffix}").is_file() and (out / f"table1{suffix}").is_file()
    published = pd.read_csv(results / "table1.csv")
    assert np.allclose(published["auc"], cells["auc"])
    md = (results / "table1.md").read_text()
    assert "| inspected \\ source | kl-a | kl-b | kl-a-ft | vq | tiny | kl16 | real | all |" in md
    assert "| kl-a | – |" in md and "## AUC" in md and "accuracy at the calibrated threshold" in md
    assert md.strip() in capsys.readouterr().out  # printed
    assert "\\begin{tabular}" in (results / "table1.tex").read_text()
    scores = pd.read_parquet(results / "table1_scores.parquet")
    assert {"inspected", "source", "split", "path", "score", "init_loss", "best_step", "trajectory"} <= set(scores)
    assert len(scores) == 6 * (6 + 5 * 3 + 4)
    assert all(len(t) == 3 for t in scores["trajectory"])
    assert (out / "figures" / "hist_kl-a.png").is_file() and (out / "figures" / "roc_vq.pdf").is_file()
    assert not list(results.glob(".*.tmp")) and not list(out.glob(".*.tmp"))  # atomic writes leave nothing

    # the threshold is set on the calibration half: at least 95% of it is at or below
    cal = scores[(scores.inspected == "kl-a") & (scores.source == "kl-a") & (scores.split == "calibration")]
    threshold = cells.loc[cells.inspected == "kl-a", "threshold"].iloc[0]
    assert (cal["score"] <= threshold).mean() >= 0.95

    # W&B: the offline run under the job's output dir holds the per-cell metrics, the table and the artifact
    summary, kinds = wandb_summary(out)
    row = cells[(cells.inspected == "kl-a") & (cells.source == "kl-b")].iloc[0]
    assert summary["table1/kl-a/kl-b/auc"] == pytest.approx(row["auc"])
    assert summary["table1/vq/all/accuracy"] == pytest.approx(
        cells[(cells.inspected == "vq") & (cells.source == "all")].iloc[0]["accuracy"])
    assert summary["table1/_type"] == "table-file" and summary["table1/nrows"] == len(cells)
    assert "artifact" in kinds and kinds[-1] == "exit"


def test_table1_rerun_is_cached_and_logger_none_writes_no_wandb_files(micro_zoo, workspace, tmp_path):
    first = job("table1", workspace, micro_zoo, tmp_path / "first")
    cells_first = table1.run(first)  # computes whatever the previous test did not (or everything, alone)
    out = tmp_path / "second"
    cells = table1.run(job("table1", workspace, micro_zoo, out, ["logger=none"]))
    pd.testing.assert_frame_equal(cells, cells_first)
    scores = pd.read_parquet(out / "table1_scores.parquet")
    assert scores["cached"].all()  # nothing recomputed
    assert not list(out.rglob("*wandb*")) and not (tmp_path / "wandb_dir").exists()


def test_wandb_failure_warns_and_loses_no_results(micro_zoo, workspace, tmp_path, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("no W&B today")

    monkeypatch.setattr(wandb, "init", broken)
    out = tmp_path / "out"
    with pytest.warns(RuntimeWarning, match="W&B init failed"):
        cells = table1.run(job("table1", workspace, micro_zoo, out, ["logger=wandb", "inspected=[tiny]"]))
    assert len(cells) == 7 and (out / "table1.csv").is_file()


def test_tracker_calls_never_raise(tmp_path):
    class Boom:
        dir = str(tmp_path / "run" / "files")

        def __getattr__(self, name):
            raise RuntimeError(f"{name} broke")

    tracker = tracking.WandbTracker(Boom(), wandb=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.log_metrics({"a": 1.0})
        tracker.log_table("t", pd.DataFrame({"a": [1]}))
        tracker.log_images({"x": tmp_path / "x.png"})
        tracker.log_artifact(tmp_path / "x.parquet", name="x", type="scores")
        tracker.finish()
    assert len(caught) == 5 and all("results on disk are not affected" in str(w.message) for w in caught)
    assert not tracking.start_run({"backend": "none"}).active
    with pytest.raises(ValueError, match="unknown key"):
        tracking.start_run({"backend": "wandb", "offline": True})


def test_tracker_tables_keep_only_scalar_columns(tmp_path):
    """Score rows carry trajectories (lists) and best latents (bytes): W&B tables get the scalar columns only."""
    logged = {}

    class FakeWandb:
        class Table:
            def __init__(self, dataframe):
                self.dataframe = dataframe

    class FakeRun:
        dir = str(tmp_path / "run" / "files")

        def log(self, values):
            logged.update(values)

    tracker = tracking.WandbTracker(FakeRun(), wandb=FakeWandb)
    rows = pd.DataFrame({"path": ["a.png"], "score": [1e-6], "trajectory": [[1.0, 0.5]], "best_latent": [b"\x93NUMPY"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed log would warn
        tracker.log_table("scores", rows)
    assert list(logged["scores"].dataframe.columns) == ["path", "score"]


def test_another_generation_seed_end_to_end(micro_zoo, tmp_path):
    """`make reproduce-table1 ARGS=suite.generated.seed=1`: the generation step, then table1, same overrides."""
    import json

    root = tmp_path / "root"
    quick = [f"suite.models.{m}.generation.num_inference_steps=2" for m in MEMBERS]  # a generation setting too
    seed1 = ["suite.generated.seed=1", *quick]
    made = generate.run(job("generate", root, micro_zoo, tmp_path / "g1", seed1))  # every set of the suite
    assert made == {**{m: 6 for m in MEMBERS}, "real": 4}
    images = root / "results" / "cache" / "images"
    for name in MEMBERS:
        record = json.loads((images / "seed1" / name / "set.json").read_text())
        assert record["config"]["seed"] == 1 and len(list((images / "seed1" / name).glob("*.png"))) == 6
    assert not (images / "kl-a").exists()  # the seed-0 place is left alone

    cells = table1.run(job("table1", root, micro_zoo, tmp_path / "t1", [*seed1, "inspected=[kl-a,vq]",
                                                                         "figures=false"]))
    assert len(cells) == 2 * 7
    scores = pd.read_parquet(tmp_path / "t1" / "table1_scores.parquet")
    generated = scores[scores["source"] != "real"]
    assert generated["path"].map(lambda p: Path(p).parent.parent.name == "seed1").all()
    assert "(generation seed 1)" in (tmp_path / "t1" / "table1.md").read_text()

    # the default seed next to it: its own set at the old place, neither refuses the other
    made = generate.run(job("generate", root, micro_zoo, tmp_path / "g0", ["images=kl-a", *quick]))
    assert made == {"kl-a": 6}
    assert json.loads((images / "kl-a" / "set.json").read_text())["config"]["seed"] == 0
    zero = common.generated_set(job("table1", root, micro_zoo, tmp_path / "x", quick), "kl-a")
    one = common.generated_set(job("table1", root, micro_zoo, tmp_path / "y", seed1), "kl-a")
    assert {p.parent for p in zero} == {images / "kl-a"} and {p.parent for p in one} == {images / "seed1" / "kl-a"}
    assert [p.read_bytes() for p in zero] != [p.read_bytes() for p in one]
    with pytest.raises(FileExistsError, match="num_inference_steps|pipeline_kwargs"):  # settings differ: refused
        common.generated_set(job("table1", root, micro_zoo, tmp_path / "z"), "kl-a")


# -- invert, ablations, figures ----------------------------------------------------------------------------------
def test_invert_named_sets_and_a_folder(micro_zoo, workspace, tmp_path):
    cfg = job("invert", workspace, micro_zoo, tmp_path / "a", ["model=vq", "images=kl-b", "split=evaluation"])
    rows = invert.run(cfg)
    assert len(rows) == 3 and set(rows["source"]) == {"kl-b"} and set(rows["split"]) == {"evaluation"}
    assert (tmp_path / "a" / "scores.csv").is_file()
    stored = ResultStore(cfg.store).load(model="vq")
    assert set(rows["sha256"]) <= set(stored["sha256"])

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in common.real_set(cfg)[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    rows = invert.run(job("invert", workspace, micro_zoo, tmp_path / "b", ["model=vq", f"images={folder}"]))
    assert len(rows) == 2 and set(rows["source"]) == {"photos"}
    with pytest.raises(ValueError, match="not a model of suite"):
        invert.run(job("invert", workspace, micro_zoo, tmp_path / "c", ["images=nowhere"]))


def test_invert_shards_score_every_image_once_with_the_unsharded_scores(micro_zoo, workspace, tmp_path):
    whole = invert.run(job("invert", workspace, micro_zoo, tmp_path / "w", ["model=kl-a", "images=table1"]))
    parts = [invert.run(job("invert", workspace, micro_zoo, tmp_path / f"s{i}",
                            ["model=kl-a", "images=table1", "shards=3", f"shard={i}"])) for i in range(3)]
    joined = pd.concat(parts).sort_values("path").reset_index(drop=True)
    assert sorted(len(p) for p in parts) != [0, 0, len(whole)] and len(joined) == len(whole)
    assert joined["path"].tolist() == sorted(whole["path"])
    assert joined["cached"].all()  # the whole run stored every score; the shards recompute nothing
    ref = whole.set_index("path").loc[joined["path"], "score"].to_numpy()
    assert np.array_equal(joined["score"].to_numpy(), ref)
    with pytest.raises(ValueError, match="shard=3, shards=3"):
        invert.run(job("invert", workspace, micro_zoo, tmp_path / "bad", ["images=table1", "shards=3", "shard=3"]))


@pytest.mark.parametrize("init", ["encoder", "random"])
def test_truncated_trajectory_equals_a_direct_run(micro_zoo, workspace, tmp_path, init):
    cfg = job("ablations", workspace, micro_zoo, tmp_path, [f"inversion.init={init}"])
    ae = common.load_model(cfg, cfg.suite.models["kl-a"])
    paths = protocol.grid_images(common.image_sets(cfg), "kl-a")["path"].tolist()[:10]
    for steps in (0, 1, 2, 5, 7):
        inv = common.inversion_config(cfg, steps=steps)
        direct = common.invert_paths(cfg, ae, paths, inv)
        cut = common.invert_paths(cfg, ae, paths, inv, trajectory_steps=7)
        assert direct["score"].tolist() == cut["score"].tolist()  # bit for bit
        assert direct["best_step"].tolist() == cut["best_step"].tolist()
        assert [list(t) for t in direct["trajectory"]] == [list(t) for t in cut["trajectory"]]


def test_ablation_rows_are_merged_without_duplicates(micro_zoo, workspace, tmp_path):
    overrides = ["inspected=[kl-a]", "ablation.name=steps", "ablation.trajectory_steps=5"]
    for steps in (1, 5):
        ablations.run(job("ablations", workspace, micro_zoo, tmp_path / f"s{steps}", [*overrides,
                                                                                       f"inversion.steps={steps}"]))
    csv = workspace / "results" / "debug" / "ablations.csv"
    first = pd.read_csv(csv)
    ablations.run(job("ablations", workspace, micro_zoo, tmp_path / "again", [*overrides, "inversion.steps=5"]))
    again = pd.read_csv(csv)
    assert len(again) == len(first)  # the rerun replaced its rows
    mine = again[again["ablation"] == "steps"]
    assert sorted(mine["steps"].unique()) == [1, 5] and len(mine) == 2 * 7
    assert not mine.duplicated(ablations.KEY).any()


def test_upsert_csv_replaces_rows_with_the_same_key(tmp_path):
    path = tmp_path / "t.csv"
    tables.upsert_csv(path, pd.DataFrame({"k": [1, 2], "lr": [0.1, 0.05], "v": [10, 20]}), ["k", "lr"])
    merged = tables.upsert_csv(path, pd.DataFrame({"k": [2, 3], "lr": [0.05, 0.5], "v": [21, 30]}), ["k", "lr"])
    assert merged.values.tolist() == [[1, 0.1, 10], [2, 0.05, 21], [3, 0.5, 30]]
    assert pd.read_csv(path).values.tolist() == merged.values.tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]
    # a missing key value (read back from the file as NaN) matches a missing one written again
    nan = float("nan")
    tables.upsert_csv(path, pd.DataFrame({"k": [3, 4], "lr": [nan, nan], "v": [1, 2]}), ["k", "lr"])
    again = tables.upsert_csv(path, pd.DataFrame({"k": [4], "lr": [nan], "v": [3]}), ["k", "lr"])
    assert again["v"].tolist() == [10, 21, 30, 1, 3]


def test_figures_from_cached_files_only(micro_zoo, workspace, tmp_path, monkeypatch):
    small = ["outputs.table1=${paths.results_dir}/table1_small"]
    table1.run(job("table1", workspace, micro_zoo, tmp_path / "t", [*small, "inspected=[kl-a,tiny]", "figures=false"]))
    for lr in (0.01, 0.05):
        ablations.run(job("ablations", workspace, micro_zoo, tmp_path / f"lr{lr}",
                          ["experiment=ablation_lr", f"inversion.lr={lr}"]))
    monkeypatch.setattr(protocol, "invert_paths", lambda *a, **k: pytest.fail("figures must not invert"))
    made = figures.run(job("figures", workspace, micro_zoo, tmp_path / "f", small))
    target = workspace / "results" / "debug" / "figures"
    assert {"hist_kl-a", "roc_kl-a", "loss_vs_step_tiny", "auc_vs_lr"} <= set(made)
    for name in made:
        assert (target / f"{name}.png").stat().st_size > 1000 and (target / f"{name}.pdf").is_file()
        assert (tmp_path / "f" / "figures" / f"{name}.png").is_file()  # the job's own copy
    assert "AUC [95% CI] (all sources pooled) vs learning rate" in (target / "ablations.md").read_text()


# -- launchers (the real command line) ---------------------------------------------------------------------------
def _cli(module: str, args: list[str], root: Path, zoo_dir: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "LATENTTRACER_ROOT": str(root)}
    flags = [a for a in args if a.startswith("-")]  # Hydra's flags go before the overrides
    cmd = [sys.executable, "-m", module, *flags, *MICRO, f"paths.root_dir={root}", f"paths.zoo_dir={zoo_dir}",
           *[a for a in args if not a.startswith("-")]]
    done = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.e2e
def test_lr_multirun_with_the_joblib_launcher(micro_zoo, tmp_path):
    _cli("experiments.ablations", ["experiment=ablation_lr", "inversion.lr=0.01,0.1", "hydra/launcher=joblib",
                                   "hydra.launcher.n_jobs=2", "threads=1"],
         tmp_path, micro_zoo)
    rows = pd.read_csv(tmp_path / "results" / "debug" / "ablations.csv")
    assert sorted(rows["lr"].unique()) == [0.01, 0.1]  # the command line replaced the preset's 5 values
    assert len(rows) == 2 * 7 and set(rows["ablation"]) == {"lr"}
    (sweep,) = (tmp_path / "multirun" / "ablations").iterdir()  # the default sweep dir, under the root
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert all((sweep / j / "ablation_cells.csv").is_file() for j in ("0", "1"))


@pytest.mark.e2e
def test_invert_multirun_with_the_submitit_local_launcher(micro_zoo, tmp_path):
    _cli("experiments.invert", ["-m", "hydra/launcher=submitit_local", "model=tiny", "images=real",
                                f"hydra.sweep.dir={tmp_path}/sweep", "hydra.launcher.timeout_min=5"],
         tmp_path, micro_zoo)
    assert len(pd.read_csv(tmp_path / "sweep" / "0" / "scores.csv")) == 4
    assert list(tmp_path.glob("sweep/.submitit/*/*_result.pkl"))  # it really went through submitit
    assert set(ResultStore(tmp_path / "results" / "cache" / "scores").load()["model"]) == {"tiny"}


# -- peer methods and attribution ---------------------------------------------------------------------------------
def test_methods_latenttracer_is_table1_and_recomputes_nothing(micro_zoo, workspace, tmp_path):
    from experiments import study

    t1 = table1.run(job("table1", workspace, micro_zoo, tmp_path / "t1"))
    before = len(ResultStore(workspace / "results" / "cache" / "scores").load())
    cells = study.run(job("methods", workspace, micro_zoo, tmp_path / "m", ["method=latenttracer"]), "methods").frame
    assert len(ResultStore(workspace / "results" / "cache" / "scores").load()) == before  # the probe is uncached
    assert (cells["method"] == "latenttracer").all() and (cells["preset"] == "latenttracer").all()
    merged = cells.merge(t1, on=["inspected", "source"], suffixes=("", "_t1"))
    assert len(merged) == len(t1) == len(cells)
    for metric in ("auc", "ap", "threshold", "accuracy", "auc_step0"):
        assert np.allclose(merged[metric], merged[f"{metric}_t1"], equal_nan=True), metric
    assert (cells["seconds_per_image"] > 0).all() and (cells["probe_images"] == 3).all()  # 3 evaluation images
    scores = pd.read_parquet(workspace / "results" / "debug" / "cache" / "methods" / "latenttracer_scores.parquet")
    assert scores["cached"].all() and len(scores) == 6 * (6 + 5 * 3 + 4)


@pytest.mark.e2e
def test_methods_multirun_and_aggregation_end_to_end(micro_zoo, tmp_path):
    _cli("experiments.methods", ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=1",
                                 "method=aedr,aeroblade_l2"], tmp_path, micro_zoo, timeout=900)
    runs = tmp_path / "results" / "debug" / "cache" / "methods"
    assert sorted(p.name for p in runs.iterdir()) == sorted(
        f"{preset}_{kind}" for preset in ("aedr", "aeroblade_l2") for kind in ("cells.csv", "scores.parquet"))
    (sweep,) = (tmp_path / "multirun" / "methods").iterdir()
    assert all((sweep / j / "cells.csv").is_file() and (sweep / j / "scores.parquet").is_file() for j in ("0", "1"))
    aedr = pd.read_parquet(runs / "aedr_scores.parquet")
    assert {"loss_1", "loss_2", "homogeneity"} <= set(aedr)  # the method's components, per image
    ok = aedr[aedr["status"] == "ok"]
    assert np.allclose(ok["score"], ok["loss_1"] * ok["homogeneity"] / ok["loss_2"])
    assert aedr["init_loss"].isna().all()

    done = _cli("experiments.methods", ["aggregate=true"], tmp_path, micro_zoo)
    results = tmp_path / "results" / "debug"
    table = pd.read_csv(results / "methods.csv")
    assert sorted(table["method"].unique()) == ["aedr", "aeroblade[l2]"]  # labelled plainly, never as LPIPS
    assert len(table) == 2 * 6 * 7 and not table.duplicated(["method", "inspected", "source"]).any()
    assert table["auc_step0"].isna().all()  # no init_loss for these methods
    assert (table["seconds_per_image"] > 0).all() and (table["threads"] == 1).all()
    # each method's own threshold: AEDR's from a KDE, AEROBLADE's the 95% quantile of its calibration scores
    for preset, label in (("aedr", "aedr"), ("aeroblade_l2", "aeroblade[l2]")):
        scores = pd.read_parquet(runs / f"{preset}_scores.parquet")
        cal = scores[(scores.inspected == "vq") & (scores.source == "vq") & (scores.split == "calibration")]
        t = table[(table.method == label) & (table.inspected == "vq")]["threshold"].iloc[0]
        if label == "aedr":
            assert t == pytest.approx(_kde_quantile(cal["score"].to_numpy(), 0.95), rel=1e-6)
        else:
            assert (cal["score"] <= t).mean() >= 0.95
    md = (results / "methods.md").read_text()
    assert "| method / inspected \\ source | kl-a | kl-b | kl-a-ft | vq | tiny | kl16 | real | all |" in md
    assert "| aeroblade[l2] / kl-a | – |" in md and "## TPR@5%FPR" in md and "image-steps/s" in md
    assert "| method / inspected | median belonging | median non-belonging | ratio |" in md
    assert md.strip() in done.stdout
    assert "\\begin{tabular}" in (results / "methods.tex").read_text()
    for fmt in ("png", "pdf"):
        assert (results / "figures" / f"methods_auc_vs_seconds.{fmt}").stat().st_size > 1000


def _kde_quantile(values: np.ndarray, q: float, points: int = 10_000) -> float:
    """AEDR's KDE threshold computed here with numpy alone: a Gaussian KDE with Scott's bandwidth
    (``std(ddof=1) * n ** -0.2``) on ``points`` evenly spaced values from ``min - std`` to ``max + std``, its
    cumulative sum normalised to 1, and where it reaches ``q`` (linear interpolation)."""
    values = np.asarray(values, dtype=np.float64)
    std = values.std(ddof=1)
    h = std * len(values) ** -0.2
    grid = np.linspace(values.min() - std, values.max() + std, points)
    density = np.exp(-0.5 * ((grid[:, None] - values[None, :]) / h) ** 2).sum(1)
    cdf = np.cumsum(density)
    return float(np.interp(q, cdf / cdf[-1], grid))


def _fake_grid(models: list[str], n: int = 4, n_real: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table-1-shaped (cells, scores) where each model scores its own images low and everything else high."""
    rows, cells = [], []
    sets = {m: {"calibration": [f"{m}/c{i}.png" for i in range(n)],
                "evaluation": [f"{m}/e{i}.png" for i in range(n)]} for m in models}
    sets["real"] = {"evaluation": [f"real/r{i}.png" for i in range(n_real)]}
    rng = np.random.default_rng(0)
    for inspected in models:
        images = protocol.grid_images(sets, inspected)
        own = images["source"] == inspected
        score = np.where(own, 0.1, 1.0) * rng.uniform(0.9, 1.1, len(images))
        rows.append(images.assign(inspected=inspected, score=score, status="ok", sha256="x"))
        cells.append({"inspected": inspected, "source": "all", "threshold": 0.2})
    return pd.DataFrame(cells), pd.concat(rows, ignore_index=True)


def test_method_parts_per_inspected_model_are_joined_and_newer_rows_win(tmp_path):
    """RONAN runs one job per inspected model: its parts read as one preset; a newer part replaces a whole run's
    rows for its model only."""
    import os

    from latenttracer.studies import methods

    models = ["kl-a", "kl-b", "vq"]
    cells, scores = _fake_grid(models)
    cells, scores = cells.assign(method="ronan", preset="ronan"), scores.assign(method="ronan")
    runs = tmp_path / "runs"
    runs.mkdir()

    def write(stem: str, keep: list[str], mtime: int, shift: float = 0.0) -> None:
        cells[cells.inspected.isin(keep)].to_csv(runs / f"{stem}_cells.csv", index=False)
        part = scores[scores.inspected.isin(keep)].assign(score=lambda f: f["score"] + shift)
        part.to_parquet(runs / f"{stem}_scores.parquet")
        for f in (runs / f"{stem}_cells.csv", runs / f"{stem}_scores.parquet"):
            os.utime(f, (mtime, mtime))

    assert methods.run_name("ronan", None) == "ronan"
    assert methods.run_name("ronan", ["kl-a"]) == methods.run_name("ronan", ("kl-a",)) == "ronan@kl-a"
    write("ronan", models, 1000)                                           # an old whole run
    write(methods.run_name("ronan", ["kl-b"]), ["kl-b"], 2000, shift=5.0)  # a newer part: kl-b only
    write(methods.run_name("ronan", ["vq"]), ["vq"], 3000, shift=7.0)
    (got_cells, got_scores), = methods.load_runs(runs).values()
    assert sorted(got_cells["inspected"]) == models and len(got_scores) == len(scores)
    for model, shift in (("kl-a", 0.0), ("kl-b", 5.0), ("vq", 7.0)):
        want = scores.loc[scores.inspected == model, "score"].to_numpy() + shift
        assert np.allclose(got_scores.loc[got_scores.inspected == model, "score"].to_numpy(), want), model
    assert len(methods.read_runs(runs)) == len(cells)
    sep = methods.separation({"ronan": (cells, scores)}).set_index("inspected")
    assert list(sep.index) == models and (sep["method"] == "ronan").all()
    assert sep["ratio"].between(8, 13).all()  # own images score 0.1 x (0.9..1.1), every other source 1 x (0.9..1.1)
    (runs / "ronan@vq_scores.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="ronan@vq_scores.parquet: missing"):
        methods.load_runs(runs)


def test_attribution_end_to_end_on_separable_scores(micro_zoo, tmp_path):
    from experiments import study

    cfg = job("attribution", tmp_path, micro_zoo, tmp_path / "out")
    models = list(cfg.suite.models)
    results = tmp_path / "results" / "debug"
    cells, scores = _fake_grid(models)
    results.mkdir(parents=True)
    cells.to_csv(results / "table1.csv", index=False)
    scores.to_parquet(results / "table1_scores.parquet")
    # a second "method" that cannot tell kl-a from kl-a-ft (both claim each other's images equally)
    runs = results / "cache" / "methods"
    runs.mkdir(parents=True)
    blurred = scores.copy()
    pair = blurred["inspected"].isin(["kl-a", "kl-a-ft"]) & blurred["source"].isin(["kl-a", "kl-a-ft"])
    blurred.loc[pair, "score"] = np.where(blurred.loc[pair, "inspected"] == "kl-a", 0.1, 0.12)
    blurred.assign(method="aedr").to_parquet(runs / "aedr_scores.parquet")
    cells.assign(method="aedr", preset="aedr").to_csv(runs / "aedr_cells.csv", index=False)

    table = study.run(cfg, "attribution").frame
    published = pd.read_csv(results / "attribution.csv")
    assert list(published["method"].unique()) == ["latenttracer", "aedr"]
    lt = published[published["method"] == "latenttracer"].set_index("source")
    assert list(lt.index) == [*models, "real", "all"]
    assert (lt["accuracy"] == 1.0).all()  # separable: a perfect diagonal, real -> none
    for m in models:
        assert lt.loc[m, f"pred_{m}"] == 4 and lt.loc[m, "n"] == 4  # evaluation images only, never calibration
    assert lt.loc["real", "pred_none"] == 3 and lt.loc["all", "n"] == 4 * len(models) + 3
    ae = table[table["method"] == "aedr"].set_index("source")
    assert ae.loc["kl-a-ft", "pred_kl-a"] == 4 and ae.loc["kl-a-ft", "accuracy"] == 0.0  # the hard pair
    assert ae.loc["kl-a", "accuracy"] == 1.0 and ae.loc["vq", "accuracy"] == 1.0
    md = (results / "attribution.md").read_text()
    assert "## Confusion: aedr" in md and "| kl-a-ft | **4** | 0 |" in md.replace("**0**", "0")
    for name in ("latenttracer", "aedr"):
        assert (results / "figures" / f"confusion_{name}.png").stat().st_size > 1000
        assert (tmp_path / "out" / "figures" / f"confusion_{name}.pdf").is_file()
