"""The one Markdown table writer (latenttracer.tables.markdown_table) reproduces the shipped tables exactly."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from data_gen import real_images
from latenttracer import tables

ROOT = Path(__file__).resolve().parents[1]


def _tables(text: str) -> list[list[str]]:
    """The pipe-table blocks of a Markdown text, each as its lines."""
    blocks, current = [], []
    for line in text.split("\n"):
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    return blocks + ([current] if current else [])


def _cells(line: str) -> list[str]:
    return line[2:-2].split(" | ")


def test_markdown_table_rows_and_frames():
    assert tables.markdown_table([[1, "a"]], ["n", "x"]) == "| n | x |\n|---|---|\n| 1 | a |"
    frame = pd.DataFrame({"n": [1, 2], "x": ["a", "b"]}, index=[7, 8])
    assert tables.markdown_table(frame) == "| n | x |\n|---|---|\n| 1 | a |\n| 2 | b |"
    with pytest.raises(ValueError, match="row"):
        tables.markdown_table([[1]], ["n", "x"])
    with pytest.raises(ValueError, match="header"):
        tables.markdown_table([[1]])


@pytest.mark.parametrize("path", ["results/table1.md", "results/figures/ablations.md",
                                  *(f"zoo/{m}/README.md" for m in ("kl-a", "kl-b", "kl-a-ft", "vq", "tiny"))])
def test_shipped_tables_are_what_the_writer_writes(path):
    file = ROOT / path
    if not file.is_file():
        pytest.skip(f"{path} is not in this checkout")
    blocks = _tables(file.read_text(encoding="utf-8"))
    assert blocks, f"{path}: no table"
    for lines in blocks:
        assert set(lines[1]) == {"|", "-"}
        assert tables.markdown_table([_cells(x) for x in lines[2:]], _cells(lines[0])) == "\n".join(lines)


def test_table1_markdown_regenerates_byte_for_byte_from_its_csv():
    md, csv = ROOT / "results" / "table1.md", ROOT / "results" / "table1.csv"
    if not (md.is_file() and csv.is_file()):
        pytest.skip("results/table1.{md,csv} are not in this checkout")
    text = md.read_text(encoding="utf-8")
    lines = text.split("\n")
    notes = lines[3:lines.index("", 2)]  # title, blank, counts line, then the notes up to a blank line
    labels = {v: k for k, v in tables.METRIC_LABELS.items()}
    metrics = [labels.get(x[3:], x[3:]) for x in lines if x.startswith("## ")]
    assert tables.tables_markdown(pd.read_csv(csv), metrics, lines[0][2:], notes) == text


def test_licence_table():
    lines = real_images.licence_table().split("\n")
    assert lines[0] == "| photo | package | file | licence | credit | split |"
    assert len(lines) == 2 + len(real_images.PHOTOS)


def test_ablations_markdown_holds_the_numbers_of_its_csv():
    """results/figures/ablations.md is what `make figures` renders from the rows of results/ablations.csv made
    under the current protocol (the suite of conf/, its inversion defaults): every number comes from the CSV."""
    md, csv = ROOT / "results" / "figures" / "ablations.md", ROOT / "results" / "ablations.csv"
    if not (md.is_file() and csv.is_file()):
        pytest.skip("results/ablations.csv or results/figures/ablations.md is not in this checkout")
    from hydra import compose, initialize_config_dir

    from experiments import common, figures

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("figures", overrides=[f"paths.root_dir={ROOT}"])
    rows = pd.read_csv(csv)
    current = rows[rows["protocol"].astype(str) == common.protocol_hash(cfg)]
    assert len(current) > 0, "no ablation row of the current protocol"
    steps, lr = figures.matching(current, cfg, ["steps", "init"]), figures.matching(current, cfg, ["lr"])
    text = md.read_text(encoding="utf-8")
    assert figures.summary_markdown(steps, lr) == text
    # and spot-check one number against the CSV directly: the pooled AUC of kl-a, encoder init, 100 steps
    cell = steps[(steps["source"] == "all") & (steps["init"] == "encoder") & (steps["steps"] == 100)]
    (auc,) = cell["auc"]
    row = [line for line in text.split("\n") if line.startswith("| kl-a | encoder |")][0]
    header = _tables(text)[0][0]
    assert _cells(row)[_cells(header).index("100")] == f"{auc:.3f}"
