"""The real-models study's pieces: the per-cell table with intervals, attribution intervals, the Lipschitz probe."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from latenttracer.autoencoders import load_autoencoder
from latenttracer.autoencoders.disvae import save_random_weights
from latenttracer.intervals import auc_delong, wilson
from latenttracer.studies.real_models import COLUMNS, attribution_rows, cell_rows, lipschitz


def _scores() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for inspected in ("a", "b"):
        for source, shift in (("a", 0.0), ("b", 1.0), ("real", 3.0)):
            own = source == inspected
            for split in ("calibration", "evaluation"):
                for k in range(6):
                    score = rng.normal(0.0 if own else shift + 0.5, 0.5)
                    rows.append({"inspected": inspected, "source": source, "split": split,
                                 "path": f"{source}/{split}{k}.png", "score": score, "status": "ok"})
    frame = pd.DataFrame(rows)
    frame.loc[(frame["inspected"] == "a") & (frame["source"] == "real") & (frame["split"] == "evaluation")
              & (frame["path"] == "real/evaluation0.png"), ["score", "status"]] = [math.nan, "failed"]
    return frame


def test_cell_rows_match_the_interval_module_and_count_failures():
    scores = _scores()
    rows = pd.DataFrame(cell_rows("m", scores, ["a", "b"], {("m", "a"): 0.5}, n_boot=200, seed=0))
    assert set(COLUMNS) <= set(rows.columns)
    assert set(rows["source"]) == {"a", "b", "real", "all"} and len(rows) == 6
    ev = scores[scores["split"] == "evaluation"]
    own = ev[(ev["inspected"] == "a") & (ev["source"] == "a")]["score"].to_numpy()
    other = ev[(ev["inspected"] == "a") & (ev["source"] == "b")]["score"].to_numpy()
    r = rows[(rows["inspected"] == "a") & (rows["source"] == "b")].iloc[0]
    assert (r["auc"], r["auc_lo"], r["auc_hi"]) == pytest.approx(auc_delong(own, other))
    assert r["n_belonging"] == 6 and r["n_non_belonging"] == 6 and r["n_failed"] == 0
    assert r["median_belonging"] == pytest.approx(np.median(own)) and r["seconds_per_image"] == 0.5
    assert r["ap_lo"] <= r["ap"] <= r["ap_hi"] and r["tpr_at_5fpr_lo"] <= r["tpr_at_5fpr_hi"]
    real = rows[(rows["inspected"] == "a") & (rows["source"] == "real")].iloc[0]
    assert real["n_non_belonging"] == 5 and real["n_failed"] == 1  # the failed image is left out, and counted
    pooled = rows[(rows["inspected"] == "a") & (rows["source"] == "all")].iloc[0]
    assert pooled["n_non_belonging"] == 11 and pooled["n_failed"] == 1
    assert math.isnan(rows[rows["inspected"] == "b"]["seconds_per_image"].iloc[0])


def test_attribution_rows_add_wilson_intervals(tmp_path):
    path = tmp_path / "attribution.csv"
    pd.DataFrame([{"method": "m", "source": "all", "n": 40, "accuracy": 0.75, "pred_a": 1},
                  {"method": "m", "source": "a", "n": 20, "accuracy": 1.0, "pred_a": 20}]).to_csv(path, index=False)
    acc = attribution_rows(path)
    assert (acc.loc[0, "accuracy_lo"], acc.loc[0, "accuracy_hi"]) == pytest.approx(wilson(30, 40))
    assert acc.loc[1, "accuracy_hi"] == 1.0 and acc.loc[1, "accuracy_lo"] == pytest.approx(wilson(20, 20)[0])
    with pytest.raises(FileNotFoundError, match="no attribution results"):
        attribution_rows(tmp_path / "missing.csv")


def test_lipschitz_probe_scales_with_the_decoder(tmp_path):
    ae = load_autoencoder(save_random_weights(tmp_path / "m", 0, side=32))
    base = lipschitz(ae, 4, 3, seed=0)
    assert base.shape == (4,) and (base > 0).all() and ae.clamp
    np.testing.assert_allclose(lipschitz(ae, 4, 3, seed=0), base)  # seeded
    with torch.no_grad():
        ae.model.decoder.lin1.weight.mul_(0.0)
    flat = lipschitz(ae, 4, 3, seed=0)
    assert flat.max() < 1e-6  # a decoder that ignores z has a zero Jacobian
