"""The attacks study: its config composes and is checked; its rows, budgets and page follow from the attack results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers.configs import compose_resolved
from omegaconf import OmegaConf

from experiments import schema  # noqa: F401  (registers the config schemas)
from latenttracer import attacks as A
from latenttracer.studies import attacks as S


def test_config_composes_with_every_method_and_taef2(tmp_path):
    cfg, _ = compose_resolved("attacks", [], tmp_path)
    labels = {m.name for m in cfg.methods}
    assert {"latenttracer", "relative", "lowpass", "aedr", "aeroblade"} <= labels
    assert [d.name for d in cfg.decoded] == ["taef2"] and len(cfg.inspected) >= 3
    assert cfg.out == str(tmp_path / "results" / "attacks")


def test_config_typos_fail_at_compose(tmp_path):
    with pytest.raises(Exception, match="rugns"):
        compose_resolved("attacks", ["rugns=3"], tmp_path)


def _result(goal: str) -> A.AttackResult:
    n = 4
    return A.AttackResult("pgd", "l2", "exact", budget_psnr=np.array([50.0, 44.0, np.nan, 30.0]),
                          linf=np.array([1.0, 2.0, np.nan, 8.0]), budget=A.mse_of_psnr([50.0, 44.0, np.nan, 30.0]),
                          scores=np.zeros(n), attacked=np.zeros((n, 2, 2, 3), np.uint8),
                          clean_scores=np.array([0.5, 0.5, 0.5, 2.0]) if goal == "evade" else np.full(n, 2.0),
                          success=np.array([True, True, False, True]))


def test_rows_count_only_images_the_clean_verdict_gets_right():
    cfg = OmegaConf.create({"budgets": [45, 20], "linf_budgets": [1, 8]})
    rows = pd.DataFrame(S.curve_rows(cfg, "m", "kl-a", "clean", 1.0, {("evade", "pgd"): _result("evade"),
                                                                        ("forge", "pgd"): _result("forge")}))
    ev = rows[rows["goal"] == "evade"].set_index("budget_psnr")
    # evasion: image 3 was judged not belonging already (score 2 > t = 1): 3 eligible, 0 and 1 flip by 44 dB
    assert ev.loc[45, "k"] == 1 and ev.loc[20, "k"] == 2 and (ev["n"] == 3).all()
    fo = rows[rows["goal"] == "forge"].set_index("budget_psnr")
    assert fo.loc[20, "k"] == 3 and (fo["n"] == 4).all()
    assert set(S.COLUMNS) <= set(rows.columns)
    assert np.allclose(rows["budget"], A.mse_of_psnr(rows["budget_psnr"]))


def test_budgets_and_page():
    results = {("evade", "noise"): _result("evade")}
    budgets = pd.DataFrame(S.budget_rows("latenttracer", "kl-a", "clean", 1.0, results,
                                         {("evade", "noise"): 47.0}))
    assert budgets["quantile"].tolist() == [0.5, 0.9] and (budgets["analytic_psnr"] == 47.0).all()
    assert budgets.loc[0, "budget_psnr"] == 44.0  # 2 of 3 eligible flip from 44 dB
    text = S.markdown(budgets, pd.DataFrame(), ["a note"])
    assert "| latenttracer | kl-a | evade | noise | l2 |" in text and "47.0" in text
