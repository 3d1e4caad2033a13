"""Where it breaks: the robustness, decoder-drift and complexity entry points end to end on the micro zoo."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.auc import pairwise_auc
from helpers.micro_zoo import _wandb_sandbox, job, micro_zoo, workspace  # noqa: F401  (fixtures)

from data_gen.sets import ModelSpec
from data_gen.zoo import drift as zoo_drift
from data_gen.zoo.members import load_member
from data_gen.zoo.training import MICRO
from experiments import common, study, table1
from latenttracer import protocol
from latenttracer.perturbations import perturbed_set
from latenttracer.studies import drift, robustness

ROBUSTNESS = ["inspected=[kl-a]", "perturbation.conditions=[jpeg:50,noise:0.1]", "logger=none", "calibration=[clean]",
              "methods=[{name: latenttracer, n_belonging: 2, n_per_source: 1}, "
              "{name: aeroblade, options: {distance: l2}}]"]


def test_robustness_end_to_end(micro_zoo, workspace, tmp_path):  # noqa: F811
    rows = study.run(job("robustness", workspace, micro_zoo, tmp_path / "out", ROBUSTNESS), "robustness").frame
    assert list(rows["condition"]) == ["clean", "jpeg50", "noise0.1"] * 2
    assert list(rows["method"]) == ["latenttracer"] * 3 + ["aeroblade[l2]"] * 3
    lt = rows[rows["method"] == "latenttracer"]
    # the entry's sizes: 2 belonging, 1 per non-belonging source (5 other members + real)
    assert (lt["n_belonging"] == 2).all() and (lt["n_non_belonging"] == 6).all()
    ab = rows[rows["method"] == "aeroblade[l2]"]
    assert (ab["n_belonging"] == 3).all() and (ab["n_non_belonging"] == 5 * 3 + 4).all()
    # every aeroblade[l2] row (it scores every evaluation image) recomputed here from the images and the store:
    # the AUC as the fraction of (belonging, non-belonging) pairs ranked right, TPR / FPR at the clean threshold
    cfg = job("robustness", workspace, micro_zoo, tmp_path / "check", ROBUSTNESS)
    ctx = common.Context(cfg)
    sets = ctx.image_sets()
    spec = ctx.model_spec("kl-a")
    ae, method = ctx.load_model(spec), ctx.method(cfg.methods[1], dtype=spec.dtype)
    own = sets["kl-a"]["evaluation"]
    others = [p for source, parts in sets.items() if source != "kl-a" for p in parts["evaluation"]]
    by_name = {c.name: c for c in robustness.grid(cfg)}
    for row in ab.itertuples():
        condition = by_name.get(row.condition)  # None: clean
        b, nb = (own, others) if condition is None else (perturbed_set(v, condition, cfg.perturbed_dir)
                                                         for v in (own, others))
        scored = ctx.score_paths(ae, [*map(str, b), *map(str, nb)], method,
                                 store=ctx.store()).set_index("path")["score"]
        sb, snb = scored[[str(p) for p in b]].to_numpy(), scored[[str(p) for p in nb]].to_numpy()
        assert row.auc == pytest.approx(pairwise_auc(sb, snb), abs=1e-12), row.condition
        assert row.tpr == pytest.approx(np.mean(sb <= row.threshold)), row.condition
        assert row.fpr == pytest.approx(np.mean(snb <= row.threshold)), row.condition
    # one clean threshold per method, used for every condition
    assert (rows.groupby("method")["threshold"].nunique() == 1).all()
    # perturbed copies are content-addressed files in the cache, one directory per condition
    perturbed = workspace / "results" / "cache" / "perturbed"
    assert {p.name for p in perturbed.iterdir()} >= {"jpeg50-v1", "noise0.1-seed0-v1"}
    results = workspace / "results" / "debug"
    published = pd.read_csv(results / "robustness.csv")
    assert np.allclose(published["auc"], rows["auc"])
    assert "## auc" in (results / "robustness.md").read_text()
    assert (results / "figures" / "robustness.png").is_file() and (results / "figures" / "robustness.pdf").is_file()
    # a rerun finds every score in the store and gives the same rows
    again = study.run(job("robustness", workspace, micro_zoo, tmp_path / "again", ROBUSTNESS), "robustness").frame
    pd.testing.assert_frame_equal(again, rows)


def test_robustness_rejects_a_bad_condition(micro_zoo, workspace, tmp_path):  # noqa: F811
    cfg = job("robustness", workspace, micro_zoo, tmp_path / "out", ["perturbation.conditions=[jpg:90]"])
    with pytest.raises(ValueError, match=r"perturbation .*conditions.*jpg"):
        robustness.grid(cfg)


def test_drift_series_of_two_tiny_finetunes(micro_zoo, workspace, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(drift, "build_series", functools.partial(zoo_drift.build_series, budget=MICRO))
    cfg = job("drift", workspace, micro_zoo, tmp_path / "out", ["steps=[1,2]", "n=6", "logger=none",
                                                                 "methods=[{name: latenttracer}]"])
    rows = study.run(cfg, "drift").frame
    assert list(rows["steps"]) == [1, 1, 2, 2]
    assert list(rows["direction"]) == ["base", "ft", "base", "ft"]
    assert list(rows["inspected"]) == ["kl-a", "ft-1", "kl-a", "ft-2"]
    assert ((rows["n_belonging"] == 3) & (rows["n_non_belonging"] == 3)).all()
    drift_dir = workspace / "results" / "cache" / "drift"
    members = drift_dir / "members"
    # the AUCs recomputed here, pair by pair, from the images of both sets and the store's scores
    ctx = common.Context(cfg)
    base = ctx.model_spec("kl-a")
    models = {"kl-a": ctx.load_model(base)}
    method = ctx.method(cfg.methods[0], dtype=base.dtype)
    evaluation = {"kl-a": protocol.split(ctx.generated_set(base, ctx.generation_settings(n=6)),
                                         ctx.split_settings())["evaluation"]}
    for n in (1, 2):
        spec = ModelSpec(name=f"ft-{n}", weights=str(members / f"ft-{n}"), pipeline=base.pipeline,
                         resolution=base.resolution, dtype=base.dtype, generation=dict(base.generation))
        images = ctx.generated_set(spec, ctx.generation_settings(n=6, dir=str(drift_dir / "images")))
        evaluation[spec.name] = protocol.split(images, ctx.split_settings())["evaluation"]
        models[spec.name] = ctx.load_model(spec)
    for row in rows.itertuples():
        own, other = evaluation[row.belonging], evaluation[row.non_belonging]
        scored = ctx.score_paths(models[row.inspected], [*map(str, own), *map(str, other)], method,
                           store=ctx.store()).set_index("path")["score"]
        want = pairwise_auc(scored[[str(p) for p in own]].to_numpy(), scored[[str(p) for p in other]].to_numpy())
        assert row.auc == pytest.approx(want, abs=1e-12), (row.steps, row.direction)
    # the decoder moved, the encoder and the prior did not
    base, ft = load_member(micro_zoo / "kl-a"), load_member(members / "ft-2")
    assert 0 < rows.loc[rows["steps"] == 1, "relative_l2"].iloc[0] < rows.loc[rows["steps"] == 2, "relative_l2"].iloc[0]
    for a, b in zip(base.vqvae.encoder.parameters(), ft.vqvae.encoder.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(base.unet.parameters(), ft.unet.parameters()):
        assert torch.equal(a, b)
    card = json.loads((members / "ft-2" / "card.json").read_text())
    assert card["finetune_steps"] == 2 and card["drift_recipe"]["steps"] == 2
    # the 1-step snapshot of the 2-step run is the 1-step run
    alone = zoo_drift.build_series(micro_zoo / "kl-a", [1], tmp_path / "alone", budget=MICRO)
    assert torch.allclose(zoo_drift.decoder_parameters(load_member(alone[1]).vqvae),
                          zoo_drift.decoder_parameters(load_member(members / "ft-1").vqvae))
    # cached: a rerun builds nothing
    stamp = (members / "ft-2" / "card.json").stat().st_mtime_ns
    zoo_drift.build_series(micro_zoo / "kl-a", [1, 2], members, budget=MICRO)
    assert (members / "ft-2" / "card.json").stat().st_mtime_ns == stamp
    assert (workspace / "results" / "debug" / "figures" / "drift.png").is_file()


def test_complexity_on_a_micro_table1(micro_zoo, workspace, tmp_path):  # noqa: F811
    table1.run(job("table1", workspace, micro_zoo, tmp_path / "t1", ["logger=none", "figures=false"]))
    summary = study.run(job("complexity", workspace, micro_zoo, tmp_path / "out", ["logger=none"]),
                        "complexity").frame
    results = workspace / "results" / "debug"
    assert len(summary) == 6 * 2  # per inspected model: belonging and non-belonging
    assert set(summary["error"]) == {"FP", "FN"}
    assert (summary.loc[summary["class"] == "belonging", "n"] == 3).all()
    assert (summary.loc[summary["class"] == "non-belonging", "n"] == 5 * 3 + 4).all()
    errors = pd.read_csv(results / "complexity.csv")
    assert len(errors) == int(summary["n_errors"].sum())
    assert errors["homogeneity"].between(0, 1).all() and (errors["jpeg_bpp"] > 0).all()
    fp = errors[errors["outcome"] == "FP"]
    assert (fp["score"] <= fp["threshold"]).all()
    fn = errors[errors["outcome"] == "FN"]
    assert (fn["score"] > fn["threshold"]).all()
    assert "claim" in (results / "complexity.md").read_text()
    for name in ("kl-a", "vq"):
        assert (results / "figures" / f"complexity_{name}.png").is_file()
