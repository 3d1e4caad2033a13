"""What every study shares: the registry, the :class:`Study` interface, its result and how a result is published.

A study (robustness, drift, ...) is a :class:`Study` subclass registered with ``@STUDIES.register`` in its own
module of this package (or in a plugin file, see :mod:`latenttracer.registry`). It declares

* ``name``: the study's name, which is also the name of its config (``conf/<name>.yaml``) and of its entry point
  (``python -m experiments.study --config-name <name>``);
* ``config``: a dataclass of the study's own config keys (types and defaults). The config layer adds the keys
  every job shares (``suite``, ``inversion``, ``paths``...) and validates every YAML against the result;
* ``section``: what the HTML report shows for it (:class:`ReportSection`), or ``None``;
* ``run(cfg, ctx)``: the work. ``cfg`` is the composed job config (the shared keys plus ``config``'s), ``ctx`` a
  :class:`Context`: the job's settings turned into library objects (image sets, models, methods, the results
  store). It returns a :class:`StudyResult`; :func:`publish` writes it (tables, figures, files, tracker).

docs/extending_studies.md adds a study step by step.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pandas as pd
from omegaconf import MISSING

from latenttracer import atomic, tables
from latenttracer.locks import locked
from latenttracer.registry import Registry

__all__ = ["STUDIES", "Context", "FigureOut", "Merge", "MethodEntry", "OtherSetsError", "ReportSection", "Study",
           "StudyResult", "check_sets", "publish"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportSection:
    """A study's section of the HTML report (``make report``): the CSV tables it reads from the results folder,
    the figure globs it shows from the figures folder, and the command that produces them (said when missing).
    Sections are shown in ``order``."""

    title: str
    tables: tuple[str, ...]
    figures: tuple[str, ...]
    command: str
    order: float = 100.0


@dataclass
class MethodEntry:
    """One method of a study's ``methods:`` list: a name of :mod:`latenttracer.methods` and its options (checked
    by the method; ``latenttracer`` takes none: its settings are the ``inversion`` node). ``n_belonging`` /
    ``n_per_source``: evaluation images per cell (a seeded subset; null: all of them)."""

    name: str = MISSING
    options: dict[str, Any] = field(default_factory=dict)
    n_belonging: int | None = None
    n_per_source: int | None = None


@dataclass
class FigureOut:
    """A figure to save at each of ``stems`` (one file per format); ``log_key``: logged to the tracker as such."""

    figure: Any
    stems: Sequence[Path]
    formats: Sequence[str] = ("png", "pdf")
    log_key: str | None = None


@dataclass(frozen=True)
class Merge:
    """Publish a result's tables by merging them into the CSVs already at its ``stem`` (for the jobs of a multirun,
    which write one table concurrently): under a lock on ``<stem>.lock``, each table's rows replace the rows with
    the same ``key`` and the others are kept (:func:`latenttracer.tables.upsert_csv`); ``sort``: the merged tables
    are then sorted by ``key``. ``render`` turns the merged main table (suffix ``""``) into the published Markdown.

    ``sets``: what decides the image sets the rows were measured on (e.g. :meth:`Context.protocol`). The key columns
    do not name the sets, so rows of other sets would otherwise replace or sit beside each other unseen: the sets
    are recorded in ``<stem>.sets.json`` and a result on other sets is refused (:func:`check_sets`).
    ``label``: a table whose key names the sets (a key column holding ``label``) records one entry per label
    (``{label: sets}``), so rows of several suites sit side by side; only this label's entry is checked."""

    key: tuple[str, ...]
    render: Callable[[pd.DataFrame], str]
    sort: bool = False
    sets: dict[str, Any] | None = None
    label: str | None = None


@dataclass
class StudyResult:
    """What a study's run produced; :func:`publish` writes it.

    ``frame``: the main result (returned to callers). ``objective``: what the entry point returns (for Hydra
    sweepers). ``stem``: where the tables are published: ``<stem>.md`` (``markdown``), ``<stem><suffix>.csv``
    for each ``tables`` entry and ``<stem>.tex`` (``latex``, when given), both in the job's output directory and at
    ``stem``. ``files``: other frames written atomically (``.csv`` or ``.parquet``). ``metrics``, ``log_tables``:
    for the tracker. ``markdown`` is printed. ``merge``: the tables are merged into the published CSVs instead of
    replacing them, and the Markdown is rendered from the merged table (:class:`Merge`; ``markdown`` is then unused).
    """

    frame: pd.DataFrame
    objective: float = math.nan
    stem: Path | None = None
    markdown: str = ""
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    latex: str | None = None
    figures: list[FigureOut] = field(default_factory=list)
    files: dict[Path, pd.DataFrame] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    log_tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    merge: Merge | None = None


class Context(Protocol):
    """The job's settings as library objects, given to :meth:`Study.run` by the config layer
    (``experiments.common.Context`` for the Hydra entry points)."""

    cfg: Any
    output_dir: Path

    def store(self): ...                                        # the shared results store (ResultStore)
    def image_sets(self) -> dict: ...                           # every set of the suite, split (protocol.ImageSets)
    def inspected_models(self) -> list[str]: ...                # cfg.inspected, checked (null: every model)
    def model_spec(self, name: str): ...                        # suite model ``name`` (data_gen.sets.ModelSpec)
    def load_model(self, spec): ...                             # its Autoencoder on the job's device
    def method(self, entry: Any = None, dtype: str = "float32"): ...  # cfg.method, or a ``methods:`` entry
    def method_preset(self) -> str: ...                         # the name of the ``method/`` preset of this job
    def score_paths(self, ae, paths, method, *, store) -> pd.DataFrame: ...  # one row per path (path, score, status)
    def method_scorer(self): ...                                # cfg.method as a protocol.Scorer on the store
    def image_options(self): ...                                # images.ImageOptions of the job
    def inversion_config(self, dtype: str = "float32", **changes): ...  # cfg.inversion as an InversionConfig
    def inversion_preset(self) -> str: ...                      # the name of the ``inversion/`` preset of this job
    def preset(self, group: str) -> str | None: ...             # the preset of config group ``group`` (None
                                                                # outside Hydra), e.g. "experiment", "suite"
    def resolved(self, ae, inv, calibration=None): ...          # lr_scale=latent_rms made absolute
    def invert_paths(self, ae, paths, inv, *, trajectory_steps=None) -> pd.DataFrame: ...  # protocol.invert_paths
    def split_settings(self): ...                               # protocol.SplitSettings of the suite
    def protocol(self) -> dict: ...                             # what decides the sets and splits (for notes)
    def generation_settings(self, **changes): ...               # the suite's GenerationSettings, changed
    def generated_set(self, spec, settings) -> list[Path]: ...  # a model's generated set (made if missing)


class Study:
    """Base class of a study; see the module docstring."""

    name: ClassVar[str]
    config: ClassVar[type]
    section: ClassVar[ReportSection | None] = None

    def run(self, cfg: Any, ctx: Context) -> StudyResult:
        raise NotImplementedError


class MergedStudy(Study):
    """A study that merges its rows into ``<out>.csv`` (:class:`Merge`) and records the sets they come from beside
    it: by default the protocol's (:meth:`Context.protocol`); a study of other images overrides
    :meth:`sets_record`."""

    def sets_record(self, cfg: Any, ctx: Context) -> dict[str, Any]:
        """What decides the rows' images, recorded beside the merged table (:class:`Merge` ``sets``)."""
        return ctx.protocol()

    def sets_label(self, cfg: Any, ctx: Context) -> str | None:
        """The label of this run's sets when the table's key names them (:class:`Merge` ``label``), else None."""
        return None

    def checked_sets_record(self, cfg: Any, ctx: Context) -> dict[str, Any]:
        """:meth:`sets_record`, checked against the table at ``out=`` (:func:`check_sets`): a run on other sets
        fails before any work."""
        record = self.sets_record(cfg, ctx)
        check_sets(Path(cfg.out), record, self.sets_label(cfg, ctx))
        return record


STUDIES: Registry[type[Study]] = Registry("study", "latenttracer.studies")


def publish(result: StudyResult, job_dir: Path, tracker: Any = None) -> list[Path]:
    """Write ``result`` (see :class:`StudyResult`) atomically, print its Markdown and log it to ``tracker``."""
    written: list[Path] = []
    markdown = result.markdown
    if result.stem is not None:
        stem = Path(result.stem)
        if result.merge is None:
            written += tables.publish(stem, job_dir, markdown, result.tables)
        else:
            with locked(stem.with_name(stem.name + ".lock")):
                if result.merge.sets is not None:
                    label = result.merge.label
                    try:
                        check_sets(stem, result.merge.sets, label)
                    except OtherSetsError as err:  # keep this job's rows, unmerged, in its own folder
                        kept = [atomic.write_frame(frame, Path(job_dir) / f"{stem.name}{suffix}.csv")
                                for suffix, frame in result.tables.items()]
                        raise OtherSetsError(f"{err}; this run's rows are kept unmerged in {kept[0]}") from None
                    record = (result.merge.sets if label is None
                              else {**_keyed(_recorded(stem), label), label: result.merge.sets})
                    written.append(atomic.write_text(sets_path(stem), _sets_text(record)))
                merged = {suffix: _merged(stem.with_name(stem.name + suffix + ".csv"), frame, result.merge)
                          for suffix, frame in result.tables.items()}
                markdown = result.merge.render(merged[""])
                written += tables.publish(stem, job_dir, markdown, merged)
        if result.latex is not None:
            for target in (Path(job_dir) / stem.name, stem):
                written.append(atomic.write_text(target.with_name(target.name + ".tex"), result.latex))
    for path, frame in result.files.items():
        written.append(atomic.write_frame(frame, path))
    images = {}
    for fig in result.figures:
        for i, stem in enumerate(fig.stems):
            saved = tables.save_figure(fig.figure, stem, list(fig.formats))
            written += saved
            if i == 0 and fig.log_key and saved and saved[0].suffix == ".png":
                images[fig.log_key] = saved[0]
    if markdown:
        print(markdown, flush=True)
    if tracker is not None:
        if result.metrics:
            tracker.log_metrics(result.metrics)
        for key, frame in result.log_tables.items():
            tracker.log_table(key, frame)
        if images:
            tracker.log_images(images)
    return written


class OtherSetsError(ValueError):
    """A merged table's rows were measured on other image sets than the result about to be merged into it."""


def sets_path(stem: str | Path) -> Path:
    """Where the image sets of the rows merged at ``stem`` are recorded: ``<stem>.sets.json``."""
    stem = Path(stem)
    return stem.with_name(stem.name + ".sets.json")


def _sets_text(sets: dict[str, Any]) -> str:
    return json.dumps(sets, indent=1, sort_keys=True, default=str) + "\n"


def _recorded(stem: Path) -> dict[str, Any]:
    """The sets record at ``stem`` (``{}`` when there is none); an unreadable one is an :class:`OtherSetsError`."""
    csv, record = stem.with_name(stem.name + ".csv"), sets_path(stem)
    if not record.is_file():
        return {}
    try:
        return json.loads(record.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise OtherSetsError(f"{record}: unreadable record of the image sets of {csv.name} ({err}); move both "
                             "files away or restore it") from None


def _keyed(record: dict[str, Any], label: str) -> dict[str, Any]:
    """A record as ``{label: sets}`` entries: one written without labels (its values not all mappings) is taken
    as this label's."""
    if not record or all(isinstance(v, dict) for v in record.values()):
        return record
    return {label: record}


def check_sets(stem: str | Path, sets: dict[str, Any], label: str | None = None) -> None:
    """Refuse to merge rows measured on image sets ``sets`` into the table at ``stem`` when its rows were measured
    on other sets (raises :class:`OtherSetsError` naming the file and each setting that differs). Studies call it
    before their work too, so that a wrong ``out=`` fails at once. A table published before the sets were
    recorded (a CSV without ``<stem>.sets.json``) is taken as being on these sets, with a warning. ``label``: the
    record holds one entry per label (:class:`Merge` ``label``) and only this label's entry is compared."""
    stem = Path(stem)
    csv, record = stem.with_name(stem.name + ".csv"), sets_path(stem)
    if not record.is_file():
        if csv.is_file():
            log.warning("%s: no record of the image sets its rows were measured on (%s); taking them to be this "
                        "run's sets and recording them", csv, record.name)
        return
    old = _recorded(stem)
    if label is not None:
        if label not in (old := _keyed(old, label)):
            return
        old = old[label]
    new = json.loads(_sets_text(sets))
    differ = [f"{k}: {old.get(k)!r} there, {new.get(k)!r} in this run" for k in sorted(set(old) | set(new))
              if old.get(k) != new.get(k)]
    if differ:
        where = f"sets {label!r} " if label is not None else ""
        raise OtherSetsError(f"{csv}: its rows were measured on other image sets ({where}{'; '.join(differ)}; "
                             f"recorded in {record.name}); publish to another out= or move {csv.name} and "
                             f"{record.name} away")


def _merged(path: Path, rows: pd.DataFrame, merge: Merge) -> pd.DataFrame:
    """``rows`` merged into the CSV at ``path`` (written); sorted by the key when ``merge.sort``."""
    table = tables.upsert_csv(path, rows, list(merge.key))
    return table.sort_values(list(merge.key)).reset_index(drop=True) if merge.sort else table
