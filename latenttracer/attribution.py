"""Attribution across K inspected models: which one made this image, or none of them?

Plain functions over score frames (one row per image, one score column per inspected model; lower score =
more likely belonging, for every method):

1. :func:`normalise_scores`: put each model's scores on a common scale using that model's own calibration
   (belonging) scores and threshold:

   * ``"ratio"`` (default): ``score / threshold``; the model's threshold is passed iff the ratio is <= 1, and
     a smaller ratio is a stronger claim. Scale-free, so models (and methods) with different loss scales
     compare; assumes positive scores and thresholds (true of every method here).
   * ``"pvalue"``: the empirical p-value of the score among the calibration scores,
     ``(1 + #{calibration >= score}) / (n + 1)``; a larger p-value is a stronger claim (the image looks more
     like the model's own). Images scoring below every calibration score tie at 1; ties go to the smaller
     ratio ``score / threshold``.

2. :func:`assign`: the image goes to the model with the strongest claim among those whose threshold it passes
   (``score <= threshold``), and to ``none`` when no model claims it.

3. :func:`confusion_matrix` and :func:`attribution_accuracy`: rows are true sources (the K models, then any
   other source such as ``real``), columns the predictions (the K models, then ``none``). An image is
   correctly attributed when the prediction is its source, or ``none`` for a source outside the K models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["NONE", "NORMALISATIONS", "assign", "attribute", "attribution_accuracy", "confusion_matrix",
           "normalise_scores"]

NONE = "none"
NORMALISATIONS = ("ratio", "pvalue")


def _check_normalisation(normalisation: str) -> None:
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation {normalisation!r} is not one of {list(NORMALISATIONS)}")


def normalise_scores(scores, calibration, threshold: float, normalisation: str = "ratio") -> np.ndarray:
    """One model's scores normalised by its calibration scores and threshold (see the module docstring)."""
    _check_normalisation(normalisation)
    s = np.asarray(scores, dtype=np.float64)
    if normalisation == "ratio":
        if not threshold > 0:
            raise ValueError(f"ratio normalisation needs a positive threshold, got {threshold!r}")
        return s / float(threshold)
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    if cal.size == 0:
        raise ValueError("p-value normalisation needs calibration scores")
    at_least = cal.size - np.searchsorted(cal, s, side="left")  # #{cal >= s}
    out = (1.0 + at_least) / (cal.size + 1.0)
    return np.where(np.isnan(s), np.nan, out)


def assign(scores: pd.DataFrame, normalised: pd.DataFrame, thresholds: Mapping[str, float],
           normalisation: str = "ratio") -> pd.Series:
    """The predicted source of each row: a model name (a column of ``scores``) or :data:`NONE`.

    ``scores`` and ``normalised`` have one column per model (same names, same index). A NaN score (a failed
    image) never claims.
    """
    _check_normalisation(normalisation)
    models = list(scores.columns)
    if list(normalised.columns) != models:
        raise ValueError(f"normalised columns {list(normalised.columns)} differ from score columns {models}")
    missing = [m for m in models if m not in thresholds]
    if missing:
        raise ValueError(f"no threshold for model(s) {missing}")
    s = scores.to_numpy(dtype=np.float64)
    t = np.array([float(thresholds[m]) for m in models])
    passes = s <= t  # NaN compares False
    n = normalised.to_numpy(dtype=np.float64)
    strength = -n if normalisation == "ratio" else n
    ratio = s / np.where(t > 0, t, np.nan)
    # Primary key: strength (higher wins); ties: smaller score / threshold.
    key = np.where(passes, strength, -np.inf)
    best = np.full(len(scores), -1)
    for i in range(len(scores)):
        if not passes[i].any():
            continue
        top = np.flatnonzero(key[i] == key[i].max())
        best[i] = top[np.argmin(np.nan_to_num(ratio[i, top], nan=np.inf))] if top.size > 1 else top[0]
    return pd.Series([models[j] if j >= 0 else NONE for j in best], index=scores.index, name="predicted")


def attribute(scores: pd.DataFrame, calibration: Mapping[str, Sequence[float]], thresholds: Mapping[str, float],
              normalisation: str = "ratio") -> pd.DataFrame:
    """``predicted`` plus, per model ``m``, ``score_m`` and ``norm_m``, for each row of ``scores``."""
    models = list(scores.columns)
    normalised = pd.DataFrame({m: normalise_scores(scores[m], calibration[m], thresholds[m], normalisation)
                               for m in models}, index=scores.index)
    out = pd.DataFrame({"predicted": assign(scores, normalised, thresholds, normalisation)}, index=scores.index)
    for m in models:
        out[f"score_{m}"] = scores[m]
        out[f"norm_{m}"] = normalised[m]
    return out


def _expected(true: pd.Series, models: Sequence[str]) -> pd.Series:
    return true.where(true.isin(list(models)), NONE)


def confusion_matrix(true: Sequence[str], predicted: Sequence[str], models: Sequence[str],
                     sources: Sequence[str] | None = None) -> pd.DataFrame:
    """Counts: rows = true source (``models`` then the other ``sources``, e.g. ``real``), columns = prediction
    (``models`` then ``none``). ``sources`` defaults to the non-model sources in order of appearance."""
    true = pd.Series(list(true), dtype=object)
    predicted = pd.Series(list(predicted), dtype=object)
    if len(true) != len(predicted):
        raise ValueError(f"{len(true)} true sources but {len(predicted)} predictions")
    models = list(models)
    columns = [*models, NONE]
    unknown = sorted(set(predicted) - set(columns))
    if unknown:
        raise ValueError(f"predictions {unknown} are neither a model {models} nor {NONE!r}")
    extra = list(sources) if sources is not None else [s for s in dict.fromkeys(true) if s not in models]
    rows = [*models, *[s for s in extra if s not in models]]
    missing = sorted(set(true) - set(rows))
    if missing:
        raise ValueError(f"true sources {missing} are not among the rows {rows}")
    table = pd.crosstab(pd.Categorical(true, categories=rows), pd.Categorical(predicted, categories=columns),
                        dropna=False)
    table.index.name, table.columns.name = "source", "predicted"
    return table.reindex(index=rows, columns=columns, fill_value=0).astype(int)


def attribution_accuracy(true: Sequence[str], predicted: Sequence[str], models: Sequence[str]) -> dict:
    """``{"overall": accuracy, "per_source": {source: accuracy}, "n": {source: count}}``; a source outside the
    K ``models`` (e.g. ``real``) is correct when predicted ``none``."""
    true = pd.Series(list(true), dtype=object)
    predicted = pd.Series(list(predicted), dtype=object)
    if len(true) != len(predicted):
        raise ValueError(f"{len(true)} true sources but {len(predicted)} predictions")
    if len(true) == 0:
        raise ValueError("no images to compute attribution accuracy on")
    correct = (_expected(true, models) == predicted).to_numpy()
    per_source, counts = {}, {}
    for source in dict.fromkeys(true):
        mask = (true == source).to_numpy()
        per_source[source] = float(correct[mask].mean())
        counts[source] = int(mask.sum())
    return {"overall": float(correct.mean()), "per_source": per_source, "n": counts}
