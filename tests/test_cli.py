"""`latenttracer trace` end to end, and resume after a hard kill, on tiny random-init autoencoders; method flags
built from the registered methods' settings; output paths checked before any work."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import decoded_images, natural_crops, save_png
from helpers import cli as shared_cli
from helpers import method_contracts as contracts

from latenttracer.autoencoders import load_autoencoder
from latenttracer.cli import main
from latenttracer.early_exit import DEFAULT_RISK, min_risk
from latenttracer.methods import METHODS
from latenttracer.methods.flags import method_flags
from latenttracer.tracing import CSV_COLUMNS

# Shared with the other CLI tests (tests/helpers/cli.py): the fast flags, a trace in-process, the `folders` fixture.
FAST, _run, folders = shared_cli.FAST, shared_cli.run_trace, shared_cli.folders


def test_trace_calibrate_end_to_end(tmp_path, tiny_dirs, folders, capsys):
    model = tiny_dirs["AutoencoderTiny-0"]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("own", "other", "real"):
        for f in sorted(folders[name].iterdir())[:3]:
            (mixed / f"{name}_{f.name}").write_bytes(f.read_bytes())
    (mixed / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "scores.csv"
    cache = tmp_path / "cache"
    code = _run("--model", model, "--images", mixed, "--out", out, "--calibrate", folders["cal"], "--cache", cache,
                "--resolution", 32, "--on-bad-image", "skip", *FAST)
    assert code == 0
    printed = capsys.readouterr()
    assert "calibrated at 95% TPR on 6 images" in printed.err
    assert "1 skipped" in printed.out and "wrote" in printed.out
    df = pd.read_csv(out)
    assert list(df.columns) == CSV_COLUMNS
    assert len(df) == 10
    broken = df[df["path"].str.endswith("broken.png")].iloc[0]
    assert broken["status"] == "skipped" and "not an image" in broken["reason"]
    ok = df[df["status"] == "ok"]
    own = ok[ok["path"].str.contains("own_")]
    rest = ok[~ok["path"].str.contains("own_")]
    assert own["belonging"].all() and not rest["belonging"].any()
    assert own["score"].max() < rest["score"].min()
    # A rerun recomputes nothing.
    assert _run("--model", model, "--images", mixed, "--out", out, "--threshold", 1e-3, "--cache", cache,
                "--resolution", 32, "--on-bad-image", "skip", *FAST) == 0
    again = pd.read_csv(out)
    assert again.loc[again["status"] == "ok", "cached"].all()
    pd.testing.assert_series_equal(again["score"], df["score"])


def test_trace_without_threshold_leaves_belonging_empty_and_errors(tmp_path, tiny_dirs, folders, capsys):
    out = tmp_path / "s.csv"
    assert _run("--model", tiny_dirs["AutoencoderKL-0"], "--images", folders["real"], "--out", out, "--no-cache",
                "--resolution", 32, *FAST) == 0
    df = pd.read_csv(out)
    assert df["belonging"].isna().all() and (df["status"] == "ok").all()
    assert "no threshold given" in capsys.readouterr().out
    (folders["real"] / "zero.png").write_bytes(b"")
    assert _run("--model", tiny_dirs["AutoencoderKL-0"], "--images", folders["real"], "--out", out, "--no-cache",
                "--resolution", 32, *FAST) == 2
    assert "zero.png: empty file" in capsys.readouterr().err
    assert _run("--model", tmp_path / "nope", "--images", folders["real"], "--out", out, *FAST) == 2
    assert "nope: no such directory" in capsys.readouterr().err


def test_resume_after_kill_9_recomputes_nothing_done(tmp_path, tiny_dirs):
    src = tmp_path / "many"
    src.mkdir()
    for i, x in enumerate(natural_crops(24, seed=11)):
        save_png(x, src / f"{i:03d}.png")
    cache, out = tmp_path / "cache", tmp_path / "s.csv"
    args = [sys.executable, "-m", "latenttracer.cli", "trace", "--model", str(tiny_dirs["AutoencoderKL-0"]),
            "--images", str(src), "--out", str(out), "--cache", str(cache), "--resolution", "32",
            "--steps", "60", "--batch-size", "4", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    chunks = len(list(cache.glob("part-*.parquet")))
    assert 2 <= chunks < 6, "the kill must land mid-run"
    assert not out.exists()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    df = pd.read_csv(out)
    assert len(df) == 24 and (df["status"] == "ok").all()
    assert df["cached"].sum() >= 4 * chunks  # every batch finished before the kill was reused
    assert len(list(cache.glob("part-*.parquet"))) == 6  # and only the missing batches were computed


def test_trace_method_aedr_end_to_end(tmp_path, tiny_dirs, folders, capsys):
    out, cache = tmp_path / "aedr.csv", tmp_path / "cache"
    args = ["--method", "aedr", "--model", tiny_dirs["AutoencoderTiny-0"], "--images", folders["other"], "--out", out,
            "--calibrate", folders["cal"], "--cache", cache, "--resolution", 32, "--quiet"]
    assert _run(*args) == 0
    printed = capsys.readouterr()
    assert "calibrated at Gaussian KDE, 95% quantile on 6 images" in printed.err
    assert "score (aedr)" in printed.out
    df = pd.read_csv(out)
    assert list(df.columns) == CSV_COLUMNS + ["loss_1", "loss_2", "homogeneity"]
    assert (df["status"] == "ok").all() and not df["belonging"].any()
    assert (df["score"] - df["loss_1"] * df["homogeneity"] / df["loss_2"]).abs().max() < 1e-9 * df["score"].max()
    assert _run(*args) == 0  # cached, components included
    again = pd.read_csv(out)
    assert again["cached"].all()
    pd.testing.assert_frame_equal(again.drop(columns=["cached", "seconds"]), df.drop(columns=["cached", "seconds"]))


def test_trace_method_options_and_errors(tmp_path, tiny_dirs, folders, capsys):
    out = tmp_path / "s.csv"
    base = ["--model", tiny_dirs["AutoencoderTiny-0"], "--images", folders["own"], "--out", out, "--no-cache",
            "--resolution", 32, "--quiet"]
    assert _run("--method", "aeroblade", *base) == 2
    err = capsys.readouterr().err
    assert "vgg_weights not given" in err and "vgg16-397923af.pth" in err and "--distance l2" in err
    assert _run("--method", "aedr", "--steps", 5, *base) == 2
    err = capsys.readouterr().err
    takers = sorted(name for name, cls in METHODS.items() if "steps" in {f.name for f in cls.option_fields()})
    assert {"latenttracer", "ronan"} <= set(takers) and "aedr" not in takers
    assert f"--method aedr does not take --steps 5 (methods that take --steps: {', '.join(takers)})" in err
    assert _run("--method", "latenttracer", "--distance", "ssim", *base) == 2
    assert "--method latenttracer takes --distance l2|l1, not ssim (ssim is for aeroblade)" in capsys.readouterr().err
    # A threshold between the actual scores: both verdicts appear, each the right side of it.
    assert _run("--method", "aeroblade", "--distance", "l2", *base) == 0
    assert "score (aeroblade[l2])" in capsys.readouterr().out
    scores = pd.read_csv(out)["score"].sort_values().to_numpy()
    threshold = (scores[2] + scores[3]) / 2
    assert _run("--method", "aeroblade", "--distance", "l2", "--threshold", threshold, *base) == 0
    df = pd.read_csv(out)
    assert df["belonging"].tolist() == (df["score"] <= threshold).tolist()
    assert df["belonging"].sum() == 3 and (~df["belonging"]).sum() == 3
    capsys.readouterr()
    assert _run("--method", "ronan", "--steps", 3, "--batch-size", 2, *base) == 0
    assert "init=random" in capsys.readouterr().err


@pytest.mark.parametrize("name", METHODS.names())
def test_every_flag_a_method_does_not_take_is_a_one_line_error(name, tmp_path, capsys):
    """Generic over the registry: each option flag of another method, given with --method NAME, is refused
    before anything is loaded, naming the flag, the method and the methods that take it."""
    flags = [f for f in method_flags().values() if name not in f.defaults]
    for flag in flags:
        value = next(iter(f for f in flag.defaults.values() if f is not None), 1)
        words = flag.tokens(value)
        code = main(["trace", "--method", name, "--model", str(tmp_path / "no_model"), "--images",
                     str(tmp_path / "no_images"), "--out", str(tmp_path / "s.csv"), "--no-cache", *words])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err, err
        assert f"--method {name} does not take {' '.join(words)} (methods that take {flag.flag}: " \
               f"{', '.join(flag.methods)})" in err


@pytest.mark.parametrize("name", METHODS.names())
def test_cli_round_trip_contract(name, tmp_path, tiny_dirs, folders):
    """Every registered method: `trace --method NAME` writes the scores the library computes."""
    contracts.check_cli_round_trip(name, tiny_dirs["AutoencoderKL-0"], folders["real"], tmp_path)


def test_unwritable_outputs_fail_before_any_scoring(tmp_path, tiny_dirs, folders, capsys, monkeypatch):
    import latenttracer.tracing as tracing

    def never(*args, **kwargs):
        raise AssertionError("scoring started")

    monkeypatch.setattr(tracing, "score_images", never)
    a_file = tmp_path / "some_file.csv"
    a_file.write_text("x\n")
    base = ["--model", tiny_dirs["AutoencoderTiny-0"], "--images", folders["own"], "--resolution", 32, "--quiet"]
    cases = {
        ("--out", a_file / "x.csv", "--no-cache"): f"--out {a_file / 'x.csv'}: {a_file} is a file, not a folder",
        ("--out", folders["own"], "--no-cache"): f"--out {folders['own']}: is a folder, not a file",
        ("--out", tmp_path / "s.csv", "--cache", a_file / "c"): f"--cache {a_file / 'c'}: {a_file} is a file",
        ("--out", tmp_path / "s.csv", "--cache", a_file): f"--cache {a_file}: is a file, not a folder",
        ("--out", tmp_path / "s.csv", "--no-cache", "--html", a_file / "r.html"):
            f"--html {a_file / 'r.html'}: {a_file} is a file",
    }
    for args, message in cases.items():
        assert _run(*base, *args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert main(["attribute", "--model", str(tiny_dirs["AutoencoderTiny-0"]), "--calibrate", str(folders["cal"]),
                 "--images", str(folders["own"]), "--out", str(a_file / "a.csv"), "--no-cache"]) == 2
    assert f"--out {a_file / 'a.csv'}: {a_file} is a file" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def _unwritable(folder: Path) -> bool:
    import tempfile

    if not folder.is_dir():
        return False
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return True
    os.close(fd)
    os.unlink(name)
    return False


def test_read_only_output_folder_fails_before_scoring(tmp_path, tiny_dirs, folders, capsys):
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
    elif _unwritable(Path("/sys")):
        locked = Path("/sys")  # root may write anywhere, but not into sysfs
    else:
        pytest.skip("no folder this user cannot write into")
    try:
        assert _run("--model", tiny_dirs["AutoencoderTiny-0"], "--images", folders["own"], "--out",
                    locked / "sub" / "s.csv", "--no-cache", "--quiet") == 2
        err = capsys.readouterr().err
        assert f"--out {locked / 'sub' / 's.csv'}: cannot write in {locked} (" in err and err.count("\n") == 1
    finally:
        if locked != Path("/sys"):
            locked.chmod(0o700)


def test_attribute_end_to_end(tmp_path, tiny_dirs, folders, capsys):
    sib = load_autoencoder(tiny_dirs["AutoencoderTiny-1"], resolution=32)
    cal_b = tmp_path / "cal_b"
    cal_b.mkdir()
    for i, x in enumerate(decoded_images(sib, 6, 1)):
        save_png(x, cal_b / f"{i:03d}.png")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("own", "other", "real"):
        for f in sorted(folders[name].iterdir())[:4]:
            (mixed / f"{name}_{f.name}").write_bytes(f.read_bytes())
    out, cache = tmp_path / "attribution.csv", tmp_path / "cache"
    a, b = tiny_dirs["AutoencoderTiny-0"], tiny_dirs["AutoencoderTiny-1"]
    args = ["attribute", "--model", a, "--calibrate", folders["cal"], "--model", b, "--calibrate", cal_b,
            "--images", mixed, "--out", out, "--cache", cache, "--resolution", 32, *FAST]
    assert main(list(map(str, args))) == 0
    printed = capsys.readouterr().out
    assert "predicted: AutoencoderTiny-0: 4, AutoencoderTiny-1: 4, none: 4" in printed
    df = pd.read_csv(out)
    assert list(df.columns) == ["path", "predicted", "score_AutoencoderTiny-0", "norm_AutoencoderTiny-0",
                                "score_AutoencoderTiny-1", "norm_AutoencoderTiny-1"]
    expected = {"own": "AutoencoderTiny-0", "other": "AutoencoderTiny-1", "real": "none"}
    assert [expected[p.split("/")[-1].split("_")[0]] for p in df["path"]] == df["predicted"].tolist()
    for name in ("AutoencoderTiny-0", "AutoencoderTiny-1"):  # a model's claims pass its threshold (ratio <= 1)
        assert (df.loc[df["predicted"] == name, f"norm_{name}"] <= 1).all()
    assert (df.loc[df["predicted"] == "none", ["norm_AutoencoderTiny-0", "norm_AutoencoderTiny-1"]] > 1).all().all()
    # Scores are cached per model: a rerun (p-value normalisation this time) computes nothing new.
    chunks = len(list(cache.glob("part-*.parquet")))
    assert main(list(map(str, args + ["--normalise", "pvalue"]))) == 0
    assert len(list(cache.glob("part-*.parquet"))) == chunks
    assert pd.read_csv(out)["predicted"].tolist() == df["predicted"].tolist()
    capsys.readouterr()
    assert main(list(map(str, args[:5] + args[7:]))) == 2
    assert "1 --model but 2 --calibrate" in capsys.readouterr().err
    assert main(list(map(str, ["attribute", "--model", a, "--calibrate", folders["cal"], "--model", a,
                               "--calibrate", folders["cal"], "--images", mixed, "--out", out, "--no-cache",
                               "--resolution", 32, *FAST]))) == 2
    assert "share the name 'AutoencoderTiny-0'" in capsys.readouterr().err


def test_trace_lr_scale_latent_rms_is_set_on_the_calibration_images(tmp_path, tiny_dirs, folders, capsys):
    model = tiny_dirs["AutoencoderTiny-0"]
    out = tmp_path / "scores.csv"
    assert _run("--model", model, "--images", folders["own"], "--out", out, "--lr-scale", "latent_rms",
                "--no-cache", "--resolution", 32, *FAST) == 2  # no --calibrate: one line, before any work
    assert "--lr-scale latent_rms needs --calibrate DIR" in capsys.readouterr().err and not out.exists()
    assert _run("--model", model, "--images", folders["own"], "--out", out, "--lr-scale", "latent_rms", "--lr", 0.2,
                "--calibrate", folders["cal"], "--no-cache", "--resolution", 32, *FAST) == 0
    err = capsys.readouterr().err
    line = next(s for s in err.splitlines() if "--lr-scale latent_rms" in s)
    rms = float(line.split("latent RMS ")[1].split()[0])
    lr = float(line.split("= ")[1].split()[0])
    assert rms > 0 and lr == pytest.approx(0.2 * rms, rel=1e-3) and "(on 6 calibration images)" in line
    assert pd.read_csv(out)["belonging"].notna().all()


# -- trace --early-exit ---------------------------------------------------------------------------------------------
def _mixed(tmp_path, folders):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("own", "other", "real"):
        for f in sorted(folders[name].iterdir())[:4]:
            (mixed / f"{name}_{f.name}").write_bytes(f.read_bytes())
    return mixed


def test_early_exit_with_threshold_gives_the_full_runs_verdicts(tmp_path, tiny_dirs, folders, capsys):
    from latenttracer.tracing import EXIT_COLUMNS

    model, mixed = tiny_dirs["AutoencoderTiny-0"], _mixed(tmp_path, folders)
    full, early = tmp_path / "full.csv", tmp_path / "early.csv"
    assert _run("--model", model, "--images", mixed, "--out", full, "--calibrate", folders["cal"], "--no-cache",
                "--resolution", 32, *FAST) == 0
    # a threshold between the scores, so that some images stop below it and others run to the end
    threshold = float(pd.read_csv(full)["score"].median())
    capsys.readouterr()
    assert _run("--model", model, "--images", mixed, "--out", full, "--threshold", threshold, "--no-cache",
                "--resolution", 32, *FAST) == 0
    reference = pd.read_csv(full)
    assert _run("--model", model, "--images", mixed, "--out", early, "--threshold", threshold, "--early-exit",
                "--no-cache", "--resolution", 32, *FAST) == 0
    assert "early exit: exact part only" in capsys.readouterr().err
    df = pd.read_csv(early, keep_default_na=False)
    assert list(df.columns) == CSV_COLUMNS + EXIT_COLUMNS
    assert (df["belonging"].astype(str) == reference["belonging"].astype(str)).all()
    stopped = df[df["exit_reason"] == "threshold"]
    assert 0 < len(stopped) < len(df) and (stopped["steps_run"].astype(int) < 20).all()
    assert set(df["exit_reason"]) <= {"threshold", ""}  # no bound without calibration
    ran = df[df["exit_reason"] == ""]
    full_ran = reference.set_index("path").loc[ran["path"], "score"].to_numpy()
    assert ran["score"].astype(float).to_numpy() == pytest.approx(full_ran, rel=1e-5)


def test_early_exit_with_calibration_says_what_the_set_allows_and_keeps_the_full_runs_verdicts(
        tmp_path, tiny_dirs, folders, capsys):
    """6 calibration images are too few for an exit from above at the default risk: only the exact exit runs (every
    verdict is the full run's); at --exit-risk 0.5 the bound stops images, and every verdict it does not decide is
    still the full run's."""
    model, mixed = tiny_dirs["AutoencoderTiny-0"], _mixed(tmp_path, folders)
    flags = ["--calibrate", folders["cal"], "--cache", tmp_path / "cache", "--resolution", 32, *FAST]
    full, early = tmp_path / "full.csv", tmp_path / "early.csv"
    assert _run("--model", model, "--images", mixed, "--out", full, *flags) == 0
    reference = pd.read_csv(full).set_index("path")["belonging"]
    capsys.readouterr()
    assert _run("--model", model, "--images", mixed, "--out", early, "--early-exit", *flags) == 0
    err = capsys.readouterr().err
    # what the set allows, as the library states it: n images that end belonging allow risk >= min_risk(n)
    said = re.search(r"early exit: 6 calibration images, (\d+) end belonging: risk >= (\S+) for any exit from "
                     r"above; at risk (\S+) only the exact exit", err)
    assert said, err
    n = int(said[1])
    assert said[2] == f"{min_risk(n):.3g}" and float(said[3]) == DEFAULT_RISK < min_risk(n)
    df = pd.read_csv(early, keep_default_na=False).set_index("path")
    assert set(df["exit_reason"]) <= {"threshold", ""}
    assert (df["belonging"].astype(str) == reference.loc[df.index].astype(str)).all()
    assert _run("--model", model, "--images", mixed, "--out", early, "--early-exit", "--exit-risk", 0.5, *flags) == 0
    assert "at risk 0.5 the bound is q = " in capsys.readouterr().err
    df = pd.read_csv(early, keep_default_na=False).set_index("path")
    stopped = df[df["exit_reason"] == "bound"]
    assert len(stopped) and (stopped["belonging"].astype(str) == "False").all()
    kept = df[df["exit_reason"] != "bound"]
    assert (kept["belonging"].astype(str) == reference.loc[kept.index].astype(str)).all()
    assert (df["steps_run"].astype(int).mean() < 20) and (df.loc[df["exit_reason"] == "", "steps_run"] == 20).all()


@pytest.mark.parametrize("extra, words", [
    ([], "--early-exit needs --calibrate DIR"),
    (["--threshold", "0.01", "--method", "aedr"], "--method aedr does not take --early-exit"),
    (["--threshold", "0.01", "--method", "relative"], "method relative: early exit"),
    (["--threshold", "0.01", "--calibrate-perturb", "jpeg:90"], "--calibrate-perturb needs --calibrate"),
])
def test_bad_early_exit_combinations_fail_before_any_work(tmp_path, folders, capsys, extra, words):
    # the model does not exist: any work would fail on it, so the flags' error must come first
    code = _run("--model", tmp_path / "no_model", "--images", folders["own"], "--out", tmp_path / "s.csv",
                "--early-exit", "--no-cache", *extra)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_exit_risk_needs_early_exit_and_a_number_in_0_1(tmp_path, folders, capsys):
    args = ["--model", tmp_path / "no_model", "--images", folders["own"], "--out", tmp_path / "s.csv", "--no-cache",
            "--threshold", "0.01"]
    assert _run(*args, "--exit-risk", "0.1") == 2
    assert "--exit-risk needs --early-exit" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(*args, "--early-exit", "--exit-risk", "1.5")
    assert "must be a number in (0, 1), got '1.5'" in capsys.readouterr().err


def test_calibrate_perturb_bad_family_fails_before_any_work(tmp_path, folders, capsys):
    code = _run("--model", tmp_path / "no_model", "--images", folders["own"], "--out", tmp_path / "s.csv",
                "--calibrate", folders["cal"], "--calibrate-perturb", "jpeg:95..99", "--no-cache")
    assert code == 2
    assert "no point of AEROBLADE's jpeg grid" in capsys.readouterr().err


def test_trace_help_states_the_guarantee(capsys):
    with pytest.raises(SystemExit):
        main(["trace", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exchangeable with the calibration images" in text and "--exit-risk" in text
    assert f"(default {DEFAULT_RISK:g})" in text and "n images end belonging allows alpha >= 1/(n + 1)" in text
    assert "--cascade" not in text and "--negatives" not in text and "--exit-margin" not in text
