"""Decoder drift: how far must a decoder move before its fingerprint stops claiming the other's images?

    python -m experiments.drift                 # `make drift` (conf/drift.yaml)
    python -m experiments.drift steps=[10,100]

The base member's (kl-a's) decoder is fine-tuned for each N of ``steps`` with the kl-a-ft recipe
(:mod:`data_gen.zoo.drift`; cached under ``dir/members/ft-N``); each ``ft-N`` generates a set with the base's prior
and its own decoder (``dir/images/ft-N``, the suite's generation seed, so image i of every set starts from the
same prior noise, as kl-a and kl-a-ft do in Table 1). Both sets of ``n`` images are split as the suite splits its
sets and their evaluation halves are compared, per method:

* ``base inspects``: the base's own images (belonging) against ft-N's (non-belonging);
* ``ft-N inspects``: ft-N's own images (belonging) against the base's.

AUC against N and against the relative L2 distance of the decoder weights. Publishes ``<out>.{md,csv}`` and
``<outputs.figures>/<out name>.{png,pdf}``. The fine-tuning and the zoo members come from :mod:`data_gen.zoo`
(the study builds models, which only data_gen knows how to do).

A real decoder (``experiment=drift_taef2``, ``make drift model=taef2``): when the base loads as a TAESD-family
autoencoder (taef2), its decoder is fine-tuned with the ``finetune`` recipe (:mod:`data_gen.taesd_finetune`,
MSE on photo crops, the encoder frozen), and each ft-N decodes the same latents as the base (decodes of encoded
evaluation-photo crops and interpolations, ``n`` per set; :mod:`data_gen.real_decoder`): the members and the sets
are the real-decoder study's (:mod:`latenttracer.studies.real_decoder`), shared with ``make real-decoder``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import MISSING

from data_gen.sets import ModelSpec
from data_gen.taesd_finetune import member_name
from data_gen.zoo.drift import build_series, decoder_distance
from data_gen.zoo.members import load_member
from latenttracer import protocol, tables
from latenttracer.metrics import detection_metrics
from latenttracer.studies import real_decoder
from latenttracer.studies.base import STUDIES, Context, FigureOut, MethodEntry, ReportSection, Study, StudyResult

log = logging.getLogger(__name__)

COLUMNS = ["method", "steps", "relative_l2", "direction", "inspected", "belonging", "non_belonging", "auc",
           "auc_lo", "auc_hi", "n_belonging", "n_non_belonging"]


@dataclass
class DriftConfig:
    base: str = "kl-a"
    steps: list[int] = field(default_factory=list)
    seed: int = 2
    n: int = 100
    methods: list[MethodEntry] = field(default_factory=list)
    dir: str = MISSING
    out: str = MISSING
    formats: list[str] = field(default_factory=lambda: ["png", "pdf"])
    finetune: dict[str, Any] = field(default_factory=dict)  # TAESD bases: data_gen.taesd_finetune.FinetuneRecipe


def evaluation_half(ctx: Context, spec: ModelSpec, settings) -> list[Path]:
    return protocol.split(ctx.generated_set(spec, settings), ctx.split_settings())["evaluation"]


def auc(ctx: Context, ae, method, belonging: list[Path], non_belonging: list[Path], store) -> dict:
    scores = ctx.score_paths(ae, [*map(str, belonging), *map(str, non_belonging)], method, store=store)
    by_path = scores.set_index("path")
    b = by_path.loc[[str(p) for p in belonging]]
    nb = by_path.loc[[str(p) for p in non_belonging]]
    m = detection_metrics(b.loc[b["status"] == "ok", "score"], nb.loc[nb["status"] == "ok", "score"])
    return {"auc": m.auc, "auc_lo": m.auc_lo, "auc_hi": m.auc_hi, "n_belonging": m.n_belonging,
            "n_non_belonging": m.n_non_belonging}


def figure(rows: pd.DataFrame, recipe: str = "kl-a-ft recipe"):
    """AUC against N (log x) and against the relative L2 distance (log x); colour = method, style = direction."""
    plt = tables._pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(dict.fromkeys(rows["method"])):
        for style, direction in zip(("o-", "s--"), ("base", "ft")):
            part = rows[(rows["method"] == method) & (rows["direction"] == direction)].sort_values("steps")
            if part.empty:
                continue
            label = f"{method}: {part['inspected'].iloc[0] if direction == 'base' else 'ft-N'} inspects"
            for ax, x in zip(axes, ("steps", "relative_l2")):
                tables.plot_metric(ax, part, x, "auc", style, color=colours[i % len(colours)], label=label, ms=4)
    for ax, label in zip(axes, ("fine-tuning steps N", "relative L2 distance of the decoder weights")):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AUC (own images vs the other decoder's)")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Decoder drift: the base's decoder fine-tuned for N steps ({recipe})", fontsize=9)
    fig.tight_layout()
    return fig


def table_markdown(cfg: Any, frame: pd.DataFrame, recipe: str, how: str, distance: str) -> str:
    base = str(cfg.base)
    wide = tables.pivot_formatted(frame, ["steps", "relative_l2"], ["method", "direction"], "auc")
    header = ["N", "relative L2", *(f"{m}: {base if d == 'base' else 'ft-N'} inspects" for m, d in wide.columns)]
    body = [[str(n), f"{d:.4f}", *r] for (n, d), r in wide.iterrows()]
    n_eval = int(frame["n_belonging"].max()) if len(frame) else 0
    return "\n".join([
        f"# Decoder drift ({base})", "",
        f"{base}'s decoder fine-tuned for N steps with {recipe}; each ft-N {how}, split as the suite splits; "
        f"AUC [95% CI] of the evaluation halves ({n_eval} images each): `{base} inspects` = {base}'s "
        "own images (belonging) vs ft-N's, `ft-N inspects` = the reverse. Relative L2 = ||W_ft - W_base|| / "
        f"||W_base|| over {distance}.", "",
        tables.markdown_table(body, header)]) + "\n"


@STUDIES.register
class Drift(Study):
    name = "drift"
    config = DriftConfig
    section = ReportSection("Decoder drift", ("drift.csv", "drift_taef2.csv"), ("drift*.png",),
                            "make drift; make drift model=taef2", order=40)

    def run(self, cfg: Any, ctx: Context) -> StudyResult:
        """Returns the rows; the objective is their mean AUC."""
        base = ctx.model_spec(str(cfg.base))
        base_ae = ctx.load_model(base)
        if getattr(base_ae, "family", "") == "taesd":  # a real decoder: the real-decoder study's members and sets
            base_eval, members = taesd_members(cfg, ctx)
            r = real_decoder.recipe(cfg)
            recipe = f"{real_decoder.recipe_words(r)}, seed {r.seed}"
            how, distance = f"decodes the {cfg.n} latents {base.name} decodes", "the decoder weights"
        else:
            base_eval, members = zoo_members(cfg, ctx, base)
            recipe = f"the kl-a-ft recipe (seed {cfg.seed})"
            how = f"generates {cfg.n} images with {base.name}'s prior"
            distance = "the decoder and post-quant conv weights"
        store = ctx.store()
        rows = []
        for n, ft_name, ft_ae, ft_eval, relative_l2 in members:
            for entry in cfg.methods:
                for direction, ae, own, other in (("base", base_ae, base_eval, ft_eval),
                                                  ("ft", ft_ae, ft_eval, base_eval)):
                    method = ctx.method(entry, dtype=base.dtype)
                    row = {"method": method.label, "steps": n, "relative_l2": relative_l2, "direction": direction,
                           "inspected": ae.name, "belonging": ae.name,
                           "non_belonging": ft_name if direction == "base" else base.name,
                           **auc(ctx, ae, method, own, other, store)}
                    log.info("%s N=%d %s inspects: AUC %.3f (relative L2 %.4f)", row["method"], n, ae.name,
                             row["auc"], relative_l2)
                    rows.append(row)
        frame = pd.DataFrame(rows, columns=COLUMNS)
        stem = Path(cfg.out)
        return StudyResult(frame, objective=float(frame["auc"].mean()), stem=stem,
                           markdown=table_markdown(cfg, frame, recipe, how, distance), tables={"": frame},
                           log_tables={"drift": frame},
                           figures=[FigureOut(figure(frame, recipe.split(" (")[0]),
                                              [Path(cfg.outputs.figures) / stem.name], list(cfg.formats))])


def zoo_members(cfg: Any, ctx: Context, base: ModelSpec) -> tuple[list[Path], list[tuple]]:
    """A zoo base: (its evaluation half, [(N, ft-N name, ft-N autoencoder, its evaluation half, relative L2)]),
    each ft-N generating with the base's prior (the kl-a-ft recipe, :mod:`data_gen.zoo.drift`)."""
    built = build_series(base.weights, list(cfg.steps), Path(cfg.dir) / "members", seed=int(cfg.seed),
                         n_threads=int(cfg.threads) if cfg.get("threads") else None, progress=bool(cfg.progress))
    gen = ctx.generation_settings(n=int(cfg.n), dir=str(Path(cfg.dir) / "images"))
    base_eval = evaluation_half(ctx, base, ctx.generation_settings(n=int(cfg.n)))
    reference = load_member(base.weights).vqvae
    members = []
    for n, member_dir in built.items():
        spec = ModelSpec(name=f"ft-{n}", weights=str(member_dir), pipeline=base.pipeline,
                         resolution=base.resolution, dtype=base.dtype, generation=dict(base.generation))
        members.append((n, spec.name, ctx.load_model(spec), evaluation_half(ctx, spec, gen),
                        decoder_distance(load_member(member_dir).vqvae, reference)))
    return base_eval, members


def taesd_members(cfg: Any, ctx: Context) -> tuple[list[Path], list[tuple]]:
    """A TAESD base (taef2): its decoder fine-tuned for each N of ``steps`` (the ``finetune`` recipe,
    :mod:`data_gen.taesd_finetune`), every ft-N decoding the base's latents (``n`` images per set, as the
    real-decoder study makes them: with the suite's ``n``, the suite's very images, so scores are shared).
    Returns the same as :func:`zoo_members`; the relative L2 is the one the member's card records."""
    base = str(cfg.base)
    settings = real_decoder.set_settings(cfg, ctx, n=int(cfg.n))
    aes = real_decoder.decoders(cfg, ctx, list(cfg.steps))
    sets = real_decoder.image_sets(cfg, ctx, aes, settings)
    members = []
    for n in sorted({int(k) for k in cfg.steps}):
        name = member_name(base, n)
        card = json.loads((Path(cfg.dir) / "members" / f"ft-{n}" / "card.json").read_text())
        members.append((n, name, aes[name], sets[name]["evaluation"], float(card["relative_l2"])))
    return sets[base]["evaluation"], members
