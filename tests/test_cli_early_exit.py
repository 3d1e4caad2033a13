"""`latenttracer trace --early-exit`: verdicts equal to the full run's where the exact part applies, the bound
learnt from calibration never rejects a calibration image, and bad flag combinations fail before any work."""

import pandas as pd
import pytest
from test_cli import FAST, _run, folders  # noqa: F401  (the fixture)

from latenttracer.cli import CSV_COLUMNS, EXIT_COLUMNS


def _mixed(tmp_path, folders):  # noqa: F811
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("own", "other", "real"):
        for f in sorted(folders[name].iterdir())[:4]:
            (mixed / f"{name}_{f.name}").write_bytes(f.read_bytes())
    return mixed


def test_early_exit_with_threshold_gives_the_full_runs_verdicts(tmp_path, tiny_dirs, folders, capsys):  # noqa: F811
    model, mixed = tiny_dirs["AutoencoderTiny-0"], _mixed(tmp_path, folders)
    full, early = tmp_path / "full.csv", tmp_path / "early.csv"
    assert _run("--model", model, "--images", mixed, "--out", full, "--calibrate", folders["cal"], "--no-cache",
                "--resolution", 32, *FAST) == 0
    reference = pd.read_csv(full)
    # a threshold between the scores, so that some images stop below it and others run to the end
    threshold = float(reference["score"].median())
    capsys.readouterr()
    assert _run("--model", model, "--images", mixed, "--out", full, "--threshold", threshold, "--no-cache",
                "--resolution", 32, *FAST) == 0
    reference = pd.read_csv(full)
    assert _run("--model", model, "--images", mixed, "--out", early, "--threshold", threshold, "--early-exit",
                "--no-cache", "--resolution", 32, *FAST) == 0
    printed = capsys.readouterr()
    assert "early exit: exact part only" in printed.err
    df = pd.read_csv(early, keep_default_na=False)
    assert list(df.columns) == CSV_COLUMNS + EXIT_COLUMNS
    assert (df["belonging"].astype(str) == reference["belonging"].astype(str)).all()
    stopped = df[df["exit_reason"] == "threshold"]
    assert 0 < len(stopped) < len(df)
    assert (stopped["steps_run"].astype(int) < 20).all()
    assert set(df["exit_reason"]) <= {"threshold", ""}  # no bound without calibration
    ran = df[df["exit_reason"] == ""]
    full_ran = reference.set_index("path").loc[ran["path"], "score"].to_numpy()
    assert ran["score"].astype(float).to_numpy() == pytest.approx(full_ran, rel=1e-5)


def test_early_exit_with_calibration_learns_bounds(tmp_path, tiny_dirs, folders, capsys):  # noqa: F811
    model, mixed = tiny_dirs["AutoencoderTiny-0"], _mixed(tmp_path, folders)
    out = tmp_path / "early.csv"
    assert _run("--model", model, "--images", mixed, "--out", out, "--calibrate", folders["cal"], "--early-exit",
                "--cache", tmp_path / "cache", "--resolution", 32, *FAST) == 0
    printed = capsys.readouterr()
    assert "per-step bounds (margin 1) learnt from the full runs of 6 calibration images" in printed.err
    df = pd.read_csv(out, keep_default_na=False)
    own = df[df["path"].str.contains("own_")]
    assert own["belonging"].astype(str).eq("True").all()
    # the calibration images themselves, traced with the same bounds, are never rejected by a bound
    out_cal = tmp_path / "cal.csv"
    assert _run("--model", model, "--images", folders["cal"], "--out", out_cal, "--calibrate", folders["cal"],
                "--early-exit", "--cache", tmp_path / "cache", "--resolution", 32, *FAST) == 0
    cal = pd.read_csv(out_cal, keep_default_na=False)
    belonging = cal["belonging"].astype(str) == "True"
    assert (cal.loc[belonging, "exit_reason"] != "bound").all()


@pytest.mark.parametrize("trend", [0, 2])
def test_negatives_learn_an_accept_bound_that_never_accepts_them(tmp_path, tiny_dirs, folders, capsys,  # noqa: F811
                                                                 trend):
    """``--negatives``: the accept bound learnt from their full runs; traced with the same flags, none of them is
    accepted early unless its full run is belonging too; an accepted image is belonging in the CSV. The same
    with ``--exit-trend 2`` (both bounds learnt on the trend statistic)."""
    model, mixed = tiny_dirs["AutoencoderTiny-0"], _mixed(tmp_path, folders)
    negatives = tmp_path / "negatives"
    negatives.mkdir()
    for name in ("other", "real"):
        for f in sorted(folders[name].iterdir()):
            (negatives / f"{name}_{f.name}").write_bytes(f.read_bytes())
    flags = ["--calibrate", folders["cal"], "--early-exit", "--negatives", negatives, "--accept-margin", 1.2,
             "--cache", tmp_path / "cache", "--resolution", 32, *FAST, *(["--exit-trend", trend] if trend else [])]
    out = tmp_path / "early.csv"
    assert _run("--model", model, "--images", mixed, "--out", out, *flags) == 0
    printed = capsys.readouterr()
    assert ("per-step bounds (margin 1, trend 2)" in printed.err) == bool(trend)
    assert "early accept: per-step accept bound (margin 1.2) learnt from the full runs of 12 --negatives" in printed.err
    assert "below the accept bound" in printed.out
    df = pd.read_csv(out, keep_default_na=False)
    accepted = df[df["exit_reason"] == "accept"]
    assert len(accepted) and accepted["belonging"].astype(str).eq("True").all()
    threshold = float(printed.err.split("threshold ")[1].split(":")[0])
    assert (df.loc[df["exit_reason"] != "accept", "belonging"].astype(str)
            == (df.loc[df["exit_reason"] != "accept", "score"].astype(float) <= threshold).astype(str)).all()
    # the negatives themselves: their full runs (the store's) and their early-exit run with the same bounds
    full, neg = tmp_path / "full.csv", tmp_path / "neg.csv"
    assert _run("--model", model, "--images", negatives, "--out", full, "--calibrate", folders["cal"], "--cache",
                tmp_path / "cache", "--resolution", 32, *FAST) == 0
    assert _run("--model", model, "--images", negatives, "--out", neg, *flags) == 0
    full_verdict = pd.read_csv(full).set_index("path")["belonging"]
    neg = pd.read_csv(neg, keep_default_na=False).set_index("path")
    assert not full_verdict[neg.index[neg["exit_reason"] == "accept"]].eq(False).any()


@pytest.mark.parametrize("extra, words", [
    (["--threshold", "0.01", "--early-exit", "--negatives", "."], "--negatives needs --early-exit and --calibrate"),
    (["--calibrate", ".", "--negatives", "."], "--negatives needs --early-exit and --calibrate"),
    (["--calibrate", ".", "--early-exit", "--accept-margin", "1.2"], "--accept-margin needs --negatives DIR"),
    (["--calibrate", ".", "--early-exit", "--negatives", ".", "--accept-margin", "0.5"],
     "--accept-margin: must be a number >= 1, got 0.5"),
])
def test_bad_negatives_combinations_fail_before_any_work(tmp_path, folders, capsys, extra, words):  # noqa: F811
    code = _run("--model", tmp_path / "no_model", "--images", folders["own"], "--out", tmp_path / "s.csv",
                "--no-cache", *extra)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


@pytest.mark.parametrize("extra, words", [
    ([], "--early-exit needs --calibrate DIR"),
    (["--threshold", "0.01", "--method", "aedr"], "--method aedr does not take --early-exit"),
    (["--threshold", "0.01", "--method", "relative"], "method relative: early exit"),
    (["--threshold", "0.01", "--calibrate-perturb", "jpeg:90"], "--calibrate-perturb needs --calibrate"),
])
def test_bad_early_exit_combinations_fail_before_any_work(tmp_path, folders, capsys, extra, words):  # noqa: F811
    # the model does not exist: any work would fail on it, so the flags' error must come first
    code = _run("--model", tmp_path / "no_model", "--images", folders["own"], "--out", tmp_path / "s.csv",
                "--early-exit", "--no-cache", *extra)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_calibrate_perturb_bad_family_fails_before_any_work(tmp_path, folders, capsys):  # noqa: F811
    code = _run("--model", tmp_path / "no_model", "--images", folders["own"], "--out", tmp_path / "s.csv",
                "--calibrate", folders["cal"], "--calibrate-perturb", "jpeg:95..99", "--no-cache")
    assert code == 2
    assert "no point of AEROBLADE's jpeg grid" in capsys.readouterr().err


def test_hydra_key_early_exit_needs_a_threshold(tmp_path):
    from test_configs import compose_resolved

    from experiments import common

    cfg, _ = compose_resolved("table1", ["inversion.early_exit=true"], tmp_path)
    with pytest.raises(ValueError, match="inversion.early_exit: needs inversion.exit_threshold"):
        common.inversion_config(cfg)
    cfg, _ = compose_resolved("table1", ["inversion.early_exit=true", "inversion.exit_threshold=0.0012"], tmp_path)
    built = common.method(cfg)
    assert built.config.early_exit and built.config.exit_threshold == 0.0012 and built.config.exit_ratios is None
