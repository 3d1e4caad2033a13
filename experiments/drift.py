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
``<report.figures>/<out name>.{png,pdf}``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from data_gen.sets import GenerationSettings, ModelSpec, generated_set
from data_gen.zoo.drift import build_series, decoder_distance
from data_gen.zoo.members import load_member
from experiments import common
from latenttracer import protocol, report
from latenttracer.metrics import detection_metrics
from latenttracer.store import ResultStore

log = logging.getLogger(__name__)

COLUMNS = ["method", "steps", "relative_l2", "inspected", "belonging", "non_belonging", "auc", "n_belonging",
           "n_non_belonging"]


def settings(cfg: DictConfig) -> GenerationSettings:
    """The suite's generation settings with ``n`` images, sets under ``dir/images``."""
    return GenerationSettings.from_dict({**common.plain(cfg.suite.generated), "n": int(cfg.n),
                                         "dir": str(Path(cfg.dir) / "images")})


def evaluation_half(cfg: DictConfig, spec: ModelSpec, gen: GenerationSettings) -> list[Path]:
    files = generated_set(spec, gen, device=str(cfg.device), progress=bool(cfg.progress))
    return protocol.split(files, common.split_settings(cfg))["evaluation"]


def auc(cfg: DictConfig, ae, method, belonging: list[Path], non_belonging: list[Path], store: ResultStore) -> dict:
    scores = common.score_method(cfg, ae, [*map(str, belonging), *map(str, non_belonging)], method, store=store)
    by_path = scores.set_index("path")
    b = by_path.loc[[str(p) for p in belonging]]
    nb = by_path.loc[[str(p) for p in non_belonging]]
    m = detection_metrics(b.loc[b["status"] == "ok", "score"], nb.loc[nb["status"] == "ok", "score"])
    return {"auc": m.auc, "n_belonging": m.n_belonging, "n_non_belonging": m.n_non_belonging}


def figure(rows: pd.DataFrame, recipe: str = "the kl-a-ft recipe"):
    """AUC against N (log x) and against the relative L2 distance (log x); colour = method, style = direction."""
    plt = report._pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(dict.fromkeys(rows["method"])):
        for style, direction in zip(("o-", "s--"), ("base", "ft")):
            part = rows[(rows["method"] == method) & (rows["direction"] == direction)].sort_values("steps")
            if part.empty:
                continue
            label = f"{method}: {part['inspected'].iloc[0] if direction == 'base' else 'ft-N'} inspects"
            for ax, x in zip(axes, ("steps", "relative_l2")):
                ax.plot(part[x], part["auc"], style, color=colours[i % len(colours)], label=label, ms=4)
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


def zoo_members(cfg: DictConfig, base: ModelSpec):
    """The zoo path: (base autoencoder, base evaluation half, [(N, name, ft-N autoencoder, its evaluation half,
    relative L2)]), each ft-N generating with the base's prior."""
    members = build_series(base.source, list(cfg.steps), Path(cfg.dir) / "members", seed=int(cfg.seed),
                           n_threads=int(cfg.threads) if cfg.get("threads") else None, progress=bool(cfg.progress))
    gen = settings(cfg)
    base_gen = GenerationSettings.from_dict({**common.plain(cfg.suite.generated), "n": int(cfg.n)})
    base_eval = evaluation_half(cfg, base, base_gen)
    reference = load_member(base.source).vqvae
    out = []
    for n, member_dir in members.items():
        spec = ModelSpec(name=f"ft-{n}", source=str(member_dir), kind=base.kind, resolution=base.resolution,
                         dtype=base.dtype, generation=dict(base.generation))
        out.append((n, spec.name, common.load_model(cfg, spec), evaluation_half(cfg, spec, gen),
                    decoder_distance(load_member(member_dir).vqvae, reference)))
    return common.load_model(cfg, base), base_eval, out


def run(cfg: DictConfig) -> pd.DataFrame:
    out = common.setup(cfg)
    base = common.model_spec(cfg, str(cfg.base))
    if getattr(common.load_model(cfg, base), "family", "") == "taesd":  # a real decoder: experiments.real_decoder
        from experiments.real_decoder import drift_members

        base_ae, base_eval, members, recipe = drift_members(cfg)
    else:
        (base_ae, base_eval, members), recipe = zoo_members(cfg, base), f"the kl-a-ft recipe (seed {cfg.seed})"
    store = ResultStore(cfg.store)
    stem = Path(cfg.out)
    with common.tracker(cfg, "drift") as tracker:
        rows = []
        for n, ft_name, ft_ae, ft_eval, distance in members:
            for entry in cfg.methods:
                for direction, ae, own, other in (("base", base_ae, base_eval, ft_eval),
                                                  ("ft", ft_ae, ft_eval, base_eval)):
                    method = common.listed_method(cfg, entry, dtype=base.dtype)
                    row = {"method": method.label, "steps": n, "relative_l2": distance, "direction": direction,
                           "inspected": ae.name, "belonging": ae.name,
                           "non_belonging": ft_name if direction == "base" else base.name,
                           **auc(cfg, ae, method, own, other, store)}
                    log.info("%s N=%d %s inspects: AUC %.3f (relative L2 %.4f)", row["method"], n, ae.name,
                             row["auc"], distance)
                    rows.append(row)
        frame = pd.DataFrame(rows, columns=[*COLUMNS[:3], "direction", *COLUMNS[3:]])
        text = table_markdown(cfg, frame, recipe)
        report.publish(stem, out, text, {"": frame})
        pngs = report.save_figure(figure(frame, recipe), Path(cfg.report.figures) / stem.name, list(cfg.formats))
        print(text, flush=True)
        log.info("published %s.{md,csv} and %s", stem, pngs[0])
        tracker.log_table("drift", frame)
    return frame


def table_markdown(cfg: DictConfig, frame: pd.DataFrame, recipe: str) -> str:
    base = str(cfg.base)
    wide = frame.pivot_table(index=["steps", "relative_l2"], columns=["method", "direction"], values="auc",
                             sort=False)
    header = ["N", "relative L2", *(f"{m}: {base if d == 'base' else 'ft-N'} inspects" for m, d in wide.columns)]
    body = [[str(n), f"{d:.4f}", *(f"{v:.3f}" for v in r)] for (n, d), r in wide.iterrows()]
    n_eval = int(frame["n_belonging"].max()) if len(frame) else 0
    return "\n".join([
        f"# Decoder drift ({base})", "",
        f"{base}'s decoder fine-tuned for N steps with {recipe}; each ft-N makes "
        f"{cfg.n} images as {base} does, split as the suite splits; AUC of the evaluation halves ({n_eval} "
        f"images each): `{base} inspects` = {base}'s own images (belonging) vs ft-N's, `ft-N inspects` = the "
        "reverse. Relative L2 = ||W_ft - W_base|| / ||W_base|| over the decoder weights (KL members: and the "
        "post-quant conv).", "",
        report.markdown_table(body, header)]) + "\n"


@hydra.main(version_base="1.3", config_path="../conf", config_name="drift")
def main(cfg: DictConfig) -> float:
    frame = run(cfg)
    return float(frame["auc"].mean())


if __name__ == "__main__":
    main()
