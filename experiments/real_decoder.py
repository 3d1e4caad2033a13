"""A real pretrained decoder (taef2): every method in the Table 1 protocol, the collapse question, steps, resolution.

    python -m experiments.real_decoder                 # `make real-decoder` (conf/real_decoder.yaml, suite taef2)
    python -m experiments.real_decoder debug=default   # a smoke run

Builds the base's fine-tuned sibling (``sibling_steps``; :mod:`data_gen.taesd_finetune`, cached under
``dir/members``), the belonging sets of both decoders and the real crops (:mod:`data_gen.real_decoder`, cached
under ``dir/sets/r<px>``), scores the grid with every method of ``methods`` through the results store (nothing is
recomputed on a rerun), and publishes ``<out>.{md,csv}`` and ``<report.figures>/<out name>.{png,pdf}``
(:mod:`latenttracer.real_decoder`). The CSV has one row per method x inspected x source (``resolution`` = the
suite's); the resolution rows (``resolutions``) follow with their own ``resolution``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from data_gen.real_decoder import DecodedSetSettings, build_sets
from data_gen.taesd_finetune import FinetuneRecipe, build_series, member_name
from data_gen.zoo.speed import machine_speed
from experiments import common
from latenttracer import protocol, report
from latenttracer import real_decoder as study
from latenttracer.autoencoders import load_autoencoder
from latenttracer.methods import LatentTracer
from latenttracer.store import ResultStore

log = logging.getLogger(__name__)


def set_settings(cfg: DictConfig, **changes) -> DecodedSetSettings:
    """The suite's sizes, seed and the base's resolution, plus the ``sets`` overrides."""
    spec = common.model_spec(cfg, str(cfg.base))
    values = {"resolution": int(spec.resolution or 64), "n": int(cfg.suite.generated.n),
              "n_real": int(cfg.suite.real.n), "seed": int(cfg.suite.generated.seed),
              **(common.plain(cfg.get("sets")) or {})}
    return DecodedSetSettings.from_dict({**values, **changes})


def decoders(cfg: DictConfig, steps: list[int], resolution: int | None = None) -> dict:
    """{name: Autoencoder}: the base and its ``ft-N`` siblings for N in ``steps`` (built if missing)."""
    spec = common.model_spec(cfg, str(cfg.base))
    res = resolution or spec.resolution
    members = build_series(spec.source, steps, Path(cfg.dir) / "members",
                           FinetuneRecipe.from_dict(common.plain(cfg.finetune)), progress=bool(cfg.progress))
    out = {spec.name: load_autoencoder(str(spec.source), name=spec.name, resolution=res, device=str(cfg.device))}
    for n, folder in members.items():
        name = member_name(spec.name, n)
        out[name] = load_autoencoder(str(folder), name=name, resolution=res, device=str(cfg.device))
    return out


def set_dir(cfg: DictConfig, settings: DecodedSetSettings) -> Path:
    """``dir/sets/r<px>-<hash of the settings>``: sets of other sizes or draws sit side by side."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode()).hexdigest()[:8]
    return Path(cfg.dir) / "sets" / f"r{settings.resolution}-{digest}"


def image_sets(cfg: DictConfig, aes: dict, settings: DecodedSetSettings) -> dict:
    """The protocol's sets: each decoder's set split as the suite splits, the real crops as ``real``."""
    base = aes[str(cfg.base)]
    paths = build_sets(set_dir(cfg, settings), base, aes, settings)
    sets = {name: protocol.split(paths[name], common.split_settings(cfg)) for name in aes}
    sets[protocol.REAL] = {"evaluation": paths[protocol.REAL]}
    return sets


def scorer(cfg: DictConfig, aes: dict, method, long_steps: int | None = None) -> protocol.Scorer:
    """``method`` through the store; LatentTracer runs ``long_steps`` (trajectories kept) when given."""
    store = ResultStore(cfg.store)

    def score(name: str, paths) -> pd.DataFrame:
        ae = aes[name]
        if type(method) is LatentTracer and long_steps:
            config = dataclasses.replace(method.config, steps=int(long_steps))
            return protocol.score_paths(ae, paths, config, store=store, image_options=common.image_options(cfg),
                                        progress=bool(cfg.progress))
        return common.score_method(cfg, ae, paths, method, store=store)

    return score


def grid(cfg: DictConfig, aes: dict, sets: dict) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Every method's cells, and LatentTracer's cells against steps."""
    tpr = common.split_settings(cfg).target_tpr
    frames, steps = [], None
    for entry in cfg.methods:
        method = common.listed_method(cfg, entry)
        inspected = [str(n) for n in (entry.get("inspected") or aes)]
        chosen = study.subset_sets(sets, entry.get("n_belonging"), entry.get("n_per_source"))
        extra = ("seconds", *method.components)
        for name in inspected:
            long = int(max(cfg.steps)) if type(method) is LatentTracer and name in cfg.steps_inspected else None
            _, scores = protocol.evaluate(chosen, [name], scorer(cfg, aes, method, long), tpr,
                                          calibrate=lambda s, m=method: m.calibrate(s, tpr), extra_columns=extra)
            if long:
                steps_frame = study.steps_cells(scores, list(chosen), [name], list(cfg.steps), method.config.strategy,
                                                tpr)
                steps = steps_frame if steps is None else pd.concat([steps, steps_frame], ignore_index=True)
                scores = protocol.truncate(scores, method.config.steps, method.config.strategy)
            scale = method.config.steps / long if long else 1.0
            frames.append(study.method_cells(scores, list(chosen), [name], method.label,
                                             calibrate=lambda s, m=method: m.calibrate(s, tpr), target_tpr=tpr,
                                             seconds_scale=scale))
            log.info("%s / %s: pooled AUC %.3f", method.label, name, frames[-1]["auc"].iloc[-1])
    return pd.concat(frames, ignore_index=True), steps


def resolution_rows(cfg: DictConfig, cells: pd.DataFrame) -> pd.DataFrame:
    """Base vs real crops at the suite's resolution (from the grid) and at each of ``resolutions``."""
    base, res0 = str(cfg.base), int(common.model_spec(cfg, str(cfg.base)).resolution or 64)
    first = cells[(cells["inspected"] == base) & (cells["source"] == protocol.REAL)].copy()
    first.insert(0, "resolution", res0)
    rows = [first]
    store = ResultStore(cfg.store)
    labels = {common.listed_method(cfg, e).label: e for e in cfg.methods}
    for r in cfg.resolutions:
        settings = set_settings(cfg, resolution=int(r.size), n=int(r.n), n_real=int(r.n_real))
        aes = decoders(cfg, [], resolution=int(r.size))
        paths = build_sets(set_dir(cfg, settings), aes[base], aes, settings)
        for label in r.methods:
            if label not in labels:
                raise ValueError(f"resolutions: method {label!r} is not a label of `methods` ({sorted(labels)})")
            method = common.listed_method(cfg, labels[label])
            b = common.score_method(cfg, aes[base], paths[base], method, store=store)
            nb = common.score_method(cfg, aes[base], paths[protocol.REAL], method, store=store)
            row = {"resolution": int(r.size), "method": method.label, "inspected": base, "source": protocol.REAL,
                   **study.two_class_row(b, nb), "seconds_per_image": float(pd.concat([b, nb])["seconds"].median())}
            rows.append(pd.DataFrame([row]))
            log.info("%s at %d px: AUC %.3f, ratio %.3g", method.label, r.size, row["auc"], row["ratio"])
    return pd.concat(rows, ignore_index=True)


def drift_members(cfg: DictConfig):
    """The drift study's TAESD path (``python -m experiments.drift experiment=drift_taef2``): the base's decoder
    fine-tuned for each N of ``steps`` (``finetune`` recipe), every ft-N decoding the base's latents (``n`` images,
    as :func:`image_sets` makes them). Returns (base autoencoder, its evaluation half, [(N, name, ft-N autoencoder,
    its evaluation half, relative L2)], the recipe in words)."""
    base = str(cfg.base)
    settings = set_settings(cfg, n=int(cfg.n))  # with the suite's n: the suite's very images (scores shared)
    aes = decoders(cfg, list(cfg.steps))
    sets = image_sets(cfg, aes, settings)
    recipe = FinetuneRecipe.from_dict(common.plain(cfg.finetune))
    members = []
    for n in sorted({int(k) for k in cfg.steps}):
        name = member_name(base, n)
        card = json.loads((Path(cfg.dir) / "members" / f"ft-{n}" / "card.json").read_text())
        members.append((n, name, aes[name], sets[name]["evaluation"], float(card["relative_l2"])))
    words = (f"Adam lr {recipe.lr}, batch {recipe.batch}, MSE on {recipe.resolution} px crops of the training photos, "
             f"encoder frozen (data_gen.taesd_finetune)")
    return aes[base], sets[base]["evaluation"], members, words


def run(cfg: DictConfig) -> pd.DataFrame:
    out = common.setup(cfg)
    start = time.time()
    base = str(cfg.base)
    settings = set_settings(cfg)
    with common.tracker(cfg, "real_decoder") as tracker:
        aes = decoders(cfg, [int(cfg.sibling_steps)])
        sets = image_sets(cfg, aes, settings)
        cells, steps = grid(cfg, aes, sets)
        resolutions = resolution_rows(cfg, cells)
        cells.insert(0, "resolution", settings.resolution)
        sibling = member_name(base, int(cfg.sibling_steps))
        recipe = FinetuneRecipe.from_dict(common.plain(cfg.finetune))
        sizes = "; ".join(f"`{common.listed_method(cfg, e).label}`: {e.get('n_belonging') or 'all'} per half, "
                          f"{e.get('n_per_source') or 'all'} real, inspected {list(e.get('inspected') or aes)}"
                          for e in cfg.methods)
        notes = [
            f"Suite `{cfg.suite.name}` at {settings.resolution} px: {base} (models/{base}) and `{sibling}` ({base}'s "
            f"decoder fine-tuned {cfg.sibling_steps} Adam steps, lr {recipe.lr}, batch {recipe.batch}, MSE on "
            f"{recipe.resolution} px crops of the training photos, encoder frozen). Each decoder's set: "
            f"{settings.n} decodes ({settings.n_reconstructions} of encoded evaluation-photo crops, "
            f"{settings.n_interpolations} of interpolations between two crops' latents, t in "
            f"{list(settings.t_range)}), both decoders decoding the same latents, split "
            f"{settings.n - settings.n // 2}/{settings.n // 2} calibration/evaluation; real: {settings.n_real} other "
            "crops of the evaluation photos (never a crop whose latent made a belonging image).",
            f"Image sets per method: {sizes}.",
            f"Methods' own thresholds as in results/methods.md. LatentTracer: {cfg.inversion.steps} steps, cut from "
            f"one {max(cfg.steps)}-step run for {list(cfg.steps_inspected)} (its s / image is half the recorded "
            "time of that run).",
            f"Wall time of this run {time.time() - start:.0f} s (cached scores cost nothing); machine speed: "
            f"{machine_speed(1)}.",
        ]
        stem = Path(cfg.out)
        text = study.markdown(cells, steps, resolutions, notes, f"A real decoder: {base} ({cfg.suite.name} suite)")
        frames = {"": cells, "_steps": steps if steps is not None else pd.DataFrame(),
                  "_resolution": resolutions}
        report.publish(stem, out, text, frames)
        pngs = report.save_figure(study.figure(cells, steps, base), Path(cfg.report.figures) / stem.name,
                                  list(cfg.formats))
        print(text, flush=True)
        log.info("published %s.{md,csv} and %s", stem, pngs[0])
        tracker.log_table("real_decoder", cells)
    return cells


@hydra.main(version_base="1.3", config_path="../conf", config_name="real_decoder")
def main(cfg: DictConfig) -> float:
    cells = run(cfg)
    return float(cells.loc[cells["source"] == protocol.ALL, "auc"].mean())


if __name__ == "__main__":
    main()
