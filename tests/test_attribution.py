"""Attribution across K models: normalisation, assignment, confusion matrix and accuracy; on tiny models too."""

import numpy as np
import pandas as pd
import pytest
from conftest import decoded_images, natural_crops, save_png

from latenttracer.attribution import (
    NONE,
    assign,
    attribute,
    attribution_accuracy,
    confusion_matrix,
    normalise_scores,
)
from latenttracer.autoencoders import load_autoencoder
from latenttracer.inversion import InversionConfig
from latenttracer.methods import LatentTracer
from latenttracer.tracing import score_images


def test_normalise_ratio_and_pvalue():
    cal = [1.0, 2.0, 3.0, 4.0]
    assert normalise_scores([2.0, 8.0], cal, 4.0, "ratio").tolist() == [0.5, 2.0]
    # p = (1 + #{cal >= s}) / (n + 1)
    assert normalise_scores([0.5, 2.0, 2.5, 9.0], cal, 4.0, "pvalue").tolist() == \
        pytest.approx([5 / 5, 4 / 5, 3 / 5, 1 / 5])
    assert np.isnan(normalise_scores([np.nan], cal, 4.0, "pvalue")[0])
    with pytest.raises(ValueError, match="positive threshold"):
        normalise_scores([1.0], cal, 0.0, "ratio")
    with pytest.raises(ValueError, match="not one of"):
        normalise_scores([1.0], cal, 1.0, "zscore")


def test_assign_strongest_claim_among_passing_models():
    scores = pd.DataFrame({"a": [1.0, 1.0, 9.0, 5.0, np.nan], "b": [3.0, 0.1, 9.0, 1.9, 1.0]},
                          index=["p0", "p1", "p2", "p3", "p4"])
    thresholds = {"a": 2.0, "b": 2.0}
    norm = scores / 2.0
    predicted = assign(scores, norm, thresholds, "ratio")
    # p0: only a passes; p1: both pass, b claims more strongly; p2: none; p3: a fails its threshold; p4: NaN a.
    assert predicted.tolist() == ["a", "b", NONE, "b", "b"]
    # Each score is judged against its own model's threshold: with b's at 0.15, a wins p1 (ratio 0.5 vs 0.67).
    tight = {"a": 2.0, "b": 0.15}
    assert assign(scores, scores / pd.Series(tight), tight)["p1"] == "a"
    with pytest.raises(ValueError, match="no threshold"):
        assign(scores, norm, {"a": 1.0})


def test_pvalue_ties_break_by_ratio():
    scores = pd.DataFrame({"a": [0.01], "b": [0.02]})
    cal = {"a": [1.0, 2.0], "b": [1.0, 2.0]}
    out = attribute(scores, cal, {"a": 2.0, "b": 2.0}, "pvalue")
    assert out["norm_a"].iloc[0] == out["norm_b"].iloc[0] == 1.0
    assert out["predicted"].iloc[0] == "a"
    assert list(out.columns) == ["predicted", "score_a", "norm_a", "score_b", "norm_b"]


def test_confusion_matrix_and_accuracy():
    true = ["a", "a", "b", "b", "real", "real", "other"]
    pred = ["a", "b", "b", NONE, NONE, "a", NONE]
    cm = confusion_matrix(true, pred, ["a", "b"])
    assert list(cm.index) == ["a", "b", "real", "other"] and list(cm.columns) == ["a", "b", NONE]
    assert cm.loc["a"].tolist() == [1, 1, 0] and cm.loc["b"].tolist() == [0, 1, 1]
    assert cm.loc["real"].tolist() == [1, 0, 1] and cm.loc["other"].tolist() == [0, 0, 1]
    assert int(cm.to_numpy().sum()) == len(true)
    acc = attribution_accuracy(true, pred, ["a", "b"])
    assert acc["overall"] == pytest.approx(4 / 7)
    assert acc["per_source"] == {"a": 0.5, "b": 0.5, "real": 0.5, "other": 1.0}
    assert acc["n"] == {"a": 2, "b": 2, "real": 2, "other": 1}
    with pytest.raises(ValueError, match="neither a model"):
        confusion_matrix(["a"], ["c"], ["a", "b"])
    with pytest.raises(ValueError, match="2 true sources but 1"):
        attribution_accuracy(["a", "b"], ["a"], ["a", "b"])
    # An explicit row order; a source missing from it is an error.
    assert list(confusion_matrix(true[:4], pred[:4], ["a", "b"], sources=["real"]).index) == ["a", "b", "real"]
    with pytest.raises(ValueError, match="not among the rows"):
        confusion_matrix(true, pred, ["a", "b"], sources=["real"])


def test_separable_tiny_models_give_the_right_confusion(tiny_dirs, tmp_path):
    # LatentTracer separates random-init siblings in both directions (AEDR does not: on random-init tiny models
    # its second reconstruction is nearly a fixed point, and the ratio says little).
    method = LatentTracer(InversionConfig(steps=20))
    models = {name: load_autoencoder(tiny_dirs[f"AutoencoderTiny-{k}"], resolution=32, name=name)
              for k, name in enumerate(["m0", "m1"])}
    files = {}
    for name, ae in models.items():
        for split, seed in (("cal", 1), ("eval", 2)):
            d = tmp_path / f"{name}-{split}"
            d.mkdir()
            files[(name, split)] = [save_png(x, d / f"{i}.png") for i, x in enumerate(decoded_images(ae, 8, seed))]
    (tmp_path / "real").mkdir()
    real = [save_png(x, tmp_path / "real" / f"{i}.png") for i, x in enumerate(natural_crops(6, seed=4))]
    images = files[("m0", "eval")] + files[("m1", "eval")] + real
    truth = ["m0"] * 8 + ["m1"] * 8 + ["real"] * 6
    scores, cal, thresholds = {}, {}, {}
    for name, ae in models.items():
        cal[name] = score_images(ae, files[(name, "cal")], method=method, progress=False)[0]["score"].to_numpy()
        thresholds[name] = method.calibrate(cal[name])
        frame, _ = score_images(ae, images, method=method, progress=False)
        scores[name] = frame["score"].to_numpy()
    out = attribute(pd.DataFrame(scores, index=[str(p) for p in images]), cal, thresholds)
    cm = confusion_matrix(truth, out["predicted"], ["m0", "m1"])
    assert np.trace(cm.loc[["m0", "m1"], ["m0", "m1"]].to_numpy()) >= 15  # 95% thresholds may drop one
    assert cm.loc["m0", "m1"] == cm.loc["m1", "m0"] == 0  # never the wrong model
    assert cm.loc["real", NONE] == 6
    assert attribution_accuracy(truth, out["predicted"], ["m0", "m1"])["overall"] >= 21 / 22
