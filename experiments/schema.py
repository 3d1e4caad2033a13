"""Schemas of every config under ``conf/``: Hydra structured configs, registered in the ConfigStore.

Each top-level config (``table1``, ``invert``, ``ablations``, ``figures``, ``generate``) lists its schema first in
its defaults (``- table1_schema``), so the composed config is typed from the start and every YAML merged into it
(``base``, ``paths/*``, ``suite/*`` with its ``model/*``, ``inversion/*``, ``logger/*``, ``experiment/*``,
``debug/*``) is checked as it is merged: an unknown or mistyped key fails at compose time with Hydra's message
naming the YAML (``In 'suite/zoo': ... Key 'nn' not in 'GeneratedSchema'``) and the key (``full_key:
suite.generated.nn``); a wrong type likewise. Command-line overrides are checked against the same schema.

To add a config group (e.g. ``method/``): write its dataclass here and add a field for it to :class:`BaseSchema`
(or to one entry point's schema); its YAMLs are then validated like the others. Importing this module registers
the schemas (every entry point does).
"""

from dataclasses import dataclass, field
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
class MethodsSchema(BaseSchema):
    inspected: list[str] | None = None
    aggregate: bool = False


@dataclass
class AttributionSchema(BaseSchema):
    normalisation: str = "ratio"
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])


@dataclass
class PerturbationGridSchema:
    """``conf/perturbation/*.yaml``: a named list of conditions, each ``kind:strength`` (``jpeg:90``), checked by
    :func:`latenttracer.perturbations.parse_grid` when the job starts (an unknown kind or a bad strength is an
    error naming it)."""

    name: str = MISSING
    conditions: list[str] = field(default_factory=list)


@dataclass
class MethodEntrySchema:
    """One method of a ``methods:`` list: a name of :mod:`latenttracer.methods` and its options (checked by the
    method; ``latenttracer`` takes none: its settings are the ``inversion`` node). ``n_belonging`` /
    ``n_per_source``: evaluation images per cell (a seeded subset; null: all of them)."""

    name: str = MISSING
    options: dict[str, Any] = field(default_factory=dict)
    n_belonging: int | None = None
    n_per_source: int | None = None


@dataclass
class RobustnessSchema(BaseSchema):
    inspected: list[str] | None = None
    perturbation: PerturbationGridSchema = field(default_factory=PerturbationGridSchema)
    methods: list[MethodEntrySchema] = field(default_factory=list)
    subset_seed: int = 0
    perturbed_dir: str = MISSING
    out: str = MISSING
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])


@dataclass
class DriftSchema(BaseSchema):
    base: str = "kl-a"
    steps: list[int] = field(default_factory=list)
    seed: int = 2
    n: int = 100
    methods: list[MethodEntrySchema] = field(default_factory=list)
    dir: str = MISSING
    out: str = MISSING
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])
    finetune: dict[str, Any] = field(default_factory=dict)  # TAESD bases: data_gen.taesd_finetune.FinetuneRecipe


@dataclass
class RealDecoderMethodSchema(MethodEntrySchema):
    inspected: list[str] | None = None   # null: the base and its sibling


@dataclass
class ResolutionSchema:
    size: int = MISSING
    n: int = MISSING
    n_real: int = MISSING
    methods: list[str] = field(default_factory=lambda: ["latenttracer"])


@dataclass
class RealDecoderSchema(BaseSchema):
    base: str = "taef2"
    sibling_steps: int = 300
    finetune: dict[str, Any] = field(default_factory=dict)
    sets: dict[str, Any] = field(default_factory=dict)
    methods: list[RealDecoderMethodSchema] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    steps_inspected: list[str] = field(default_factory=list)
    resolutions: list[ResolutionSchema] = field(default_factory=list)
    dir: str = MISSING
    out: str = MISSING
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])


@dataclass
class ComplexitySchema(BaseSchema):
    scores: str = MISSING
    out: str = MISSING
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])


@dataclass
class GenerateSchema(BaseSchema):
    images: str | None = None
    overwrite: bool = False


ENTRY_POINTS = {"table1": Table1Schema, "invert": InvertSchema, "ablations": AblationsSchema,
                "figures": FiguresSchema, "generate": GenerateSchema, "report": HtmlReportSchema,
                "methods": MethodsSchema, "attribution": AttributionSchema,
                "robustness": RobustnessSchema, "drift": DriftSchema, "complexity": ComplexitySchema,
                "real_decoder": RealDecoderSchema}


def register() -> None:
    """Store every entry point's schema as ``<entry point>_schema`` (idempotent)."""
    store = ConfigStore.instance()
    for name, node in ENTRY_POINTS.items():
        store.store(name=f"{name}_schema", node=node)


register()
