"""docs/extending_studies.md's worked examples, run end to end: its files are written into tmp_path exactly as the
page shows them and loaded as plugins (nothing in the project is edited); the toy perturbation goes through the
robustness study on the micro zoo, the toy study through the generic entry point (a subprocess)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.micro_zoo import MICRO, _wandb_sandbox, job, micro_zoo, workspace  # noqa: F401  (fixtures)
from PIL import Image

from experiments import study
from latenttracer.registry import load_plugins

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "extending_studies.md"


def example_files() -> dict[str, str]:
    """{path: text} of every code block of the page that starts with a ``# file: <path>`` line."""
    blocks = re.findall(r"```(?:python|yaml)\n# file: (\S+)\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    return {path: text for path, text in blocks}


@pytest.fixture
def examples(tmp_path) -> dict[str, Path]:
    """The page's files under tmp_path: the Python ones in plugins/, the YAML ones in conf/ (Hydra search path)."""
    written = {}
    for path, text in example_files().items():
        rel = Path(path)
        target = tmp_path / ("plugins" / Path(rel.name) if rel.suffix == ".py" else rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written[path] = target
    return written


def test_the_page_has_both_examples():
    assert set(example_files()) == {"latenttracer/perturbations/gamma.py", "conf/perturbation/gamma.yaml",
                                    "latenttracer/studies/score_histogram.py", "conf/score_histogram.yaml"}


def test_the_toy_perturbation_runs_through_robustness(examples, micro_zoo, workspace, tmp_path):  # noqa: F811
    from latenttracer.perturbations import PERTURBATIONS, Perturbation, apply_perturbation, parse_grid

    load_plugins([examples["latenttracer/perturbations/gamma.py"]])
    assert "gamma" in PERTURBATIONS
    with pytest.raises(ValueError, match="gamma: exponent must be a number > 0"):
        parse_grid(["gamma:-1"])
    pixels = np.array([[[0, 64, 255]]], np.uint8)
    assert apply_perturbation(pixels, Perturbation("gamma", 2)).tolist() == [[[0, 16, 255]]]  # 255 * (64/255)^2

    cfg = job("robustness", workspace, micro_zoo, tmp_path / "out",
              [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "perturbation=gamma", "inspected=[kl-a]",
               "logger=none", "out=${paths.results_dir}/robustness_gamma",
               "methods=[{name: aeroblade, options: {distance: l2}}]", "calibration=[clean]"])
    rows = study.run(cfg, "robustness").frame
    assert list(rows["condition"]) == ["clean", "gamma0.5", "gamma2"]
    assert (rows["n_belonging"] == 3).all() and (rows["n_non_belonging"] == 5 * 3 + 4).all()
    # the perturbed copies are the kind's pixels, cached under the condition's key
    cached = sorted((workspace / "results" / "cache" / "perturbed" / "gamma2-v1").glob("*.png"))
    assert len(cached) == 3 + 5 * 3 + 4
    assert "## auc" in (workspace / "results" / "debug" / "robustness_gamma.md").read_text()
    assert (workspace / "results" / "debug" / "figures" / "robustness_gamma.png").is_file()
    from experiments import common
    from latenttracer.images import file_sha256

    originals = {file_sha256(p): p for parts in common.Context(cfg).image_sets().values()
                 for files in parts.values() for p in files}
    some = cached[0]
    want = apply_perturbation(np.asarray(Image.open(originals[some.stem]).convert("RGB")), Perturbation("gamma", 2))
    np.testing.assert_array_equal(np.asarray(Image.open(some)), want)


@pytest.mark.e2e
def test_the_toy_study_runs_through_the_generic_entry_point(examples, tmp_path):
    results = tmp_path / "results" / "debug"
    results.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for inspected in ("kl-a", "vq"):
        for source in ("kl-a", "vq", "real"):
            for split in ("calibration", "evaluation"):
                rows += [{"inspected": inspected, "source": source, "split": split, "status": "ok",
                          "score": float(s), "path": f"{source}/{i}.png"}
                         for i, s in enumerate(rng.uniform(0.0, 1.0, 5) + (source != inspected))]
    scores = pd.DataFrame(rows)
    scores.to_parquet(results / "table1_scores.parquet")

    plugin = examples["latenttracer/studies/score_histogram.py"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "LATENTTRACER_PLUGINS": str(plugin),
           "LATENTTRACER_ROOT": str(tmp_path)}
    cmd = [sys.executable, "-m", "experiments.study", f"--config-dir={tmp_path / 'conf'}",
           "--config-name=score_histogram", *MICRO, "logger=none", f"paths.root_dir={tmp_path}", "bins=2"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    table = pd.read_csv(results / "score_histogram.csv")
    ev = scores[scores["split"] == "evaluation"]
    edges = np.linspace(ev["score"].min(), ev["score"].max(), 3)
    assert list(table["inspected"]) == ["kl-a", "kl-a", "vq", "vq"]
    for row in table.to_dict("records"):
        mine = ev[ev["inspected"] == row["inspected"]]
        mine = mine[(mine["source"] == row["inspected"]) == (row["class"] == "belonging")]["score"]
        counts = [int(((mine >= edges[0]) & (mine < edges[1])).sum()),
                  int(((mine >= edges[1]) & (mine <= edges[2])).sum())]  # numpy's last bin is closed
        assert [row["bin_0"], row["bin_1"]] == counts and row["n"] == len(mine) == sum(counts)
    md = (results / "score_histogram.md").read_text()
    assert md.startswith("# Score histogram") and md.strip() in done.stdout
    # the job is named after its study, as `python -m experiments.<name>` names its jobs
    assert (tmp_path / "outputs" / "score_histogram").is_dir()
