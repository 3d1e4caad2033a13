"""Schemas of every config under ``conf/``: Hydra structured configs, registered in the ConfigStore.

Each top-level config (``table1``, ``invert``, ``ablations``, ``figures``, ``generate``, ``report`` and one per
study) lists its schema first in its defaults (``- table1_schema``), so the composed config is typed from the start
and every YAML merged into it (``base``, ``paths/*``, ``suite/*`` with its ``model/*``, ``inversion/*``,
``logger/*``, ``experiment/*``, ``debug/*``) is checked as it is merged: an unknown or mistyped key fails at
compose time with Hydra's message naming the YAML (``In 'suite/zoo': ... Key 'nn' not in 'GeneratedSchema'``) and
the key (``full_key: suite.generated.nn``); a wrong type likewise. Command-line overrides are checked against the
same schema.

A study's schema is :class:`BaseSchema` plus the ``config`` dataclass the study registers with
(:mod:`latenttracer.studies`): adding a study edits nothing here. To add a config group (e.g. ``method/``): write
its dataclass here and add a field for it to :class:`BaseSchema` (or to one entry point's schema); its YAMLs are
then validated like the others. Importing this module registers the schemas (every entry point does).
"""

from dataclasses import dataclass, field, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class PathsSchema:
    root_dir: str = MISSING
    zoo_dir: str = MISSING
    data_dir: str = MISSING
    cache_dir: str = MISSING
    results_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class ModelSchema:
    name: str = MISSING
    source: str = MISSING
    kind: str = "auto"
    resolution: int | None = None
    dtype: str = "float32"
    generation: dict[str, Any] = field(default_factory=dict)


@dataclass
class GeneratedSchema:
    n: int = MISSING
    seed: int = 0
    batch_size: int = 8
    dir: str = MISSING
    prompts_file: str | None = None


@dataclass
class SplitSchema:
    calibration_fraction: float = 0.5
    seed: int = 0
    target_tpr: float = 0.95


@dataclass
class CropsSchema:
    n: int = 600
    size: int = 32
    seed: int = 0


@dataclass
class RealSchema:
    kind: str = MISSING
    dir: str = MISSING
    n: int = MISSING
    seed: int = 0
    crops: CropsSchema = field(default_factory=CropsSchema)


@dataclass
class SuiteSchema:
    name: str = MISSING
    models: dict[str, ModelSchema] = field(default_factory=dict)
    generated: GeneratedSchema = field(default_factory=GeneratedSchema)
    split: SplitSchema = field(default_factory=SplitSchema)
    real: RealSchema = field(default_factory=RealSchema)


@dataclass
class InversionSchema:
    init: str = MISSING
    lr: float = MISSING
    steps: int = MISSING
    schedule: str = MISSING
    distance: str = MISSING
    strategy: str = MISSING
    batch_size: int = MISSING
    seed: int = 0


@dataclass
class LoggerSchema:
    kind: str = MISSING
    project: str | None = None
    entity: str | None = None
    mode: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    dir: str | None = None


@dataclass
class ImageOptionsSchema:
    resize: str = "native"
    alpha_background: str = "black"


@dataclass
class ReportSchema:
    table1: str = MISSING
    ablations: str = MISSING
    figures: str = MISSING
    methods: str = MISSING
    method_runs: str = MISSING
    attribution: str = MISSING
    metrics: list[str] = field(default_factory=list)


@dataclass
class MethodSchema:
    """``conf/method/*.yaml``: a method of :mod:`latenttracer.methods` by name, with its options (checked by the
    method itself: an unknown option is an error naming it). ``latenttracer`` takes no options here: its settings
    are the ``inversion`` node (one source per setting)."""

    name: str = MISSING
    options: dict[str, Any] = field(default_factory=dict)
    probe: int = 16   # images per inspected model timed by experiments.methods (uncached, after a warm-up)


@dataclass
class BaseSchema:
    """``conf/base.yaml`` and the groups it selects: shared by every entry point."""

    paths: PathsSchema = field(default_factory=PathsSchema)
    suite: SuiteSchema = field(default_factory=SuiteSchema)
    inversion: InversionSchema = field(default_factory=InversionSchema)
    method: MethodSchema = field(default_factory=MethodSchema)
    logger: LoggerSchema = field(default_factory=LoggerSchema)
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    store: str = MISSING
    image_options: ImageOptionsSchema = field(default_factory=ImageOptionsSchema)
    report: ReportSchema = field(default_factory=ReportSchema)


@dataclass
class Table1Schema(BaseSchema):
    inspected: list[str] | None = None
    figures: bool = True


@dataclass
class InvertSchema(BaseSchema):
    model: ModelSchema = field(default_factory=ModelSchema)
    images: str = "table1"
    split: str = "all"
    recursive: bool = False
    on_bad_image: str = "error"
    shards: int = 1
    shard: int = 0


@dataclass
class AblationSchema:
    name: str = "custom"
    trajectory_steps: int | None = None


@dataclass
class AblationsSchema(BaseSchema):
    inspected: list[str] | None = None
    ablation: AblationSchema = field(default_factory=AblationSchema)


@dataclass
class FiguresSchema(BaseSchema):
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])


@dataclass
class HtmlReportSchema(BaseSchema):
    out: str = MISSING
    cases: int = 4
    difference_gain: float = 10.0
    decode: bool = True


@dataclass
class GenerateSchema(BaseSchema):
    images: str | None = None
    overwrite: bool = False


#: The entry points that are not studies (a study's schema comes from its registration, see :func:`schemas`).
CORE_SCHEMAS = {"table1": Table1Schema, "invert": InvertSchema, "ablations": AblationsSchema,
                "figures": FiguresSchema, "generate": GenerateSchema, "report": HtmlReportSchema}


def study_schema(study: type) -> type:
    """The schema of a study's config: :class:`BaseSchema` (the keys every job shares) plus the study's own
    ``config`` dataclass (:class:`latenttracer.studies.Study`)."""
    name = "".join(part.capitalize() for part in study.name.replace("-", "_").split("_")) + "Schema"
    return make_dataclass(name, [], bases=(BaseSchema, study.config))


def schemas() -> dict[str, type]:
    """Every entry point's schema by config name: the core ones and one per registered study (plugins included)."""
    from latenttracer.studies import STUDIES

    return {**CORE_SCHEMAS, **{name: study_schema(study) for name, study in STUDIES.items()}}


def register() -> None:
    """Store every entry point's schema as ``<entry point>_schema`` (idempotent; call it again after loading a
    plugin study)."""
    store = ConfigStore.instance()
    for name, node in schemas().items():
        store.store(name=f"{name}_schema", node=node)


register()
