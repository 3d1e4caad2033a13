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


def test_config_names_celeba_vaes_through_their_suite(tmp_path):
    cfg, _ = compose_resolved("attacks", [], tmp_path)
    assert "celeba" in cfg.suites
    further = {str(m) for suite in cfg.suites.values() for m in suite.models}
    picked = [m for m in cfg.inspected if m in further]
    assert len(picked) >= 2 and not set(picked) & set(cfg.suite.models)
    per_model = {m: {e.name for e in cfg.methods if e.inspected is None or m in e.inspected} for m in picked}
    assert all(len(names) >= 3 and "latenttracer" in names for names in per_model.values())


class _Ctx:
    def __init__(self, cfg):
        self.cfg = cfg


def _suites_cfg(inspected, extra_models=("vae",)):
    return OmegaConf.create({"suite": {"name": "zoo", "models": {"kl-a": {}, "vq": {}}},
                             "suites": {"celeba": {"name": "celeba", "models": {m: {} for m in extra_models}}},
                             "inspected": inspected})


def test_suite_contexts_gives_each_model_its_own_suite(tmp_path):
    composed, _ = compose_resolved("attacks", [], tmp_path)
    owners = S.suite_contexts(composed, _Ctx(composed))
    for name, suite_ctx in owners.items():
        assert name in suite_ctx.cfg.suite.models  # the typed job config, with the model's suite in place
    assert {c.cfg.suite.name for c in owners.values()} == {composed.suite.name, *composed.suites}
    ctx = _Ctx(_suites_cfg(["kl-a", "vae"]))
    owners = S.suite_contexts(ctx.cfg, ctx)
    assert owners["kl-a"] is ctx and owners["vae"] is not ctx
    assert owners["vae"].cfg.suite.name == "celeba" and list(owners["vae"].cfg.suite.models) == ["vae"]
    with pytest.raises(KeyError, match="nope"):
        S.suite_contexts(_suites_cfg(["kl-a", "nope"]), ctx)
    with pytest.raises(ValueError, match="suites.celeba: model 'vq'"):
        S.suite_contexts(_suites_cfg(["kl-a"], ("vae", "vq")), ctx)


def test_analytic_check_says_within_outside_or_not_resolved():
    row = {"analytic_psnr": 50.0, "budget_psnr_large": 48.0, "budget_psnr_small": 52.0, "n": 6}
    assert S.analytic_check(pd.Series(row)) == "within the interval"
    assert S.analytic_check(pd.Series({**row, "analytic_psnr": 55.0})) == "outside the interval"
    assert S.analytic_check(pd.Series({**row, "budget_psnr_large": np.nan})) == "not resolved at n = 6"
    frame = pd.DataFrame([{**row, "method": "latenttracer", "inspected": "taef2", "goal": "evade", "attack": "noise",
                           "calibration": "clean", "quantile": 0.5, "budget_psnr": 50.5}])
    assert "taef2: measured 50.5" in S.analytic_note(frame) and "within the interval" in S.analytic_note(frame)
    assert "no LatentTracer noise evasion" in S.analytic_note(frame.assign(attack="pgd"))
