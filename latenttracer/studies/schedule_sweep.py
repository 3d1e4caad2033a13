"""A faster inversion schedule, searched on calibration images only (a Hydra multirun over the `inversion` node).

    python -m experiments.schedule_sweep -m inversion.steps=25 inversion.lr=0.1,0.2,0.3 inversion.halve_every=10,50

Per inspected model: belonging = its own calibration half; non-belonging = ``n_per_source`` images (seeded) of
every other model's calibration half. No evaluation image is touched: the schedule chosen here is reported on
evaluation images by ``experiments.early_exit inversion=<preset>``. Each job scores these images with
``cfg.inversion`` (through the shared store) and gives the pooled AUC for each step count in ``eval_steps``
(<= inversion.steps; one run, cut with :func:`latenttracer.protocol.truncate`; a ``cosine`` run, whose rate
depends on the step count, gives its own step count only). The rows are merged into ``<out>.csv`` (by inspected,
schedule, lr, lr_scale, halve_every, steps) under a lock, as the jobs of a multirun write concurrently
(:class:`~latenttracer.studies.base.Merge`), and ``<out>.md`` shows each model's AUC and the worst gap to the
authors' run once that has been run too (``inversion.steps=100`` with the authors' settings: the same images, 100
steps). The objective (for a sweeper) is the worst AUC over inspected models at ``inversion.steps``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import MISSING

from latenttracer import protocol, tables
from latenttracer.intervals import auc_delong
from latenttracer.inversion import InversionConfig
from latenttracer.studies.base import STUDIES, Context, Merge, MergedStudy, ReportSection, StudyResult

log = logging.getLogger(__name__)

AUTHORS = InversionConfig()

KEY = ("inspected", "schedule", "lr", "lr_scale", "halve_every", "steps")


@dataclass
class ScheduleSweepConfig:
    inspected: list[str] | None = None  # names in suite.models; null: every model of the suite
    n_per_source: int = 8               # non-belonging: this many calibration images of every other model
    subset_seed: int = 0
    eval_steps: list[int] = field(default_factory=list)  # step counts cut from the same run, <= inversion.steps
    out: str = MISSING                  # publishes <out>.{md,csv}


def calibration_images(sets: dict, name: str, n_per_source: int, seed: int) -> pd.DataFrame:
    """(path, belonging) rows: ``name``'s calibration half, and ``n_per_source`` of every other model's."""
    rows = [pd.DataFrame({"path": [str(p) for p in sets[name]["calibration"]], "belonging": True})]
    for source, parts in sets.items():
        if source != name and "calibration" in parts:
            picked = protocol.subset(list(parts["calibration"]), n_per_source, seed)
            rows.append(pd.DataFrame({"path": [str(p) for p in picked], "belonging": False}))
    return pd.concat(rows, ignore_index=True)


def sweep_markdown(table: pd.DataFrame, n_per_source: int) -> str:
    """Pooled calibration AUC per (schedule, lr, lr_scale, halve_every, steps) and inspected model, with the worst
    and the mean gap to the authors' 100-step run (the row of the authors' settings, when it has been run)."""
    wide = table.pivot_table(index=["schedule", "lr", "lr_scale", "halve_every", "steps"], columns="inspected",
                             values="auc")
    authors = (AUTHORS.schedule, AUTHORS.lr, AUTHORS.lr_scale, AUTHORS.halve_every, AUTHORS.steps)
    notes = [f"- Pooled AUC on calibration images only: each model's calibration half vs {n_per_source} "
             "calibration images of every other model; no evaluation image is used.",
             "- Command: `python -m experiments.schedule_sweep -m inversion.steps=25 inversion.lr=... "
             "inversion.halve_every=...` (the authors' reference: `inversion.steps=100`)."]
    index = ["schedule", "lr", "lr_scale", "halve_every", "steps"]
    cells = tables.pivot_formatted(table, index, "inspected", "auc", sort=True).reindex(wide.index)
    if authors in wide.index:
        gaps = wide - wide.loc[authors]
        cells.insert(0, "worst_gap_to_authors", gaps.min(axis=1).map(lambda v: f"{v:.4f}"))
        cells.insert(1, "mean_gap_to_authors", gaps.mean(axis=1).map(lambda v: f"{v:.4f}"))  # ties: worst gaps
    else:
        notes.append("- The authors' 100-step reference has not been run yet: no gap column.")
    notes.append("- Cells: AUC [95% DeLong interval] (latenttracer.intervals); the gaps are between point AUCs.")
    shown = cells.reset_index().map(lambda v: f"{v:g}" if isinstance(v, float) else v)
    return "\n".join(["# Schedule search on calibration images", "", *notes, "", tables.markdown_table(shown), ""])


@STUDIES.register
class ScheduleSweep(MergedStudy):
    name = "schedule_sweep"
    config = ScheduleSweepConfig
    section = ReportSection("Schedule search on calibration images", ("schedule_sweep.csv",), (),
                            "python -m experiments.schedule_sweep -m inversion.steps=25 inversion.lr=0.1,0.2",
                            order=65)

    def sets_record(self, cfg: Any, ctx: Context) -> dict[str, Any]:
        """What decides the images scored, recorded beside the merged table (:class:`Merge` ``sets``)."""
        return {**ctx.protocol(), "n_per_source": int(cfg.n_per_source), "subset_seed": int(cfg.subset_seed)}

    def run(self, cfg: Any, ctx: Context) -> StudyResult:
        """Returns this job's rows; the objective is the worst AUC over inspected models at ``inversion.steps``."""
        record = self.checked_sets_record(cfg, ctx)
        sets = ctx.image_sets()
        rows = []
        for name in ctx.inspected_models():
            spec = ctx.model_spec(name)
            ae = ctx.load_model(spec)
            images = calibration_images(sets, name, int(cfg.n_per_source), int(cfg.subset_seed))
            paths = images["path"].tolist()
            inv = ctx.inversion_config(dtype=spec.dtype)  # lr_scale=latent_rms: resolved on its calibration half
            cuts = {int(s) for s in cfg.eval_steps if int(s) <= inv.steps} if inv.cuttable else set()
            for steps in sorted(cuts | {inv.steps}):  # a schedule that depends on the step count: its own only
                frame = ctx.invert_paths(ae, paths, replace(inv, steps=steps),
                                         trajectory_steps=inv.steps).set_index("path").loc[paths]
                ok = (frame["status"] == "ok").to_numpy()
                scores, belonging = frame["score"][ok].to_numpy(float), images["belonging"][ok].to_numpy(bool)
                auc, lo, hi = auc_delong(scores[belonging], scores[~belonging])
                rows.append({"inspected": name, "lr": inv.lr, "lr_scale": inv.lr_scale,
                             "halve_every": inv.halve_every, "steps": steps, "schedule": inv.schedule,
                             "auc": auc, "auc_lo": lo, "auc_hi": hi, "n_belonging": int(images["belonging"][ok].sum()),
                             "n_non_belonging": int((~images["belonging"][ok]).sum())})
                log.info("%s lr=%s halve_every=%s steps=%d: calibration AUC %.4f", name, inv.lr, inv.halve_every,
                         steps, auc)
        new = pd.DataFrame(rows)
        n_per_source = int(cfg.n_per_source)
        return StudyResult(new, objective=float(new.loc[new["steps"] == int(cfg.inversion.steps), "auc"].min()),
                           stem=Path(cfg.out), tables={"": new},
                           merge=Merge(KEY, lambda table: sweep_markdown(table, n_per_source), sort=True,
                                       sets=record))
