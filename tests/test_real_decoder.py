"""The real-decoder suite: set construction, fine-tuned siblings, the study's tables, and the entry points end to end
on a random-init taef2 layout at 16 px (a few images, a few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from PIL import Image

from data_gen import real_decoder as sets_mod
from data_gen.real_decoder import DecodedSetSettings, build_sets, plan, read_manifest
from data_gen.taesd_finetune import FinetuneRecipe, build_series, member_name
from latenttracer import protocol
from latenttracer import real_decoder as study
from latenttracer.autoencoders import load_autoencoder
from latenttracer.autoencoders.taesd import save_random_weights
from latenttracer.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SMALL = DecodedSetSettings(resolution=16, n=6, n_real=3, interpolation_fraction=0.5, seed=3)
TINY_RECIPE = FinetuneRecipe(n_crops=16, batch=2, resolution=16)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A random-init taef2 (the shipped layout) with a card at 16 px."""
    return save_random_weights(tmp_path_factory.mktemp("taef2") / "taef2", "taef2", seed=0, resolution=16)


@pytest.fixture(scope="module")
def siblings(base_dir, tmp_path_factory) -> dict[int, Path]:
    return build_series(base_dir, [1, 2], tmp_path_factory.mktemp("members"), TINY_RECIPE, progress=False)


# -- sets -------------------------------------------------------------------------------------------------------
def test_plan_parts_are_disjoint_and_sized():
    crops, belonging, real = plan(SMALL)
    assert crops.shape == (SMALL.pool_size, 16, 16, 3) and crops.dtype == np.uint8
    roles = [b["role"] for b in belonging]
    assert roles.count("reconstruction") == SMALL.n_reconstructions == 3
    assert roles.count("interpolation") == SMALL.n_interpolations == 3
    used = [i for b in belonging for i in b["crops"]]
    real_ids = [r["crops"][0] for r in real]
    assert len(real_ids) == SMALL.n_real and not set(used) & set(real_ids)
    assert len(set(used)) == len(used)  # no crop serves twice
    assert all(SMALL.t_range[0] <= b["t"] <= SMALL.t_range[1] for b in belonging if b["role"] == "interpolation")


def test_sets_manifests_and_invariants(base_dir, siblings, tmp_path):
    base = load_autoencoder(str(base_dir), name="taef2")
    sib = load_autoencoder(str(siblings[2]), name=member_name("taef2", 2))
    paths = build_sets(tmp_path, base, {"taef2": base, sib.name: sib}, SMALL)
    assert list(paths) == ["taef2", "taef2-ft2", "real"]
    manifests = {name: read_manifest(tmp_path / name) for name in paths}
    for name, rows in manifests.items():
        assert [r["file"] for r in rows] == [f"{name}/{p.name}" for p in paths[name]]
        assert set(rows[0]) == set(sets_mod.MANIFEST_COLUMNS)
        for p in paths[name]:
            with Image.open(p) as img:
                assert img.mode == "RGB" and img.size == (16, 16)
    # The real crops are never a crop (pool index, or photo and box) behind a belonging image.
    belonging = manifests["taef2"]
    used = {r["crop_a"] for r in belonging} | {r["crop_b"] for r in belonging if r["crop_b"]}
    boxes = {(r["photo_a"], r["box_a"]) for r in belonging} | {(r["photo_b"], r["box_b"]) for r in belonging
                                                               if r["photo_b"]}
    assert manifests["real"] and all(r["crop_a"] not in used for r in manifests["real"])
    assert all((r["photo_a"], r["box_a"]) not in boxes for r in manifests["real"])
    # Both decoders decode the same latents: image i of each set comes from the same crops and t.
    pick = ["role", "t", "crop_a", "crop_b"]
    assert [[r[k] for k in pick] for r in belonging] == [[r[k] for k in pick] for r in manifests["taef2-ft2"]]
    assert {r["fingerprint"] for r in belonging} == {base.fingerprint}
    assert {r["fingerprint"] for r in manifests["taef2-ft2"]} == {sib.fingerprint}
    # A reconstruction is the 8-bit decode of the encoded crop.
    crops, _, _ = plan(SMALL)
    first = belonging[0]
    assert first["role"] == "reconstruction"
    x = torch.from_numpy(crops[int(first["crop_a"])]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = (base.decode(base.encode(x)).clamp(0, 1) * 255).round().byte()[0].permute(1, 2, 0).numpy()
    assert np.abs(np.asarray(Image.open(paths["taef2"][0])).astype(int) - expected.astype(int)).max() <= 1
    # The two decoders' images differ (the sibling moved), and a rebuild with the same settings writes nothing.
    assert any(np.asarray(Image.open(a)).tobytes() != np.asarray(Image.open(b)).tobytes()
               for a, b in zip(paths["taef2"], paths["taef2-ft2"]))
    stamps = {p: p.stat().st_mtime_ns for ps in paths.values() for p in ps}
    assert build_sets(tmp_path, base, {"taef2": base, sib.name: sib}, SMALL) == paths
    assert stamps == {p: p.stat().st_mtime_ns for ps in paths.values() for p in ps}


def test_bad_settings_are_errors_naming_the_key():
    with pytest.raises(ValueError, match="sets: unknown key"):
        DecodedSetSettings.from_dict({"nn": 3})
    with pytest.raises(ValueError, match="sets.resolution"):
        DecodedSetSettings(resolution=20)
    with pytest.raises(ValueError, match="finetune: unknown key"):
        FinetuneRecipe.from_dict({"steps": 3})


# -- fine-tuned siblings ----------------------------------------------------------------------------------------
def test_siblings_are_loadable_prefixes_of_one_run(base_dir, siblings, tmp_path):
    cards = {n: json.loads((d / "card.json").read_text()) for n, d in siblings.items()}
    assert 0 < cards[1]["relative_l2"] < cards[2]["relative_l2"]
    base = load_autoencoder(str(base_dir))
    sib = load_autoencoder(str(siblings[2]))
    assert sib.fingerprint != base.fingerprint
    for (k, w0), w in zip(base.model.encoder.state_dict().items(), sib.model.encoder.state_dict().values()):
        assert torch.equal(w0, w), k  # the encoder is frozen
    alone = build_series(base_dir, [2], tmp_path / "alone", TINY_RECIPE, progress=False)[2]
    a = torch.load(alone / "taef2_decoder.pth", weights_only=True)
    b = torch.load(siblings[2] / "taef2_decoder.pth", weights_only=True)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    stamp = (siblings[2] / "card.json").stat().st_mtime_ns
    build_series(base_dir, [1, 2], siblings[2].parent, TINY_RECIPE, progress=False)
    assert (siblings[2] / "card.json").stat().st_mtime_ns == stamp  # cached: not rebuilt


# -- the study's tables -----------------------------------------------------------------------------------------
def _frame(inspected: str, rows: list[tuple[str, str, float, list[float]]]) -> pd.DataFrame:
    return pd.DataFrame([{"inspected": inspected, "source": s, "split": sp, "path": f"{s}{i}", "score": v,
                          "init_loss": t[0], "status": "ok", "seconds": 2.0, "trajectory": t, "best_step": 0,
                          "reason": ""} for i, (s, sp, v, t) in enumerate(rows)])


def test_cells_ratio_steps_and_two_class_rows():
    own = [("m", "calibration", 1.0, [5.0, 1.0, 1.0]), ("m", "evaluation", 2.0, [6.0, 3.0, 2.0]),
           ("m", "evaluation", 3.0, [7.0, 4.0, 3.0])]
    other = [("real", "evaluation", 30.0, [4.0, 31.0, 30.0]), ("real", "evaluation", 20.0, [5.5, 25.0, 20.0])]
    scores = _frame("m", own + other)
    cells = study.method_cells(scores, ["m", "real"], ["m"], "lt", seconds_scale=0.5)
    real = cells[cells["source"] == "real"].iloc[0]
    assert real["auc"] == 1.0 and real["median_belonging"] == 2.5 and real["median_non_belonging"] == 25.0
    assert real["ratio"] == 10.0 and real["seconds_per_image"] == 1.0
    assert set(study.COLUMNS[:8]) <= set(cells.columns)
    steps = study.steps_cells(scores, ["m", "real"], ["m"], [1, 3])
    first = steps[(steps["steps"] == 1) & (steps["source"] == "real")].iloc[0]
    assert first["median_belonging"] == 6.5 and first["auc"] == 0.0  # step 0 alone: 6, 7 score above 4, 5.5
    row = study.two_class_row(scores[scores["source"] == "m"], scores[scores["source"] == "real"])
    assert row["auc"] == 1.0 and row["ratio"] == 25.0 / 2.0 and row["n_belonging"] == 3


def test_subset_sets_keeps_prefixes():
    sets = {"a": {"calibration": [1, 2, 3], "evaluation": [4, 5, 6]}, "real": {"evaluation": [7, 8, 9]}}
    assert study.subset_sets(sets, 1, 2) == {"a": {"calibration": [1], "evaluation": [4]},
                                             "real": {"evaluation": [7, 8]}}
    assert study.subset_sets(sets, None, None) == sets


# -- end to end -------------------------------------------------------------------------------------------------
def _job(name: str, root: Path, base_dir: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=[f"paths.root_dir={root}", f"paths.output_dir={root / 'out'}",
                                       "logger=none", "progress=false", "threads=1",
                                       f"suite.models.taef2.weights={base_dir}", "suite.models.taef2.resolution=16",
                                       "+finetune.n_crops=16", "+finetune.batch=2", "+finetune.resolution=16",
                                       *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.mark.slow  # every method, a fine-tune, two resolutions and a rerun: ~1 min on an idle core
def test_real_decoder_study_end_to_end(base_dir, tmp_path, monkeypatch):
    from experiments import study
    from latenttracer.studies import real_decoder

    monkeypatch.setattr(real_decoder, "machine_speed", lambda threads: "(not measured in tests)")
    cfg = _job("real_decoder", tmp_path, base_dir, [
        "sibling_steps=1", "suite.generated.n=4", "suite.real.n=2", "inversion.steps=2", "steps=[1,2,4]",
        "+methods.1.options.steps=3", "methods.0.inspected=null",  # both decoders inspect (default: taef2 alone)
        "resolutions=[{size:24,n:2,n_real:2,methods:[latenttracer,aedr]}]"])
    cells = study.run(cfg, "real_decoder").frame
    labels = ["latenttracer", "ronan", "aedr", "aeroblade[l2]", "aeroblade[ssim]"]
    assert list(dict.fromkeys(cells["method"])) == labels
    published = pd.read_csv(tmp_path / "results" / "real_decoder.csv")
    for col in ("method", "inspected", "source", "auc", "median_belonging", "median_non_belonging",
                "seconds_per_image", "ratio"):
        assert col in published.columns and published[col].notna().all(), col
    assert not published.duplicated(["method", "inspected", "source"]).any()
    both = published[published["method"] == "latenttracer"]
    assert set(both["inspected"]) == {"taef2", "taef2-ft1"}
    assert set(both[both["inspected"] == "taef2"]["source"]) == {"taef2-ft1", "real", "all"}
    assert set(published[published["method"] == "ronan"]["inspected"]) == {"taef2"}
    steps = pd.read_csv(tmp_path / "results" / "real_decoder_steps.csv")
    assert sorted(set(steps["steps"])) == [1, 2, 4] and set(steps["inspected"]) == {"taef2"}
    at2 = steps[(steps["steps"] == 2)].set_index("source")["auc"]
    assert np.allclose(at2.values, both[both["inspected"] == "taef2"].set_index("source").loc[at2.index, "auc"])
    res = pd.read_csv(tmp_path / "results" / "real_decoder_resolution.csv")
    assert {16, 24} == set(res["resolution"]) and set(res[res["resolution"] == 24]["method"]) == {"latenttracer",
                                                                                                     "aedr"}
    text = (tmp_path / "results" / "real_decoder.md").read_text()
    for heading in ("## Separation", "## LatentTracer against its number of steps", "## Against resolution"):
        assert heading in text
    assert (tmp_path / "results" / "figures" / "real_decoder.png").is_file()
    # A rerun computes nothing: every score comes from the results store.
    store = ResultStore(cfg.store)
    chunks = sorted(store.root.glob("part-*.parquet"))
    again = study.run(cfg, "real_decoder").frame
    assert sorted(store.root.glob("part-*.parquet")) == chunks
    cols = ["method", "inspected", "source", "auc", "median_belonging"]
    pd.testing.assert_frame_equal(again[cols], cells[cols])


def test_early_exit_on_the_real_decoder_suite(base_dir, tmp_path, monkeypatch):
    """The early-exit rows for the base inspecting its own decodes against its sibling's and real crops; a rerun
    of another schedule adds its rows beside them and computes none of the first schedule's scores again."""
    from experiments import study
    from latenttracer.studies import early_exit

    monkeypatch.setattr(early_exit.zoo, "machine_speed", lambda threads=1: "7 (not measured in tests)")
    common = ["sibling_steps=1", "suite.generated.n=4", "suite.real.n=2", "timing_images=3"]
    rows = study.run(_job("real_decoder_early_exit", tmp_path, base_dir, [*common, "inversion.steps=4"]),
                     "real_decoder_early_exit").frame
    assert list(rows["mode"]) == ["full", "exact", "conformal", "conformal", "conformal", "conformal"]
    assert set(rows["inspected"]) == {"taef2"} and list(rows["alpha"].dropna()) == [0.02, 0.03, 0.05, 0.1]
    assert set(rows["sets"]) == {"taef2"}  # its rows sit beside the zoo's in results/early_exit.csv
    assert (rows["n_evaluation"] == 2 + 2 + 2).all() and (rows["n_calibration"] == 2).all()
    full = rows.set_index("mode").loc["full"]
    # image-steps are counted against the authors' 100
    assert full["agreement_schedule"] == 1.0 and full["image_steps_fraction"] == pytest.approx(4 / 100)
    # 2 calibration images end belonging: too few for these risks (1/3 at least), only the exact exit runs
    assert (rows["n_scores"].dropna() == 2).all() and np.isinf(rows["q"].dropna()).all()
    assert (rows["calibration_rejected_early"] == 0).all() and (rows["live_mismatches"] == 0).all()
    # lr_scale=latent_rms is resolved on the study's own calibration decodes (the suite has no generated set)
    other = study.run(_job("real_decoder_early_exit", tmp_path, base_dir, [*common, "inversion.steps=2",
                                                                          "inversion.lr_scale=latent_rms"]),
                      "real_decoder_early_exit").frame
    assert set(other["steps"]) == {2} and other["lr"].nunique() == 1 and other["lr"].iloc[0] != 0.05
    published = pd.read_csv(tmp_path / "results" / "early_exit.csv")
    assert sorted(set(published["steps"])) == [2, 4] and len(published) == 12
    page = (tmp_path / "results" / "early_exit.md").read_text()
    assert "- `taef2`: `python -m experiments.real_decoder_early_exit`, " in page


def test_drift_on_a_taesd_base(base_dir, tmp_path):
    from experiments import study

    cfg = _job("drift", tmp_path, base_dir, ["experiment=drift_taef2", "steps=[1,2]", "n=4", "inversion.steps=2"])
    rows = study.run(cfg, "drift").frame
    assert set(rows["steps"]) == {1, 2} and set(rows["direction"]) == {"base", "ft"}
    assert set(rows["method"]) == {"latenttracer", "aedr"} and rows["auc"].between(0, 1).all()
    assert (rows["relative_l2"] > 0).all() and rows.groupby("steps")["relative_l2"].first().is_monotonic_increasing
    assert set(rows.loc[rows["direction"] == "base", "non_belonging"]) == {"taef2-ft1", "taef2-ft2"}
    assert (tmp_path / "results" / "drift_taef2.md").is_file()
    assert protocol.REAL not in set(rows["inspected"])


# -- the HTML report ------------------------------------------------------------------------------------------------
def test_html_report_shows_the_suite_when_its_results_exist(tmp_path):
    from latenttracer import html_report, tables

    results = tmp_path / "results"
    (results / "figures").mkdir(parents=True)
    html = html_report.build_run_report(results, tmp_path / "empty").read_text()
    section = html.split('id="real_decoder"')[1].split("<section")[0]
    assert "make real-decoder" in section and "real_decoder.csv" in section  # missing: says the command
    pd.DataFrame({"resolution": [64], "method": ["aedr"], "inspected": ["taef2"], "source": ["real"],
                  "auc": [0.625], "median_belonging": [1e-5], "median_non_belonging": [2e-4], "ratio": [20.0],
                  "seconds_per_image": [0.5]}).to_csv(results / "real_decoder.csv", index=False)
    tables.save_figure(tables.score_histogram([1e-4, 2e-4, 1e-3], 3e-4), results / "figures" / "real_decoder",
                       ("png",))
    html = html_report.build_run_report(results, tmp_path / "report").read_text()
    section = html.split('id="real_decoder"')[1].split("<section")[0]
    assert "0.625" in section and "taef2" in section and "make real-decoder" not in section
    assert "figures/real_decoder.png" in section and (tmp_path / "report/figures/real_decoder.png").is_file()
