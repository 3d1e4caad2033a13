"""What transfers: each method's pooled and hardest-pair AUC on the zoo, the eight CelebA VAEs and taef2, side by side,
and which zoo findings hold there (reads stored per-image scores only; computes no score).

    python -m experiments.transfer          # `make transfer` (conf/transfer.yaml) -> results/transfer.{md,csv}

A *domain* is one family of inspected models whose per-image scores earlier runs stored:

* ``table1`` domains (the zoo, suite celeba): LatentTracer's scores from Table 1's
  ``<outputs.table1>_scores.parquet``, every other method's from the method runs under ``outputs.method_runs``
  (:func:`latenttracer.studies.methods.load_runs`).
* ``real_decoder`` domains (taef2): the real-decoder study's config is composed as it is configured
  (``conf/real_decoder.yaml``), its decoders and sets are looked up where that study caches them, and each method's
  rows of those sets are read from the results store (:meth:`latenttracer.store.ResultStore.lookup`) under the key
  the study scores them with. What the store does not hold is counted, never computed.

Per method and domain (evaluation images only, ``status == "ok"``):

* **pooled AUC**: each inspected model's own evaluation images (belonging) against everything else it inspects
  (every other source's evaluation images and the real crops: Table 1's ``all`` cell), the (inspected, image) pairs
  of every inspected model pooled into one two-class set; DeLong's interval
  (:func:`latenttracer.intervals.auc_interval`).
* **hardest pair**: the (inspected, source) cell, source another model of the domain (not the real crops, as
  results/real_models.md's hardest pair), with the lowest AUC, and its interval.

A *finding* compares two methods on the same images (:func:`latenttracer.intervals.auc_difference`, images paired by
inspected model, source and sha256) or one method against chance (0.5, its AUC interval), on the pooled set or on one
cell, and its sentence follows the interval: ``holds`` (the interval lies on the claimed side), ``reversed`` (on the
other side) or ``not resolved at n = b + nb``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import MISSING

from latenttracer import protocol, tables
from latenttracer.intervals import auc_difference, auc_interval
from latenttracer.studies.base import STUDIES, Context, ReportSection, Study, StudyResult

log = logging.getLogger(__name__)

__all__ = ["COLUMNS", "KINDS", "SCOPES", "finding_row", "hardest_pair", "method_row", "normalise", "paired",
           "pooled", "verdict"]

KINDS = ("table1", "real_decoder")
SCOPES = ("pooled", "hardest")
COLUMNS = ["method", "domain", "n_models", "auc_pooled", "auc_pooled_lo", "auc_pooled_hi", "hardest_inspected",
           "hardest_source", "auc_hardest", "auc_hardest_lo", "auc_hardest_hi", "n_belonging", "n_non_belonging",
           "n_hardest_belonging", "n_hardest_non_belonging", "status", "scores_from"]
KEY = ["inspected", "source", "sha256"]
NEEDED = ("inspected", "source", "split", "sha256", "score", "status")
CONF = Path(__file__).resolve().parents[2] / "conf"


@dataclass
class DomainEntry:
    name: str = MISSING                  # the column heading: zoo, celeba, taef2
    kind: str = MISSING                  # table1 | real_decoder (module docstring)
    table1: str | None = None            # table1: LatentTracer's per-image scores (a parquet file)
    method_runs: str | None = None       # table1: the folder of <preset>_{cells.csv,scores.parquet}
    config: str | None = None            # real_decoder: the config whose decoders, sets and methods are read
    overrides: list[str] = field(default_factory=list)  # real_decoder: overrides of that config
    command: str = MISSING               # what produces the domain's scores (said where they are missing)
    about: str = ""                      # a few words on the domain for the page


@dataclass
class FindingEntry:
    claim: str = MISSING                 # the zoo finding in words, e.g. "LatentTracer >= AEDR (pooled)"
    a: str = MISSING                     # a method label: the claim is AUC(a) > AUC(b) (or > 0.5 without b)
    b: str | None = None                 # null: a against chance
    scope: str = "pooled"                # pooled | hardest (the hardest cell of method `pair_of` in each domain)
    pair_of: str = "latenttracer"


@dataclass
class TransferConfig:
    methods: list[str] = field(default_factory=list)      # method labels, in the table's order
    domains: list[DomainEntry] = field(default_factory=list)
    findings: list[FindingEntry] = field(default_factory=list)
    out: str = MISSING                   # publishes <out>.md, <out>.csv and <out>_findings.csv


# -- the statistics (pure: frames in, numbers out) --------------------------------------------------------------
def normalise(frame: pd.DataFrame, where: str, method: str | None = None) -> pd.DataFrame:
    """The evaluation rows of one method's per-image scores as (method, inspected, source, sha256, score), scored
    ``ok`` and finite. ``where`` names the file (or store) in errors; ``method`` fills a missing ``method`` column."""
    missing = [c for c in NEEDED if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: per-image scores lack column(s) {missing} (have {list(frame.columns)})")
    if "method" not in frame.columns:
        if method is None:
            raise ValueError(f"{where}: per-image scores lack a 'method' column")
        frame = frame.assign(method=method)
    try:
        score = pd.to_numeric(frame["score"], errors="raise").astype(float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: column 'score' must be numeric: {err}") from None
    ev = frame.assign(score=score)
    ev = ev[(ev["split"] == "evaluation") & (ev["status"] == "ok") & np.isfinite(ev["score"])]
    out = ev[["method", *KEY, "score"]].astype({"method": str, "inspected": str, "source": str, "sha256": str})
    return out.drop_duplicates(["method", *KEY], keep="last").reset_index(drop=True)


def _classes(frame: pd.DataFrame, source: str = protocol.ALL) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(belonging rows, non-belonging rows): each inspected model's own images, and everything else it inspects
    (``source`` = ``all``) or one other source's images."""
    own = frame["source"] == frame["inspected"]
    other = ~own if source == protocol.ALL else frame["source"] == source
    return frame[own], frame[other]


def pooled(frame: pd.DataFrame) -> dict[str, Any]:
    """Pooled AUC of one method's rows in one domain (module docstring), with its interval and the counts."""
    b, nb = _classes(frame)
    b = b[b["inspected"].isin(nb["inspected"])]
    nb = nb[nb["inspected"].isin(b["inspected"])]
    if b.empty or nb.empty:
        raise ValueError(f"pooled AUC: {len(b)} belonging and {len(nb)} non-belonging evaluation scores; "
                         "need both classes")
    r = auc_interval(b["score"].to_numpy(float), nb["score"].to_numpy(float))
    return {"n_models": int(b["inspected"].nunique()), "auc_pooled": r.auc, "auc_pooled_lo": r.lo,
            "auc_pooled_hi": r.hi, "n_belonging": len(b), "n_non_belonging": len(nb)}


def hardest_pair(frame: pd.DataFrame, models: list[str] | None = None) -> dict[str, Any]:
    """The (inspected, source) cell with the lowest AUC, source another inspected model of the domain (``models``;
    default: every inspected model of ``frame``), with its interval; NaN where no such cell exists."""
    models = sorted(set(frame["inspected"])) if models is None else list(models)
    best: dict[str, Any] | None = None
    for inspected, mine in frame.groupby("inspected", sort=True):
        for source in sorted(set(mine["source"]) & set(models) - {inspected}):
            b, nb = _classes(mine, source)
            if b.empty or nb.empty:
                continue
            r = auc_interval(b["score"].to_numpy(float), nb["score"].to_numpy(float))
            if best is None or r.auc < best["auc_hardest"]:
                best = {"hardest_inspected": inspected, "hardest_source": source, "auc_hardest": r.auc,
                        "auc_hardest_lo": r.lo, "auc_hardest_hi": r.hi, "n_hardest_belonging": len(b),
                        "n_hardest_non_belonging": len(nb)}
    return best or {"hardest_inspected": "", "hardest_source": "", "auc_hardest": math.nan,
                    "auc_hardest_lo": math.nan, "auc_hardest_hi": math.nan, "n_hardest_belonging": 0,
                    "n_hardest_non_belonging": 0}


def method_row(method: str, domain: str, frame: pd.DataFrame, models: list[str] | None = None,
               scores_from: str = "") -> dict[str, Any]:
    """One row of the table: ``method``'s pooled and hardest-pair AUC in ``domain``."""
    return {"method": method, "domain": domain, **pooled(frame), **hardest_pair(frame, models), "status": "ok",
            "scores_from": scores_from}


def not_run_row(method: str, domain: str, why: str) -> dict[str, Any]:
    row = {c: math.nan for c in COLUMNS}
    row.update({"method": method, "domain": domain, "n_models": 0, "hardest_inspected": "", "hardest_source": "",
                "n_belonging": 0, "n_non_belonging": 0, "n_hardest_belonging": 0, "n_hardest_non_belonging": 0,
                "status": "not run", "scores_from": why})
    return row


def paired(a: pd.DataFrame, b: pd.DataFrame, source: str = protocol.ALL,
           inspected: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(belonging_a, non_belonging_a, belonging_b, non_belonging_b): two methods' scores of the images both scored,
    paired by (inspected, source, sha256), pooled over inspected models (or of one ``inspected`` model's cell)."""
    if inspected is not None:
        a, b = a[a["inspected"] == inspected], b[b["inspected"] == inspected]
    both = a[[*KEY, "score"]].merge(b[[*KEY, "score"]], on=KEY, suffixes=("_a", "_b"), validate="one_to_one")
    own, other = _classes(both, source)
    return (own["score_a"].to_numpy(float), other["score_a"].to_numpy(float), own["score_b"].to_numpy(float),
            other["score_b"].to_numpy(float))


def verdict(diff: float, lo: float, hi: float, n_belonging: int, n_non_belonging: int) -> str:
    """``holds`` where the interval of the claimed difference (or of the AUC minus 0.5) lies above 0, ``reversed``
    where it lies below, else ``not resolved at n = b + nb``."""
    if lo > 0:
        return "holds"
    if hi < 0:
        return "reversed"
    return f"not resolved at n = {n_belonging} + {n_non_belonging}"


def finding_row(finding: Any, domain: str, frames: dict[str, pd.DataFrame],
                models: list[str] | None = None) -> dict[str, Any]:
    """One finding in one domain: the paired difference AUC(a) - AUC(b) (or AUC(a) - 0.5) with its interval, and
    its sentence. ``frames``: {method label: normalised rows} of the domain. A method missing -> ``not run``."""
    a, b, scope = str(finding.a), finding.b, str(finding.scope)
    if scope not in SCOPES:
        raise ValueError(f"findings: scope {scope!r} is not one of {list(SCOPES)} (claim {finding.claim!r})")
    row = {"claim": str(finding.claim), "domain": domain, "a": a, "b": b if b is not None else "chance (0.5)",
           "scope": scope, "inspected": "", "source": protocol.ALL, "diff": math.nan, "diff_lo": math.nan,
           "diff_hi": math.nan, "n_belonging": 0, "n_non_belonging": 0}
    needed = [m for m in (a, b, finding.pair_of if scope == "hardest" else None) if m is not None]
    absent = list(dict.fromkeys(str(m) for m in needed if m not in frames))
    if absent:
        return {**row, "verdict": f"not run ({', '.join(absent)} not run in {domain})"}
    inspected, source = None, protocol.ALL
    if scope == "hardest":
        cell = hardest_pair(frames[str(finding.pair_of)], models)
        if not cell["hardest_inspected"]:
            return {**row, "verdict": f"not run (no pair of two models in {domain})"}
        inspected, source = cell["hardest_inspected"], cell["hardest_source"]
        row.update(inspected=inspected, source=source)
    if b is None:
        own, other = _classes(frames[a] if inspected is None else frames[a][frames[a]["inspected"] == inspected],
                              source)
        if own.empty or other.empty:
            return {**row, "verdict": "not run (no images of both classes)"}
        r = auc_interval(own["score"].to_numpy(float), other["score"].to_numpy(float))
        diff, lo, hi, nb_, nn_ = r.auc - 0.5, r.lo - 0.5, r.hi - 0.5, len(own), len(other)
    else:
        ba, na, bb, nb = paired(frames[a], frames[str(b)], source, inspected)
        if not (ba.size and na.size):
            return {**row, "verdict": "not run (the two methods share no scored image of both classes)"}
        diff, lo, hi = auc_difference(ba, na, bb, nb)
        nb_, nn_ = ba.size, na.size
    return {**row, "diff": diff, "diff_lo": lo, "diff_hi": hi, "n_belonging": nb_, "n_non_belonging": nn_,
            "verdict": verdict(diff, lo, hi, nb_, nn_)}


# -- reading the stored scores ----------------------------------------------------------------------------------
@dataclass
class Domain:
    """One domain's stored scores: {method label: normalised rows}, where each came from, what is missing."""

    name: str
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    missing: str = ""                    # why the whole domain is not run ("" when it was)
    notes: list[str] = field(default_factory=list)
    models: list[str] | None = None      # the models a hardest pair may name (None: the inspected ones)
    configured: list[str] | None = None  # the method labels its config runs (None: not known)


def shown(path: str | Path) -> str:
    """``path`` as the page shows it: relative to the working folder (the project root) when inside it."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a clear error naming it
        raise ValueError(f"{path}: cannot read per-image scores ({type(err).__name__}: {err})") from None


def table1_domain(entry: Any) -> Domain:
    """A ``table1`` domain: Table 1's parquet (LatentTracer) and the method runs (the other methods)."""
    from latenttracer.studies.methods import load_runs

    dom = Domain(str(entry.name))
    if entry.table1:
        path = Path(str(entry.table1))
        if path.is_file():
            dom.frames["latenttracer"] = normalise(read_parquet(path), str(path), "latenttracer")
            dom.sources["latenttracer"] = shown(path)
    if entry.method_runs and Path(str(entry.method_runs)).is_dir():
        runs = Path(str(entry.method_runs))
        try:
            loaded = load_runs(runs)
        except Exception as err:  # noqa: BLE001 - the folder's files are named in the error
            raise ValueError(f"{runs}: cannot read the method runs ({type(err).__name__}: {err})") from None
        for preset, (_, scores) in loaded.items():
            where = f"{shown(runs)}/{preset}*_scores.parquet"
            frame = normalise(scores, where, preset)
            for label, rows in frame.groupby("method", sort=False):
                if label in dom.frames:  # Table 1's LatentTracer, or a label two presets share: the first wins
                    dom.notes.append(f"`{label}` from {dom.sources[label]}, not from {where}")
                    continue
                dom.frames[str(label)], dom.sources[str(label)] = rows.reset_index(drop=True), where
    if not dom.frames:
        dom.missing = f"no stored scores at {entry.table1} or {entry.method_runs}"
    return dom


def compose_config(name: str, overrides: list[str]):
    """Study config ``name`` composed as its entry point composes it (inside this Hydra job, or from conf/)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def stored_rows(store, ae, images: pd.DataFrame, method, image_options) -> tuple[pd.DataFrame, int]:
    """(the store's rows of ``images`` under ``method`` and ``ae``, how many of them it lacks); computes nothing."""
    from latenttracer.images import file_sha256

    key = method.run_hash(ae, image_options)
    images = images.assign(sha256=[file_sha256(p) for p in images["path"]])
    found = store.lookup(ae.name, key, images["sha256"]).reset_index()
    keep = [c for c in ("sha256", "score", "status", "reason", "trajectory") if c in found.columns]
    rows = images.merge(found[keep], on="sha256", how="inner")
    return rows, int(len(images) - images["sha256"].isin(found["sha256"]).sum())


def real_decoder_domain(entry: Any, ctx: Context) -> Domain:
    """A ``real_decoder`` domain: the study's configured decoders, sets and methods, and the store's rows of them."""
    from latenttracer import real_decoder as rd
    from latenttracer.inversion import InversionConfig
    from latenttracer.methods import LatentTracer
    from latenttracer.studies import real_decoder as rds

    dom = Domain(str(entry.name))
    if not entry.config:
        raise ValueError(f"domain {entry.name!r}: kind real_decoder needs `config` (e.g. real_decoder)")
    # its job writes nothing of its own (its output folder is this job's) and runs on this job's threads
    shared = [f"paths.output_dir={ctx.output_dir}", *([f"threads={ctx.cfg.threads}"] if ctx.cfg.get("threads") else [])]
    rcfg = compose_config(str(entry.config), [*shared, *list(entry.overrides or [])])
    rctx = type(ctx)(rcfg)  # the same kind of context, for that study's job config
    settings = rds.set_settings(rcfg, rctx)
    folder = rds.set_dir(rcfg, settings)
    member = Path(str(rcfg.dir)) / "members" / f"ft-{int(rcfg.sibling_steps)}"
    if not folder.is_dir() or not member.is_dir():
        dom.missing = f"no decoded sets at {shown(folder)} (or no sibling at {shown(member)})"
        return dom
    aes = rds.decoders(rcfg, rctx, [int(rcfg.sibling_steps)])  # cached: loads them
    sets = rds.image_sets(rcfg, rctx, aes, settings)           # cached: lists them
    dom.models = list(aes)
    dom.configured = [rctx.method(m).label for m in rcfg.methods]
    store, options = rctx.store(), rctx.image_options()
    for m in rcfg.methods:
        method = rctx.method(m)
        chosen = rd.subset_sets(sets, m.get("n_belonging"), m.get("n_per_source"))
        frames, lacking, total = [], 0, 0
        for name in [str(n) for n in (m.get("inspected") or aes)]:
            long = (int(max(rcfg.steps)) if type(method) is LatentTracer and name in rcfg.steps_inspected
                    else None)
            scoring = method
            if long:  # as the study: one long run, cut to the configured steps
                scoring = LatentTracer(dataclasses.replace(method.config, steps=long))
            settings_ = getattr(scoring, "config", None)
            if isinstance(settings_, InversionConfig) and settings_.lr_scale != "absolute":
                scoring = type(scoring).from_settings(rctx.resolved(aes[name], settings_))
            images = protocol.grid_images(chosen, name)
            rows, lack = stored_rows(store, aes[name], images, scoring, options)
            if long and long > method.config.steps and len(rows):
                rows = protocol.truncate(rows, method.config.steps, method.config.strategy)
            frames.append(rows.assign(inspected=name))
            lacking, total = lacking + lack, total + len(images)
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        where = (f"results store {shown(store.root)} ({rcfg.suite.name} sets {folder.name}, {total - lacking} of "
                 f"{total} grid images stored)")
        if frame.empty or total == lacking:
            continue
        if "reason" not in frame.columns:
            frame["reason"] = ""
        rows = normalise(frame, where, method.label)
        if len(rows):
            dom.frames[method.label], dom.sources[method.label] = rows, where
    if not dom.frames:
        dom.missing = f"the results store holds none of the configured sets' scores ({shown(folder)})"
    return dom


def overlap_notes(frames: dict[str, pd.DataFrame], reference: str = "latenttracer") -> list[str]:
    """Where a method scored other image bytes than ``reference`` (sha256 differs), how many evaluation images the
    two share: the findings pair only those."""
    if reference not in frames:
        return []
    ref = set(map(tuple, frames[reference][KEY].to_numpy()))
    notes = []
    for label, frame in frames.items():
        keys = set(map(tuple, frame[frame["inspected"].isin(frames[reference]["inspected"])][KEY].to_numpy()))
        if label != reference and keys - ref:
            notes.append(f"`{label}` and `{reference}` share {len(keys & ref)} of {len(ref)} of `{reference}`'s "
                         f"evaluation (inspected, image) pairs by sha256 ({len(keys)} scored by `{label}`); the "
                         "findings pair only the shared ones")
    return notes


def read_domain(entry: Any, ctx: Context) -> Domain:
    kind = str(entry.kind)
    if kind not in KINDS:
        raise ValueError(f"domains: {entry.name!r} has kind {kind!r}, not one of {list(KINDS)}")
    dom = table1_domain(entry) if kind == "table1" else real_decoder_domain(entry, ctx)
    dom.notes += overlap_notes(dom.frames)
    return dom


# -- the table and the page -------------------------------------------------------------------------------------
def transfer_table(methods: list[str], domains: list[Domain], commands: dict[str, str]) -> pd.DataFrame:
    rows = []
    for dom in domains:
        for m in methods:
            if m in dom.frames:
                rows.append(method_row(m, dom.name, dom.frames[m], dom.models, dom.sources[m]))
            else:
                why = dom.missing or f"`{m}` has no stored scores in {dom.name}"
                run = f"run `{commands[dom.name]}`"
                if dom.configured is not None and m not in dom.configured:
                    why, run = f"`{m}` is not among the methods {dom.name}'s config runs", \
                        f"add it to that config's `methods`, then run `{commands[dom.name]}`"
                rows.append(not_run_row(m, dom.name, f"{why}; {run}"))
    return pd.DataFrame(rows, columns=COLUMNS)


def _hardest_cell(r: pd.Series) -> str:
    if r["status"] != "ok" or not r["hardest_inspected"]:
        return "–"
    return f"{r['hardest_inspected']} vs {r['hardest_source']}: {tables.fmt_metric(r, 'auc_hardest')}"


def markdown(table: pd.DataFrame, findings: pd.DataFrame, domains: list[Domain], entries: list[Any]) -> str:
    names = [d.name for d in domains]
    lines = ["# What transfers: the zoo's findings on real models", "",
             "Every number is read from per-image scores earlier runs stored; this page computes no score. "
             "Evaluation images only. **Pooled AUC**: each inspected model's own evaluation images (belonging) "
             "against everything else it inspects (every other source's evaluation images and the real crops, "
             "Table 1's `all` cell), every inspected model's pairs pooled into one set. Scores of different "
             "inspected models are pooled as they are, so a pooled AUC also asks whether one threshold serves "
             "every model. **Hardest pair**: the (inspected, source) cell with the lowest AUC, source another model "
             "of the domain (not the real crops). Intervals: 95%, DeLong (latenttracer.intervals.auc_interval).", ""]
    lines += ["## Where each domain's scores come from", ""]
    for dom, entry in zip(domains, entries):
        head = f"- **{dom.name}**" + (f" ({entry.about})" if entry.about else "") + ": "
        if dom.missing:
            lines.append(head + f"not run ({dom.missing}); `{entry.command}` produces them.")
            continue
        lines.append(head + "; ".join(f"`{m}` from {src}" for m, src in dom.sources.items()) + ".")
        lines += [f"  - {n}" for n in dom.notes]
    lines += ["", "## Pooled AUC [95%] (belonging + non-belonging images)", ""]
    body = []
    for m in dict.fromkeys(table["method"]):
        cells = []
        for d in names:
            r = table[(table["method"] == m) & (table["domain"] == d)].iloc[0]
            cells.append(f"{tables.fmt_metric(r, 'auc_pooled')} ({int(r['n_belonging'])} + "
                         f"{int(r['n_non_belonging'])})" if r["status"] == "ok" else "not run")
        body.append([m, *cells])
    lines += [tables.markdown_table(body, ["method", *names]), ""]
    lines += ["## Hardest pair [95%] (inspected vs source)", ""]
    body = [[m, *(_hardest_cell(table[(table["method"] == m) & (table["domain"] == d)].iloc[0]) for d in names)]
            for m in dict.fromkeys(table["method"])]
    lines += [tables.markdown_table(body, ["method", *names]), ""]
    lines += ["## Which zoo findings hold", "",
              "Each claim is the difference AUC(a) - AUC(b) on the images both methods scored (paired by inspected "
              "model, source and sha256; DeLong's paired interval, latenttracer.intervals.auc_difference), or "
              "AUC(a) - 0.5 against chance; `hardest` scope: the cell of the domain's hardest pair for the named "
              "method. It holds where the 95% interval lies above 0, is reversed where it lies below, and is not "
              "resolved otherwise.", ""]
    for claim, group in findings.groupby("claim", sort=False):
        lines.append(f"- **{claim}**")
        for r in group.itertuples():
            where = f" on {r.inspected} vs {r.source}" if r.scope == "hardest" and r.inspected else ""
            if math.isnan(r.diff):
                lines.append(f"  - {r.domain}: {r.verdict}.")
            else:
                lines.append(f"  - {r.domain}{where}: {r.verdict} (difference {r.diff:+.3f} "
                             f"[{r.diff_lo:+.2f}, {r.diff_hi:+.2f}], n = {r.n_belonging} + {r.n_non_belonging}).")
    not_run = table[table["status"] != "ok"]
    if len(not_run):
        lines += ["", "## Not run", "",
                  tables.markdown_table([[r.method, r.domain, r.scores_from] for r in not_run.itertuples()],
                                        ["method", "domain", "why, and the command that produces it"])]
    return "\n".join(lines) + "\n"


@STUDIES.register
class Transfer(Study):
    name = "transfer"
    config = TransferConfig
    section = ReportSection("What transfers (zoo, CelebA VAEs, taef2)", ("transfer.csv", "transfer_findings.csv"),
                            (), "make transfer", order=48)

    def run(self, cfg: Any, ctx: Context) -> StudyResult:
        """The table and the findings; the objective is LatentTracer's mean pooled AUC over the domains run."""
        entries = list(cfg.domains)
        names = [str(e.name) for e in entries]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"transfer: `domains` needs distinct names, got {names}")
        methods = [str(m) for m in cfg.methods]
        if not methods:
            raise ValueError("transfer: `methods` is empty")
        domains = [read_domain(e, ctx) for e in entries]
        table = transfer_table(methods, domains, {str(e.name): str(e.command) for e in entries})
        findings = pd.DataFrame([finding_row(f, d.name, d.frames, d.models) for f in cfg.findings for d in domains])
        if findings.empty:
            findings = pd.DataFrame(columns=["claim", "domain", "verdict"])
        lt = table[(table["method"] == "latenttracer") & (table["status"] == "ok")]
        return StudyResult(table, objective=float(lt["auc_pooled"].mean()) if len(lt) else math.nan,
                           stem=Path(cfg.out), markdown=markdown(table, findings, domains, entries),
                           tables={"": table, "_findings": findings},
                           log_tables={"transfer": table, "transfer_findings": findings})
