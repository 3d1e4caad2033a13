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
    metrics = [labels.get(x[3:].removesuffix(" [95% CI]"), x[3:]) for x in lines if x.startswith("## ")]
    assert tables.tables_markdown(pd.read_csv(csv), metrics, lines[0][2:], notes) == text


def test_table1_shows_every_rate_with_its_interval():
    md, csv = ROOT / "results" / "table1.md", ROOT / "results" / "table1.csv"
    if not (md.is_file() and csv.is_file()):
        pytest.skip("results/table1.{md,csv} are not in this checkout")
    cells, text = pd.read_csv(csv), md.read_text(encoding="utf-8")
    for metric in ("auc", "ap", "tpr_at_1fpr", "tpr_at_5fpr", "accuracy"):
        assert tables.has_interval(cells, metric), metric
        assert f"## {tables.METRIC_LABELS[metric]} [95% CI]" in text
        inside = cells[f"{metric}_lo"] <= cells[f"{metric}_hi"]
        assert inside.all() and cells[f"{metric}_lo"].between(0, 1).all() and cells[f"{metric}_hi"].between(0, 1).all()
    # A hand check: kl-a against kl-a-ft, the hard pair, as the Markdown shows it.
    row = cells[(cells["inspected"] == "kl-a") & (cells["source"] == "kl-a-ft")].iloc[0]
    shown = f"{row.auc:.3f} [{row.auc_lo:.2f}, {row.auc_hi:.2f}]"
    assert any(line.startswith("| kl-a |") and shown in line for line in text.split("\n"))
    # Perfect separation on 50 vs 50 is never shown as certain.
    perfect = cells[cells["auc"] == 1.0]
    assert len(perfect) and (perfect["auc_lo"] < 0.95).all()


def test_fmt_metric_and_sections_render_intervals():
    row = {"auc": 0.9444, "auc_lo": 0.8012, "auc_hi": 1.0, "median_belonging": 1.234e-5}
    assert tables.fmt_metric(row, "auc") == "0.944 [0.80, 1.00]"
    assert tables.fmt_metric(row, "median_belonging") == "1.23e-05"  # no bounds: the value alone
    assert tables.fmt_metric({"auc": float("nan"), "auc_lo": 0.1, "auc_hi": 0.2}, "auc") == "–"
    cells = pd.DataFrame({"inspected": ["a", "b"], "source": ["b", "a"], "auc": [0.5, 1.0],
                          "auc_lo": [0.25, 0.93], "auc_hi": [0.75, 1.0], "ap": [0.6, 0.7]})
    assert tables.metric_section(cells, "auc") == (
        "## AUC [95% CI]\n\n| inspected \\ source | a | b |\n|---|---|---|\n"
        "| a | – | 0.500 [0.25, 0.75] |\n| b | 1.000 [0.93, 1.00] | – |")
    assert tables.metric_section(cells, "ap").startswith("## AP\n")
    tex = tables.tables_latex(cells, ["auc"])
    assert "0.500 [0.25, 0.75]" in tex and r"AUC [95\% CI]" in tex


# Published tables whose per-image scores are not in this checkout, so that their intervals wait for a rerun
# of their study Each is a strict xfail: once its CSV
# carries every interval the test XPASSes, which fails, and the name must go from this set.
AWAITING_RERUN = {"drift_taef2.csv", "methods.csv", "real_decoder_r256_resolution.csv",
                  "robustness.csv", "robustness_deployment.csv"}


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "results").glob("*.csv")))
def test_every_published_auc_has_an_interval(name, request):
    """Contract: every published CSV with an ``auc`` column (or ``auc_<x>`` columns) has its ``_lo`` / ``_hi``."""
    if name in AWAITING_RERUN:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{name}: rerun pending; once it has its intervals, "
                                                 "remove it from AWAITING_RERUN in tests/test_tables.py"))
    frame = pd.read_csv(ROOT / "results" / name)
    columns = list(frame.columns)
    aucs = [c for c in columns if (c == "auc" or c.startswith("auc_")) and not c.endswith(("_lo", "_hi"))]
    missing = [f"{c}{s}" for c in aucs for s in ("_lo", "_hi") if f"{c}{s}" not in columns]
    assert not missing, f"results/{name} lacks {missing}"
    for c in aucs:  # and every AUC given has its bounds, around it
        given = frame[frame[c].notna()]
        lo, hi = given[f"{c}_lo"], given[f"{c}_hi"]
        assert lo.notna().all() and hi.notna().all(), f"results/{name}: {int(lo.isna().sum())} {c} without bounds"
        assert ((lo <= given[c] + 1e-12) & (given[c] <= hi + 1e-12)).all(), f"results/{name}: {c} outside its bounds"


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
    (auc,), (lo,), (hi,) = cell["auc"], cell["auc_lo"], cell["auc_hi"]
    row = [line for line in text.split("\n") if line.startswith("| kl-a | encoder |")][0]
    header = _tables(text)[0][0]
    assert _cells(row)[_cells(header).index("100")] == f"{auc:.3f} [{lo:.2f}, {hi:.2f}]"


def test_attribution_accuracies_show_their_wilson_interval():
    """results/attribution.md shows each accuracy of results/attribution.csv with the Wilson interval of its counts."""
    md, csv = ROOT / "results" / "attribution.md", ROOT / "results" / "attribution.csv"
    if not (md.is_file() and csv.is_file()):
        pytest.skip("results/attribution.{md,csv} are not in this checkout")
    from latenttracer.intervals import wilson

    table, text = pd.read_csv(csv), md.read_text(encoding="utf-8")
    blocks = {lines[0]: lines for lines in _tables(text)}
    accuracy = next(lines for head, lines in blocks.items() if head.startswith("| method \\ source |"))
    header = _cells(accuracy[0])
    shown = {(_cells(line)[0], source): cell
             for line in accuracy[2:] for source, cell in zip(header[1:], _cells(line)[1:])}
    for r in table.itertuples():
        k = round(r.accuracy * r.n)
        assert (r.accuracy_lo, r.accuracy_hi) == pytest.approx(wilson(k, r.n))
        assert shown[r.method, r.source] == tables.fmt_metric(r._asdict(), "accuracy")
    # by hand: LatentTracer on kl-b attributes 44 of 50 images correctly: Wilson [0.7620, 0.9438]
    row = table[(table["method"] == "latenttracer") & (table["source"] == "kl-b")].iloc[0]
    assert (row.accuracy_lo, row.accuracy_hi) == pytest.approx((0.7620, 0.9438), abs=1e-4)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "results").glob("*.csv")))
def test_threshold_rates_carry_the_wilson_interval_of_their_counts(name):
    """Wherever a published CSV has TPR / FPR at a threshold with bounds, they are Wilson's of the counts."""
    from latenttracer.intervals import wilson

    frame = pd.read_csv(ROOT / "results" / name)
    if not {"tpr_lo", "n_belonging", "n_non_belonging"} <= set(frame.columns):
        pytest.skip(f"{name}: no TPR interval at a threshold")
    rows = frame[frame["tpr"].notna()]
    assert len(rows)
    for r in rows.itertuples():
        assert (r.tpr_lo, r.tpr_hi) == pytest.approx(wilson(round(r.tpr * r.n_belonging), r.n_belonging))
        assert (r.fpr_lo, r.fpr_hi) == pytest.approx(wilson(round(r.fpr * r.n_non_belonging), r.n_non_belonging))
        assert r.accuracy_lo <= r.accuracy <= r.accuracy_hi


def test_fmt_metric_for_score_ratios():
    assert tables.fmt_metric({"ratio": 96.123, "ratio_lo": 80.2, "ratio_hi": 120.4}, "ratio") == "96.1 [80.2, 120]"
    assert tables.fmt_metric({"ratio": 2.0, "ratio_lo": float("inf"), "ratio_hi": 3.0}, "ratio") == "2"


def test_plot_metric_draws_error_bars_only_with_an_interval():
    from matplotlib.container import ErrorbarContainer

    plt = tables._pyplot()
    rows = pd.DataFrame({"steps": [10, 100], "auc": [0.8, 0.9], "auc_lo": [0.7, 0.85], "auc_hi": [0.88, 0.97]})
    fig, ax = plt.subplots()
    bars = tables.plot_metric(ax, rows, "steps", "auc")
    assert isinstance(bars, ErrorbarContainer)
    (segments,) = bars.lines[2]
    spans = sorted(sorted((float(s[0][1]), float(s[1][1]))) for s in segments.get_segments())
    assert [v for span in spans for v in span] == pytest.approx([0.7, 0.88, 0.85, 0.97])
    plain = tables.plot_metric(ax, rows.drop(columns=["auc_lo", "auc_hi"]), "steps", "auc")
    assert not isinstance(plain, ErrorbarContainer)
    plt.close(fig)


def test_table1_gain_over_step0_is_the_paired_difference():
    csv, scores = ROOT / "results" / "table1.csv", ROOT / "results" / "table1_scores.parquet"
    if not (csv.is_file() and scores.is_file()):
        pytest.skip("results/table1.csv or its scores are not in this checkout")
    from latenttracer.intervals import auc_difference

    cells = pd.read_csv(csv)
    assert (cells["auc_gain_over_step0"] - (cells["auc"] - cells["auc_step0"])).abs().max() < 1e-12
    s = pd.read_parquet(scores, columns=["inspected", "source", "split", "score", "init_loss", "status"])
    s = s[(s["split"] == "evaluation") & (s["inspected"] == "vq") & (s["status"] == "ok")]
    own, other = s[s["source"] == "vq"], s[s["source"] != "vq"]
    row = cells[(cells["inspected"] == "vq") & (cells["source"] == "all")].iloc[0]
    expected = auc_difference(own["score"], other["score"], own["init_loss"], other["init_loss"])
    assert (row.auc_gain_over_step0, row.auc_gain_over_step0_lo, row.auc_gain_over_step0_hi) == pytest.approx(expected)
