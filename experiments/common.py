"""Hydra glue shared by the entry points: a composed config -> the typed objects the library and data_gen take.

The protocol itself (splits, the grid, truncation, cells) is :mod:`latenttracer.protocol`; the image sets are made
by :mod:`data_gen.sets`; the schemas of the configs are :mod:`experiments.schema`. What is left here: reading
``cfg`` into those typed objects, the named image sets an ``invert`` job can ask for, the scorers on the
shared results store (``cfg.store``) and the tracker's run name. Two pairs of scorers, named by what they run:
:func:`invert_paths` / :func:`inversion_scorer` run LatentTracer's inversion with the ``inversion`` node
(Table 1, ablations: optional trajectory steps, bad-image policy); :func:`score_paths` / :func:`method_scorer`
run any method (``cfg.method``; LatentTracer among them, through the same inversion path).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

import data_gen.sets as data_sets
from data_gen.sets import GenerationSettings, ModelSpec, RealSettings
from experiments import schema  # noqa: F401  (registers the config schemas)
from latenttracer import protocol as proto
from latenttracer import provenance
from latenttracer.autoencoders import Autoencoder, load_autoencoder
from latenttracer.images import ImageOptions, list_images, load_images
from latenttracer.inversion import InversionConfig, resolve_lr_scale
from latenttracer.methods import LatentTracer, Method, get_method
from latenttracer.store import ResultStore
from latenttracer.tracing import score_images
from latenttracer.tracking import Tracker, start_run

log = logging.getLogger(__name__)


# -- configuration -> typed objects -----------------------------------------------------------------------------
def plain(node: Any) -> Any:
    """A config node as plain, resolved Python data (dicts, lists, scalars)."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def setup(cfg: DictConfig) -> Path:
    """Apply ``threads`` and return the job's output directory (created)."""
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def inversion_config(cfg: DictConfig, dtype: str = "float32", **changes: Any) -> InversionConfig:
    """``cfg.inversion`` (plus the job's device and the model's dtype) as a validated :class:`InversionConfig`."""
    values = {**plain(cfg.inversion), "device": str(cfg.device), "dtype": str(dtype), **changes}
    return InversionConfig.from_dict(values)


def image_options(cfg: DictConfig) -> ImageOptions:
    return ImageOptions(**plain(cfg.image_options))


def split_settings(cfg: DictConfig) -> proto.SplitSettings:
    return proto.SplitSettings(**plain(cfg.suite.split))


def generation_settings(cfg: DictConfig) -> GenerationSettings:
    return GenerationSettings.from_dict(plain(cfg.suite.generated))


def real_settings(cfg: DictConfig) -> RealSettings:
    return RealSettings.from_dict(plain(cfg.suite.real))


def model_config(cfg: DictConfig, name: str) -> DictConfig:
    models = cfg.suite.models
    if name not in models:
        raise KeyError(f"suite.models: no model {name!r} in suite {cfg.suite.name!r} (models: {list(models)})")
    return models[name]


def model_spec(cfg: DictConfig, name: str) -> ModelSpec:
    """Model ``name`` of the suite as a :class:`data_gen.sets.ModelSpec`."""
    return ModelSpec.from_dict(plain(model_config(cfg, name)))


def inspected_models(cfg: DictConfig) -> list[str]:
    """``cfg.inspected`` (null: every model of the suite), each checked against ``suite.models``."""
    names = list(cfg.inspected) if cfg.get("inspected") else list(cfg.suite.models)
    for name in names:
        model_config(cfg, name)
    return names


def protocol(cfg: DictConfig) -> dict:
    """What decides the sets and splits (not the inversion): recorded beside ablation rows and in table notes."""
    suite = cfg.suite
    return {"suite": suite.name, "n_generated": int(suite.generated.n), "generation_seed": int(suite.generated.seed),
            "calibration_fraction": float(suite.split.calibration_fraction), "split_seed": int(suite.split.seed),
            "target_tpr": float(suite.split.target_tpr), "real_kind": suite.real.origin, "n_real": int(suite.real.n),
            "real_seed": int(suite.real.seed), "resize": cfg.image_options.resize,
            "real_crops": (f"{int(suite.real.crops.n)} crops of {int(suite.real.crops.size)}px, seed "
                           f"{int(suite.real.crops.seed)}" if suite.real.origin == "crops" else "")}


def protocol_hash(cfg: DictConfig) -> str:
    return hashlib.sha256(json.dumps(protocol(cfg), sort_keys=True).encode()).hexdigest()[:12]


# -- image sets -------------------------------------------------------------------------------------------------
def generated_set(cfg: DictConfig, name: str) -> list[Path]:
    """The first ``suite.generated.n`` images of model ``name``'s set, generating what is missing."""
    return data_sets.generated_set(model_spec(cfg, name), generation_settings(cfg), device=str(cfg.device),
                                        progress=bool(cfg.progress))


def real_set(cfg: DictConfig) -> list[Path]:
    return data_sets.real_set(real_settings(cfg))


def image_sets(cfg: DictConfig) -> dict[str, dict[str, list[Path]]]:
    """Every set of the suite, made if missing: {model: {"calibration": [...], "evaluation": [...]},
    "real": {"evaluation": [...]}}."""
    settings = split_settings(cfg)
    sets = {name: proto.split(generated_set(cfg, name), settings) for name in cfg.suite.models}
    sets[proto.REAL] = {"evaluation": real_set(cfg)}
    return sets


def named_images(cfg: DictConfig, images: str, split: str = "all", inspected: str | None = None,
                 recursive: bool = False) -> pd.DataFrame:
    """The image set an ``invert`` job names: a suite model, ``real``, ``table1`` or a directory."""
    if split not in ("all", *proto.SPLITS):
        raise ValueError(f"split: {split!r} is not one of ['all', 'calibration', 'evaluation']")
    images = str(images)
    if images == "table1":
        if inspected is None or inspected not in cfg.suite.models:
            raise ValueError(f"images=table1 needs the inspected model to be in suite {cfg.suite.name!r} "
                             f"(models: {list(cfg.suite.models)}), got {inspected!r}")
        frame = proto.grid_images(image_sets(cfg), inspected)
    elif images in cfg.suite.models:
        frame = proto.set_rows(images, proto.split(generated_set(cfg, images), split_settings(cfg)))
    elif images == proto.REAL:
        frame = proto.set_rows(proto.REAL, {"evaluation": real_set(cfg)})
    elif Path(images).is_dir():
        return proto.image_rows(Path(images).name, "all", list_images(images, recursive=recursive))
    else:
        raise ValueError(f"images: {images!r} is not a model of suite {cfg.suite.name!r} "
                         f"({list(cfg.suite.models)}), 'real', 'table1', or an existing directory")
    return frame if split == "all" else frame[frame["split"] == split].reset_index(drop=True)


# -- scoring ----------------------------------------------------------------------------------------------------
def load_model(cfg: DictConfig, model: DictConfig | ModelSpec) -> Autoencoder:
    """The inspected model's autoencoder (on ``cfg.device``)."""
    spec = model if isinstance(model, ModelSpec) else ModelSpec.from_dict(plain(model))
    return load_autoencoder(str(spec.weights), name=str(spec.name), resolution=spec.resolution,
                            device=str(cfg.device), dtype=str(spec.dtype))


def resolved(cfg: DictConfig, ae: Autoencoder, inv: InversionConfig,
             calibration: Sequence[str | Path] | None = None) -> InversionConfig:
    """``inv`` with an absolute rate: ``inversion.lr_scale=latent_rms`` is resolved on the inspected model's own
    calibration images (:func:`latenttracer.inversion.resolve_lr_scale`): ``calibration`` when a study builds its
    own sets, else the model's calibration half of the suite."""
    if inv.lr_scale == "absolute":
        return inv
    if calibration is not None:
        paths = list(calibration)
    elif ae.name not in cfg.suite.models:
        raise ValueError(f"inversion.lr_scale={inv.lr_scale!r}: the rate is set from the inspected model's own "
                         f"calibration images, and {ae.name!r} is not a model of suite {cfg.suite.name!r}")
    else:
        paths = proto.split(generated_set(cfg, ae.name), split_settings(cfg))["calibration"]
    images, _, _ = load_images([str(p) for p in paths], ae.resolution, image_options(cfg))
    out = resolve_lr_scale(inv, ae, images)
    log.info("%s: inversion.lr_scale=%s -> lr %.4g (%d calibration images)", ae.name, inv.lr_scale, out.lr,
             len(paths))
    return out


_STORES: dict[str, ResultStore] = {}


def result_store(cfg: DictConfig) -> ResultStore:
    """The job's results store (``cfg.store``), one object per folder in this process: its cache of parsed chunks
    (checked against each chunk's name, size and time on every read) then serves every call instead of each call
    parsing every chunk again."""
    root = str(Path(cfg.store).resolve())
    if root not in _STORES:
        _STORES[root] = ResultStore(root)
    return _STORES[root]


def invert_paths(cfg: DictConfig, ae: Autoencoder, paths: Sequence[str | Path], inv: InversionConfig, *,
          trajectory_steps: int | None = None, on_bad_image: str = "error") -> pd.DataFrame:
    """:func:`latenttracer.protocol.invert_paths` with the job's store, preprocessing and progress setting."""
    inv = resolved(cfg, ae, inv)
    return proto.invert_paths(ae, paths, inv, store=result_store(cfg), image_options=image_options(cfg),
                             trajectory_steps=trajectory_steps, on_bad_image=on_bad_image,
                             progress=bool(cfg.progress))


def inversion_scorer(cfg: DictConfig, trajectory_steps: int | None = None) -> proto.Scorer:
    """LatentTracer as a :data:`latenttracer.protocol.Scorer`: load the inspected model of the suite, invert with
    ``cfg.inversion`` (and the model's dtype) through the shared store."""

    def score_model(name: str, paths: Sequence[str]) -> pd.DataFrame:
        spec = model_spec(cfg, name)
        ae = load_model(cfg, spec)
        return invert_paths(cfg, ae, paths, inversion_config(cfg, dtype=spec.dtype), trajectory_steps=trajectory_steps)

    return score_model


def build_method(cfg: DictConfig, name: str, options: dict, dtype: str, where: str) -> Method:
    """A :class:`~latenttracer.methods.Method` by name and options (on ``cfg.device``, in ``dtype``).

    ``latenttracer`` is :class:`~latenttracer.methods.LatentTracer` with :func:`inversion_config` (its settings are
    the ``inversion`` node, so its scores and cache keys are Table 1's); it takes no options. Any other method gets
    its options (an unknown option is an error naming it) plus the job's device and dtype. ``where`` names the
    config key in error messages.
    """
    if name == "latenttracer":
        if options:
            raise ValueError(f"{where}: latenttracer takes its settings from the `inversion` node "
                             f"(conf/inversion/), not from options {sorted(options)}")
        return LatentTracer(inversion_config(cfg, dtype=dtype))
    try:
        return get_method(name, {**options, "device": str(cfg.device), "dtype": str(dtype)})
    except (TypeError, ValueError, FileNotFoundError) as err:
        raise type(err)(f"{where}: {err}" if repr(name) in where else f"{where}: {name!r}: {err}") from err


def method(cfg: DictConfig, dtype: str = "float32") -> Method:
    """``cfg.method`` (a ``conf/method/`` preset) as a :class:`~latenttracer.methods.Method`."""
    name = str(cfg.method.name)
    return build_method(cfg, name, dict(plain(cfg.method.options) or {}), dtype,
                        f"method {name!r} (conf/method/, key method.options)")


def listed_method(cfg: DictConfig, entry: Any, dtype: str = "float32") -> Method:
    """One entry ``{name, options}`` of a ``methods:`` list (robustness, drift) as a Method."""
    return build_method(cfg, str(entry.name), dict(plain(entry.get("options")) or {}), dtype, "methods")


def _preset(group: str) -> str | None:
    """The preset of config group ``group`` this job was composed with (``None`` outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = OmegaConf.select(HydraConfig.get(), f"runtime.choices.{group}", default=None)
        if choice:
            return str(choice)
    return None


def method_preset(cfg: DictConfig) -> str:
    """The name of the ``method/`` preset this job runs (``ronan``, ``aeroblade_l2``...; the label without Hydra)."""
    return _preset("method") or method(cfg).label.replace("[", "_").replace("]", "")


def inversion_preset() -> str:
    """The name of the ``inversion/`` preset this job runs (``paper``, ``fast_rms``...; ``custom`` without Hydra)."""
    return _preset("inversion") or "custom"


def score_paths(cfg: DictConfig, ae: Autoencoder, paths: Sequence[str | Path], scoring: Method, *,
                 store: ResultStore | None) -> pd.DataFrame:
    """``scoring``'s scores of ``paths`` against ``ae``: one row per path. With a store, through
    :func:`latenttracer.protocol.score_once`, so parallel jobs never compute the same thing twice; LatentTracer goes
    through :func:`latenttracer.protocol.invert_paths` (Table 1's path)."""
    settings = getattr(scoring, "config", None)
    if isinstance(settings, InversionConfig) and settings.lr_scale != "absolute":
        scoring = type(scoring).from_settings(resolved(cfg, ae, settings))
    if type(scoring) is LatentTracer:
        return proto.invert_paths(ae, paths, scoring.config, store=store, image_options=image_options(cfg),
                                 progress=bool(cfg.progress))
    options = image_options(cfg)

    def run(chosen: list[str]) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
        return score_images(ae, chosen, method=scoring, store=store, image_options=options,
                            progress=bool(cfg.progress), desc=f"{scoring.label} {ae.name}")

    chosen = [str(p) for p in paths]
    if store is None:
        return run(chosen)[0]
    return proto.score_once(store.root / ".locks" / f"{ae.name}-{scoring.run_hash(ae, options)}", chosen, run)[0]


def method_scorer(cfg: DictConfig) -> proto.Scorer:
    """``cfg.method`` as a :data:`latenttracer.protocol.Scorer` on the shared store (``cfg.store``)."""

    def score_model(name: str, paths: Sequence[str]) -> pd.DataFrame:
        spec = model_spec(cfg, name)
        return score_paths(cfg, load_model(cfg, spec), paths, method(cfg, dtype=spec.dtype),
                            store=result_store(cfg))

    return score_model


# -- the studies' view of a job ----------------------------------------------------------------------------------
class Context:
    """A job's config as the library objects a study asks for (:class:`latenttracer.studies.Context`)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.output_dir = setup(cfg)

    def store(self) -> ResultStore:
        return result_store(self.cfg)

    def image_sets(self) -> dict[str, dict[str, list[Path]]]:
        return image_sets(self.cfg)

    def inspected_models(self) -> list[str]:
        return inspected_models(self.cfg)

    def model_spec(self, name: str) -> ModelSpec:
        return model_spec(self.cfg, name)

    def load_model(self, spec: ModelSpec) -> Autoencoder:
        return load_model(self.cfg, spec)

    def method(self, entry: Any = None, dtype: str = "float32") -> Method:
        return method(self.cfg, dtype) if entry is None else listed_method(self.cfg, entry, dtype)

    def method_preset(self) -> str:
        return method_preset(self.cfg)

    def score_paths(self, ae: Autoencoder, paths: Sequence[str | Path], scoring: Method, *,
              store: ResultStore | None) -> pd.DataFrame:
        return score_paths(self.cfg, ae, paths, scoring, store=store)

    def method_scorer(self) -> proto.Scorer:
        return method_scorer(self.cfg)

    def image_options(self) -> ImageOptions:
        return image_options(self.cfg)

    def inversion_config(self, dtype: str = "float32", **changes: Any) -> InversionConfig:
        return inversion_config(self.cfg, dtype, **changes)

    def inversion_preset(self) -> str:
        return inversion_preset()

    def preset(self, group: str) -> str | None:
        return _preset(group)

    def resolved(self, ae: Autoencoder, inv: InversionConfig,
                 calibration: Sequence[str | Path] | None = None) -> InversionConfig:
        return resolved(self.cfg, ae, inv, calibration)

    def invert_paths(self, ae: Autoencoder, paths: Sequence[str | Path], inv: InversionConfig, *,
                     trajectory_steps: int | None = None) -> pd.DataFrame:
        return invert_paths(self.cfg, ae, paths, inv, trajectory_steps=trajectory_steps)

    def split_settings(self) -> proto.SplitSettings:
        return split_settings(self.cfg)

    def protocol(self) -> dict:
        return protocol(self.cfg)

    def generation_settings(self, **changes: Any) -> GenerationSettings:
        return GenerationSettings.from_dict({**plain(self.cfg.suite.generated), **changes})

    def generated_set(self, spec: ModelSpec, settings: GenerationSettings) -> list[Path]:
        return data_sets.generated_set(spec, settings, device=str(self.cfg.device), progress=bool(self.cfg.progress))


# -- tracking ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def tracker(cfg: DictConfig, job_type: str) -> Iterator[Tracker]:
    """A tracker for this job (see :mod:`latenttracer.tracking`), named after the job and its overrides.

    The job's wall time is recorded in ``<paths.results_dir>/provenance.json`` when it finishes without error
    (stage ``job_type``, plus ``[overrides]`` when there are any).
    """
    from hydra.core.hydra_config import HydraConfig

    name = stage = job_type
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        num = OmegaConf.select(hydra_cfg, "job.num", default=None)  # set in multiruns only
        if str(hydra_cfg.mode) == "RunMode.MULTIRUN" and num is not None:
            name += f"-{num}"
        if hydra_cfg.job.override_dirname:
            name += f" [{hydra_cfg.job.override_dirname}]"
            stage += f" [{hydra_cfg.job.override_dirname}]"
    run = start_run(plain(cfg.logger), config=plain(cfg), name=name, group=job_type, job_type=job_type)
    with run, provenance.stage(cfg.paths.results_dir, stage, plain(cfg)):
        yield run
