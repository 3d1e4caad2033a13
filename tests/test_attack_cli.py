"""``latenttracer attack``: the round trip (attacked images + CSV of before / after scores) and its errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
from helpers.cli import folders  # noqa: F401  (a fixture)
from PIL import Image

from latenttracer.cli import main

FAST = ["--resolution", "32", "--steps", "10", "--batch-size", "8", "--quiet", "--search-steps", "1", "--no-cache"]


def run_attack(*args) -> int:
    return main(["attack", *map(str, args)])


def test_evade_round_trip(tmp_path, tiny_dirs, folders):  # noqa: F811
    model = tiny_dirs["AutoencoderTiny-0"]
    out = tmp_path / "attacked"
    rc = run_attack("--model", model, "--images", folders["own"], "--kind", "evade", "--budget", 30, "--out", out,
                    "--calibrate", folders["cal"], *FAST)
    assert rc == 0
    frame = pd.read_csv(out / "attack.csv")
    assert len(frame) == 6 and set(frame["kind"]) == {"evade"} and set(frame["attack"]) == {"pgd"}
    for row in frame.itertuples():
        img = np.asarray(Image.open(row.attacked))
        assert img.shape == (32, 32, 3)
        assert row.psnr >= 30 - 1e-6  # within the budget
        # success is what the scores say: judged belonging before, not after
        assert row.success == (row.score_after > row.threshold)
    assert frame["success"].any()  # 30 dB is far above LatentTracer's evasion budget on own images


def test_forge_round_trip_with_threshold(tmp_path, tiny_dirs, folders, capsys):  # noqa: F811
    out = tmp_path / "framed"
    rc = run_attack("--model", tiny_dirs["AutoencoderTiny-0"], "--images", folders["real"], "--kind", "forge",
                    "--attack", "projection", "--budget", 10, "--out", out, "--threshold", 1.0, *FAST)
    assert rc == 0
    frame = pd.read_csv(out / "attack.csv")
    assert len(frame) == 6 and frame["belonging_after"].all()  # a threshold of 1 accepts every projection ...
    # ... and a forgery counts only within the budget (a random tiny decoder projects some crops below 10 dB)
    assert (frame["success"] == (frame["psnr"] >= 10)).all()
    # the summary says how many passed before any change (a forgery of those proves nothing)
    summary = capsys.readouterr().out
    assert f"{int(frame['success'].sum())} pass as belonging within 10 dB" in summary
    assert f"{int(frame['belonging_before'].sum())} of them belonging before any change" in summary


def test_errors_name_the_flag(tmp_path, tiny_dirs, folders, capsys):  # noqa: F811
    model = tiny_dirs["AutoencoderTiny-0"]
    base = ["--model", model, "--images", folders["own"], "--threshold", 1e-4, *FAST]
    assert run_attack(*base, "--kind", "evade", "--budget", 200, "--out", tmp_path / "o") == 2
    assert "--budget 200: a PSNR in dB must be between" in capsys.readouterr().err
    assert run_attack(*base, "--kind", "steal", "--budget", 30, "--out", tmp_path / "o") == 2
    assert "--kind 'steal': unknown kind; expected one of evade, forge" in capsys.readouterr().err
    assert run_attack(*base, "--kind", "evade", "--attack", "projection", "--budget", 30,
                      "--out", tmp_path / "o") == 2
    assert "not an attack of --kind evade" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_attack(*base, "--kind", "evade", "--budget", 30, "--out", blocker) == 2
    assert f"--out {blocker}: is a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written before the checks
