"""The numbers README.md and docs/*.md quote match the committed files they come from.

Every quoted result carries an HTML comment right after it (invisible when the Markdown is rendered) that names
its source; this test reads the source and checks the quoted number at the rounding it is quoted with::

    AUC 0.991<!-- src: results/methods.csv method=ronan inspected=vq source=all col=auc -->
    stds from 0.016<!-- src: zoo/kl16/card.json col=stats.latent_channel_std_before_whitening agg=min -->
    96<!-- src: results/methods.csv method=latenttracer inspected=kl16 source=all col=median_non_belonging
           over results/methods.csv method=latenttracer inspected=kl16 source=all col=median_belonging -->x

A source is ``PATH [column=value ...] col=COLUMN [agg=min|max|mean|median|sum|count] [scale=FACTOR]``, and
``A over B`` is the ratio of two sources. ``PATH`` is a CSV file (rows where each ``column`` equals ``value``
as written in the file, or one of ``a|b|c``; ``column!=value`` excludes; without ``agg`` exactly one row must
match), a JSON file (``col`` is a dotted key; a list
value needs ``agg``) or a Markdown file (its tables, header row as column names). Values with spaces are quoted.

A whole table is marked in front of it: ``<!-- table: results/table1.csv metric=auc -->`` means the table must be
exactly what :func:`latenttracer.tables.tables_markdown` writes for that metric from the CSV;
``<!-- table: results/figures/ablations.md -->`` means the table appears verbatim in that published file;
``<!-- table: data_gen.real_images:licence_table -->`` that it is what that function returns.

README.md's prose may quote no result without a marker: every decimal number, ``Nx`` ratio and number in
scientific notation outside code must be marked (model versions such as "SD 1.5" excepted).
"""

from __future__ import annotations

import importlib
import json
import math
import re
import shlex
from functools import cache
from pathlib import Path

import pandas as pd
import pytest

from latenttracer import tables

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "research").glob("*.md"))]
MARKER = re.compile(r"<!--\s*(src|table):(.*?)-->", re.S)
NUMBER = re.compile(r"(-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?)$")
AGGREGATES = {"min": min, "max": max, "sum": sum, "count": len, "mean": lambda v: sum(v) / len(v),
              "median": lambda v: float(pd.Series(v).median())}


def _doc_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def markers(path: Path) -> list[tuple[str, str, str, int]]:
    """``(kind, spec, text before the marker, line)`` for every marker in one Markdown file."""
    text = path.read_text(encoding="utf-8")
    blank = re.sub(r"```.*?```|`[^`\n]*`", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S)
    return [(m.group(1), " ".join(m.group(2).split()), text[:m.start()], text.count("\n", 0, m.start()) + 1)
            for m in MARKER.finditer(blank)]  # markers shown in code (as examples) are not markers


@cache
def _csv(path: str) -> pd.DataFrame:
    return pd.read_csv(ROOT / path, dtype=str, keep_default_na=False)


@cache
def _markdown_rows(path: str) -> list[dict[str, str]]:
    rows, header = [], None
    for line in (ROOT / path).read_text(encoding="utf-8").split("\n"):
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif set(line) - set("|-: "):
            rows.append(dict(zip(header, cells)))
    return rows


def _values(path: str, where: dict[str, str], col: str) -> list[float]:
    if not (ROOT / path).is_file():
        raise AssertionError(f"source file {path} does not exist")
    if path.endswith(".json"):
        value = json.loads((ROOT / path).read_text(encoding="utf-8"))
        for key in col.split("."):
            value = value[key]
        return [float(v) for v in value] if isinstance(value, list) else [float(value)]
    if path.endswith(".csv"):
        frame = _csv(path)
        for key, value in where.items():
            negate = key.endswith("!")
            key = key.rstrip("!")
            assert key in frame.columns, f"{path} has no column {key!r}"
            hit = frame[key].isin(value.split("|"))
            frame = frame[~hit if negate else hit]
        assert col in frame.columns, f"{path} has no column {col!r}"
        return [float(v) for v in frame[col]]
    if path.endswith(".md"):
        rows = [r for r in _markdown_rows(path) if col in r and all(r.get(k) == v for k, v in where.items())]
        return [float(r[col].rstrip("x")) for r in rows]
    raise AssertionError(f"unsupported source type: {path}")


def source_value(spec: str) -> float:
    """The value one ``src:`` marker names (see the module docstring)."""
    if " over " in spec:
        top, bottom = spec.split(" over ", 1)
        return source_value(top) / source_value(bottom)
    path, *pairs = shlex.split(spec)
    options = dict(p.split("=", 1) for p in pairs)
    col, agg, scale = options.pop("col"), options.pop("agg", None), float(options.pop("scale", 1))
    values = _values(path, options, col)
    if agg is None:
        assert len(values) == 1, f"{spec}: {len(values)} values match (give agg= or a narrower selection)"
        value = values[0]
    else:
        assert values, f"{spec}: nothing matches"
        value = AGGREGATES[agg](values)
    return value * scale


def quoted_number(before: str) -> tuple[float, float]:
    """The number right in front of a marker and half a unit of its last quoted digit."""
    match = NUMBER.search(before.rstrip())
    assert match, f"no number right before the marker: ...{before[-40:]!r}"
    text = match.group(1).replace(",", "")
    mantissa, _, exponent = text.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return float(text), 0.5 * 10 ** (int(exponent or 0) - decimals)


def _table_after(text: str) -> str:
    lines = text.lstrip("\n").split("\n")
    block = []
    for line in lines:
        if not line.startswith("|"):
            break
        block.append(line)
    return "\n".join(block)


def check_table(spec: str, after: str) -> None:
    path, *pairs = shlex.split(spec)
    options = dict(p.split("=", 1) for p in pairs)
    table = _table_after(after)
    assert table, f"table marker {spec!r} is not followed by a table"
    if ":" in path:  # module:function that returns the table
        module, function = path.split(":")
        assert table == getattr(importlib.import_module(module), function)().strip(), spec
    elif path.endswith(".csv"):
        generated = tables.tables_markdown(pd.read_csv(ROOT / path), [options["metric"]])
        assert table == _table_after(generated.split("\n## ", 1)[1].split("\n", 1)[1]), spec
    else:
        assert table in (ROOT / path).read_text(encoding="utf-8"), f"{spec}: table not found verbatim in {path}"


def _all_markers():
    for doc in DOCS:
        for kind, spec, before, line in markers(doc):
            yield pytest.param(doc, kind, spec, before, id=f"{_doc_id(doc)}:{line}")


@pytest.mark.parametrize(("doc", "kind", "spec", "before"), list(_all_markers()))
def test_quoted_number_matches_its_source(doc, kind, spec, before):
    if kind == "table":
        text = doc.read_text(encoding="utf-8")
        check_table(spec, text[text.index(spec.split()[0], len(before)):].split("-->", 1)[1])
        return
    quoted, half_unit = quoted_number(before)
    value = source_value(spec)
    assert math.isfinite(value) and abs(value - quoted) <= half_unit * (1 + 1e-9) + 1e-12, (
        f"{_doc_id(doc)} quotes {quoted} but {spec} gives {value}")


def test_docs_have_markers_and_every_readme_number_is_sourced():
    assert sum(len(markers(d)) for d in DOCS) >= 100
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks
    text = re.sub(r"<!--\s*table:.*?-->\s*\n(\|.*\n)+", "\n", text)  # tables checked whole (test above)
    text = MARKER.sub(" SOURCED ", text)
    text = re.sub(r"`[^`]*`", "", text)  # code spans
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    unsourced = []
    for line in text.split("\n"):
        for m in re.finditer(r"(?<![\w.])(\d+\.\d+(?:e-?\d+)?|\d+e-\d+|\d+x)(?![\w.])", line):
            if line[m.end():].startswith(" SOURCED") or re.search(r"(SD|Kandinsky|arXiv|FLUX)\s*$",
                                                                   line[:m.start()]):
                continue
            unsourced.append(f"{m.group(1)} in: {line.strip()[:100]}")
    assert not unsourced, "README numbers without a source marker:\n" + "\n".join(unsourced)


def test_marker_checker_catches_drift(tmp_path):
    # a quoted number off by more than its rounding fails; one within it passes
    spec = "results/table1.csv inspected=kl-a source=kl-a-ft col=auc"
    value = source_value(spec)
    quoted, half = quoted_number(f"AUC {value:.3f}")
    assert abs(value - quoted) <= half
    quoted, half = quoted_number(f"AUC {value + 0.002:.3f}")
    assert abs(value - quoted) > half
    assert quoted_number("median 1.56e-6")[1] == pytest.approx(0.005e-6)
    assert quoted_number("102,903") == (102903.0, 0.5)
    with pytest.raises(AssertionError, match="values match"):
        source_value("results/table1.csv inspected=kl-a col=auc")
