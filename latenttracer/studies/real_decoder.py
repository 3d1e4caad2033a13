"""A real pretrained decoder (taef2): every method in the Table 1 protocol, the collapse question, steps, resolution.

    python -m experiments.study --config-name real_decoder     # `make real-decoder` (conf/real_decoder.yaml)
    python -m experiments.study --config-name real_decoder debug=default   # a smoke run

Builds the base's fine-tuned sibling (``sibling_steps``; :mod:`data_gen.taesd_finetune`, cached under
``dir/members``), the belonging sets of both decoders and the real crops (:mod:`data_gen.real_decoder`, cached
under ``dir/sets/r<px>-<hash>``), scores the grid with every method of ``methods`` through the results store
(nothing is recomputed on a rerun), and publishes ``<out>.md``, ``<out>.csv`` (one row per method x inspected x
source), ``<out>_steps.csv``, ``<out>_resolution.csv`` and ``<outputs.figures>/<out name>.{png,pdf}``. The cells,
the Markdown and the figure are :mod:`latenttracer.real_decoder`. The drift study's TAESD path
(:mod:`latenttracer.studies.drift`) builds its members and sets with :func:`decoders` and :func:`image_sets`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from data_gen.real_decoder import DecodedSetSettings, build_sets
from data_gen.taesd_finetune import FinetuneRecipe, build_series, member_name
from data_gen.zoo.speed import machine_speed
from latenttracer import protocol
from latenttracer import real_decoder as rd
from latenttracer.methods import LatentTracer
from latenttracer.studies.base import STUDIES, Context, FigureOut, MethodEntry, ReportSection, Study, StudyResult

log = logging.getLogger(__name__)


@dataclass
class RealDecoderMethod(MethodEntry):
    inspected: list[str] | None = None   # null: the base and its sibling


@dataclass
class ResolutionEntry:
    size: int = MISSING                  # px (a multiple of 8)
    n: int = MISSING                     # belonging decodes of the base
    n_real: int = MISSING                # real crops
    methods: list[str] = field(default_factory=lambda: ["latenttracer"])  # labels of `methods`


@dataclass
class DecodedSuiteConfig:
    """The keys that name the real-decoder suite's members and sets (shared by every study that uses them)."""
    base: str = "taef2"                  # the suite's model whose decoder is studied
    sibling_steps: int = 300             # its fine-tuned sibling: the drift recipe run this many steps
    finetune: dict[str, Any] = field(default_factory=dict)  # data_gen.taesd_finetune.FinetuneRecipe overrides
    sets: dict[str, Any] = field(default_factory=dict)      # data_gen.real_decoder.DecodedSetSettings overrides
    dir: str = MISSING                   # members/ and sets/ are cached here


@dataclass
class RealDecoderConfig(DecodedSuiteConfig):
    methods: list[RealDecoderMethod] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    steps_inspected: list[str] = field(default_factory=list)
    resolutions: list[ResolutionEntry] = field(default_factory=list)
    out: str = MISSING
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def recipe(cfg: Any) -> FinetuneRecipe:
    """The fine-tuning recipe of the base's siblings: :class:`FinetuneRecipe` with the ``finetune`` overrides."""
    return FinetuneRecipe.from_dict(_plain(cfg.get("finetune")) or {})


def recipe_words(r: FinetuneRecipe) -> str:
    return (f"Adam lr {r.lr}, batch {r.batch}, MSE on {r.resolution} px crops of the training photos, encoder "
            "frozen (data_gen.taesd_finetune)")


def set_settings(cfg: Any, ctx: Context, **changes: Any) -> DecodedSetSettings:
    """The suite's sizes, seed and the base's resolution, plus the ``sets`` overrides."""
    spec = ctx.model_spec(str(cfg.base))
    values = {"resolution": int(spec.resolution or 64), "n": int(cfg.suite.generated.n),
              "n_real": int(cfg.suite.real.n), "seed": int(cfg.suite.generated.seed),
              **(_plain(cfg.get("sets")) or {})}
    return DecodedSetSettings.from_dict({**values, **changes})


def sets_record(cfg: Any, ctx: Context) -> dict[str, Any]:
    """What decides the decoded sets of a study on this suite: the suite's protocol, the base, its sibling's
    steps and recipe and the sets' settings (recorded beside merged tables: :class:`~.base.Merge` ``sets``)."""
    return {**ctx.protocol(), "base": str(cfg.base), "sibling_steps": int(cfg.sibling_steps),
            "finetune": dataclasses.asdict(recipe(cfg)), "sets": dataclasses.asdict(set_settings(cfg, ctx))}


def decoders(cfg: Any, ctx: Context, steps: list[int], resolution: int | None = None) -> dict:
    """{name: Autoencoder}: the base and its ``<base>-ftN`` siblings for N in ``steps`` (built if missing)."""
    spec = ctx.model_spec(str(cfg.base))
    if resolution:
        spec = dataclasses.replace(spec, resolution=int(resolution))
    members = build_series(spec.weights, steps, Path(cfg.dir) / "members", recipe(cfg), progress=bool(cfg.progress))
    out = {spec.name: ctx.load_model(spec)}
    for n, folder in members.items():
        name = member_name(spec.name, n)
        out[name] = ctx.load_model(dataclasses.replace(spec, name=name, weights=str(folder)))
    return out


def set_dir(cfg: Any, settings: DecodedSetSettings) -> Path:
    """``dir/sets/r<px>-<hash of the settings>``: sets of other sizes or draws sit side by side."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode()).hexdigest()[:8]
    return Path(cfg.dir) / "sets" / f"r{settings.resolution}-{digest}"


def image_sets(cfg: Any, ctx: Context, aes: dict, settings: DecodedSetSettings) -> dict:
    """The protocol's sets: each decoder's set split as the suite splits, the real crops as ``real``."""
    paths = build_sets(set_dir(cfg, settings), aes[str(cfg.base)], aes, settings)
    sets = {name: protocol.split(paths[name], ctx.split_settings()) for name in aes}
    sets[protocol.REAL] = {"evaluation": paths[protocol.REAL]}
    return sets


def scorer(ctx: Context, aes: dict, method, store, long_steps: int | None = None) -> protocol.Scorer:
    """``method`` through the store; LatentTracer runs ``long_steps`` (trajectories kept) when given."""
    if type(method) is LatentTracer and long_steps:
        method = LatentTracer(dataclasses.replace(method.config, steps=int(long_steps)))

    def score(name: str, paths) -> pd.DataFrame:
        return ctx.score_paths(aes[name], paths, method, store=store)

    return score


def grid(cfg: Any, ctx: Context, aes: dict, sets: dict, store) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Every method's cells, and LatentTracer's cells against steps."""
    tpr = ctx.split_settings().target_tpr
    frames, steps = [], None
    for entry in cfg.methods:
        method = ctx.method(entry)
        inspected = [str(n) for n in (entry.get("inspected") or aes)]
        chosen = rd.subset_sets(sets, entry.get("n_belonging"), entry.get("n_per_source"))
        extra = ("seconds", *method.components)
        for name in inspected:
            long = int(max(cfg.steps)) if type(method) is LatentTracer and name in cfg.steps_inspected else None
            _, scores = protocol.evaluate(chosen, [name], scorer(ctx, aes, method, store, long), tpr,
                                          calibrate=lambda s, m=method: m.calibrate(s, tpr), extra_columns=extra)
            if long:
                steps_frame = rd.steps_cells(scores, list(chosen), [name], list(cfg.steps), method.config.strategy,
                                             tpr)
                steps = steps_frame if steps is None else pd.concat([steps, steps_frame], ignore_index=True)
                scores = protocol.truncate(scores, method.config.steps, method.config.strategy)
            scale = method.config.steps / long if long else 1.0
            frames.append(rd.method_cells(scores, list(chosen), [name], method.label,
                                          calibrate=lambda s, m=method: m.calibrate(s, tpr), target_tpr=tpr,
                                          seconds_scale=scale))
            log.info("%s / %s: pooled AUC %.3f", method.label, name, frames[-1]["auc"].iloc[-1])
    return pd.concat(frames, ignore_index=True), steps


def resolution_rows(cfg: Any, ctx: Context, cells: pd.DataFrame, store) -> pd.DataFrame:
    """Base vs real crops at the suite's resolution (from the grid) and at each of ``resolutions``."""
    base, res0 = str(cfg.base), int(ctx.model_spec(str(cfg.base)).resolution or 64)
    first = cells[(cells["inspected"] == base) & (cells["source"] == protocol.REAL)].copy()
    first.insert(0, "resolution", res0)
    rows = [first]
    labels = {ctx.method(e).label: e for e in cfg.methods}
    for r in cfg.resolutions:
        unknown = [label for label in r.methods if label not in labels]
        if unknown:
            raise ValueError(f"resolutions: method {unknown[0]!r} is not a label of `methods` ({sorted(labels)})")
        settings = set_settings(cfg, ctx, resolution=int(r.size), n=int(r.n), n_real=int(r.n_real))
        aes = decoders(cfg, ctx, [], resolution=int(r.size))
        paths = build_sets(set_dir(cfg, settings), aes[base], aes, settings)
        for label in r.methods:
            method = ctx.method(labels[label])
            b = ctx.score_paths(aes[base], paths[base], method, store=store)
            nb = ctx.score_paths(aes[base], paths[protocol.REAL], method, store=store)
            row = {"resolution": int(r.size), "method": method.label, "inspected": base, "source": protocol.REAL,
                   **rd.two_class_row(b, nb), "seconds_per_image": float(pd.concat([b, nb])["seconds"].median())}
            rows.append(pd.DataFrame([row]))
            log.info("%s at %d px: AUC %.3f, ratio %.3g", method.label, r.size, row["auc"], row["ratio"])
    return pd.concat(rows, ignore_index=True)


@STUDIES.register
class RealDecoder(Study):
    name = "real_decoder"
    config = RealDecoderConfig
    section = ReportSection("A real decoder (taef2)",
                            ("real_decoder.csv", "real_decoder_steps.csv", "real_decoder_resolution.csv"),
                            ("real_decoder.png",), "make real-decoder", order=45)

    def run(self, cfg: Any, ctx: Context) -> StudyResult:
        """Returns the grid's cells; the objective is the mean pooled AUC."""
        start = time.time()
        base = str(cfg.base)
        settings = set_settings(cfg, ctx)
        store = ctx.store()
        aes = decoders(cfg, ctx, [int(cfg.sibling_steps)])
        sets = image_sets(cfg, ctx, aes, settings)
        cells, steps = grid(cfg, ctx, aes, sets, store)
        resolutions = resolution_rows(cfg, ctx, cells, store)
        cells.insert(0, "resolution", settings.resolution)
        sibling = member_name(base, int(cfg.sibling_steps))
        ft = recipe(cfg)
        sizes = "; ".join(f"`{ctx.method(e).label}`: {e.get('n_belonging') or 'all'} per half, "
                          f"{e.get('n_per_source') or 'all'} real, inspected {list(e.get('inspected') or aes)}"
                          for e in cfg.methods)
        notes = [
            f"Suite `{cfg.suite.name}` at {settings.resolution} px: {base} (models/{base}) and `{sibling}` ({base}'s "
            f"decoder fine-tuned {cfg.sibling_steps} Adam steps, lr {ft.lr}, batch {ft.batch}, MSE on "
            f"{ft.resolution} px crops of the training photos, encoder frozen). Each decoder's set: "
            f"{settings.n} decodes ({settings.n_reconstructions} of encoded evaluation-photo crops, "
            f"{settings.n_interpolations} of interpolations between two crops' latents, t in "
            f"{list(settings.t_range)}), both decoders decoding the same latents, split "
            f"{settings.n - settings.n // 2}/{settings.n // 2} calibration/evaluation; real: {settings.n_real} other "
            "crops of the evaluation photos (never a crop whose latent made a belonging image).",
            f"Image sets per method: {sizes}.",
            f"Methods' own thresholds as in results/methods.md. LatentTracer: {cfg.inversion.steps} steps, cut from "
            f"one {max(cfg.steps)}-step run for {list(cfg.steps_inspected)} (its s / image is "
            f"{cfg.inversion.steps}/{max(cfg.steps)} of the recorded time of that run).",
            f"Wall time of this run {time.time() - start:.0f} s (cached scores cost nothing); machine speed: "
            f"{machine_speed(1)}.",
        ]
        stem = Path(cfg.out)
        text = rd.markdown(cells, steps, resolutions, notes, f"A real decoder: {base} ({cfg.suite.name} suite)")
        pooled = cells.loc[cells["source"] == protocol.ALL, "auc"]
        return StudyResult(
            cells, objective=float(pooled.mean()), stem=stem, markdown=text,
            tables={"": cells, "_steps": steps if steps is not None else pd.DataFrame(), "_resolution": resolutions},
            log_tables={"real_decoder": cells},
            figures=[FigureOut(rd.figure(cells, steps, base), [Path(cfg.outputs.figures) / stem.name],
                               list(cfg.formats), log_key="real_decoder")])
