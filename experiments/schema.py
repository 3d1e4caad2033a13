"""Schemas of every config under ``conf/``: Hydra structured configs, registered in the ConfigStore.

Each top-level config (``table1``, ``invert``, ``ablations``, ``figures``, ``generate``, ``html_report`` and one per
study) lists its schema first in its defaults (``- table1_schema``), so the composed config is typed from the start
and every YAML merged into it (``base``, ``paths/*``, ``suite/*`` with its ``model/*``, ``inversion/*``,
``logger/*``, ``experiment/*``, ``debug/*``) is checked as it is merged: an unknown or mistyped key fails at
compose time with Hydra's message naming the YAML (``In 'suite/zoo': ... Key 'nn' not in 'GenerationSettings'``) and
the key (``full_key: suite.generated.nn``); a wrong type likewise. Command-line overrides are checked against the
same schema.

A study's schema is :class:`BaseSchema` plus the ``config`` dataclass the study registers with
(:mod:`latenttracer.studies`): adding a study edits nothing here. To add a config group (e.g. ``method/``): write
its dataclass here and add a field for it to :class:`BaseSchema` (or to one entry point's schema); its YAMLs are
then validated like the others. Importing this module registers the schemas (every entry point does).
"""

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Literal, Union

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from data_gen.sets import GenerationSettings, ModelSpec, RealSettings
from latenttracer.images import ImageOptions
from latenttracer.inversion import InversionConfig
from latenttracer.protocol import SplitSettings

_DERIVED: dict[tuple[type, tuple[str, ...]], type] = {}


def _config_type(tp: Any) -> Any:
    """A library field type as a type OmegaConf can check: ``Literal`` -> its values' type, ``str | Path`` ->
    ``str``, ``int | Literal["auto"]`` -> ``Union[int, str]``, a mapping -> ``dict[str, Any]``, a dataclass -> its
    derived schema."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return structured(tp)
    if origin is Literal:
        kinds = {type(v) for v in typing.get_args(tp)}
        return kinds.pop() if len(kinds) == 1 else Any
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        parts = []
        for a in args:
            t = str if a is Path else _config_type(a)
            if t not in parts:
                parts.append(t)
        if Any in parts:
            return Any
        inner = parts[0] if len(parts) == 1 else Union[tuple(parts)]  # noqa: UP007
        return inner | None if optional else inner
    if origin is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return list[_config_type(args[0])] if len(set(args)) == 1 else list[Any]
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        return dict[str, Any]
    if tp is Path:
        return str
    return tp


def structured(cls: type, exclude: tuple[str, ...] = ()) -> type:
    """The Hydra schema of a library settings dataclass, derived from it: the same field names, defaults and
    (checkable) types, and the same class name, so Hydra's message names it (``Key 'nn' not in
    'GenerationSettings'``). A field without a default is required (``MISSING``). The library dataclass stays the
    one definition of each setting; its ``__post_init__`` checks values when the job builds it. ``exclude``: fields
    set elsewhere (not keys of this node)."""
    if (cls, exclude) in _DERIVED:
        return _DERIVED[(cls, exclude)]
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        tp = _config_type(hints[f.name])
        if f.default is not dataclasses.MISSING:
            default = f.default
            if dataclasses.is_dataclass(default):
                specs.append((f.name, tp, field(default_factory=lambda d=default: structured(type(d))(
                    **dataclasses.asdict(d)))))
                continue
            specs.append((f.name, tp, field(default=default)))
        elif f.default_factory is not dataclasses.MISSING:
            specs.append((f.name, tp, field(default_factory=f.default_factory)))
        else:
            specs.append((f.name, tp, field(default=MISSING)))
    derived = dataclasses.make_dataclass(cls.__name__, specs)
    # Hydra's messages use the class name (the library's); pickling (joblib/submitit launchers) looks the class up
    # by its qualified name in this module, where the library class of the same name is imported too.
    derived.__module__ = __name__
    derived.__qualname__ = f"{cls.__name__}Schema" + "".join(f"_no_{x}" for x in exclude)
    globals()[derived.__qualname__] = derived
    derived.__doc__ = f"Schema derived from :class:`{cls.__module__}.{cls.__qualname__}`."
    _DERIVED[(cls, exclude)] = derived
    return derived


@dataclass
class PathsSchema:
    root_dir: str = MISSING
    zoo_dir: str = MISSING
    data_dir: str = MISSING
    cache_dir: str = MISSING
    results_dir: str = MISSING
    output_dir: str = MISSING


ModelSchema = structured(ModelSpec)            # conf/model/*.yaml
GeneratedSchema = structured(GenerationSettings)   # suite.generated
SplitSchema = structured(SplitSettings)        # suite.split
RealSchema = structured(RealSettings)          # suite.real (and its crops)
# conf/inversion/*.yaml; the device is the job's (top-level ``device``), the dtype the model's, and the recording
# flags are the method's: none of them is a key of this node.
InversionSchema = structured(InversionConfig, exclude=("device", "dtype", "record_trajectory", "record_latent"))


@dataclass
class SuiteSchema:
    name: str = MISSING
    models: dict[str, ModelSchema] = field(default_factory=dict)  # type: ignore[valid-type]
    generated: GeneratedSchema = field(default_factory=GeneratedSchema)  # type: ignore[valid-type]
    split: SplitSchema = field(default_factory=SplitSchema)  # type: ignore[valid-type]
    real: RealSchema = field(default_factory=RealSchema)  # type: ignore[valid-type]


@dataclass
class LoggerSchema:
    backend: str = MISSING
    project: str | None = None
    entity: str | None = None
    mode: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    dir: str | None = None


ImageOptionsSchema = structured(ImageOptions)  # image_options


@dataclass
class OutputsSchema:
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
    compare: bool = False  # part of `make compare-methods` (the Makefile lists the presets that say true)


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
    outputs: OutputsSchema = field(default_factory=OutputsSchema)


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
                "figures": FiguresSchema, "generate": GenerateSchema, "html_report": HtmlReportSchema}


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
