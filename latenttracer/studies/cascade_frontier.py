"""Which cascade settings reach which cost and agreement: a grid of settings, replayed -> results/cascade_frontier.*

    python -m experiments.cascade_frontier                       # the screen: fast_rms (the default)
    python -m experiments.cascade_frontier debug=default           # a smoke run

The cascade (:mod:`latenttracer.cascade`) has four settings beside the screen schedule: the verdict schedule, the
band margin, and the early-exit margins of the screen and of the verdict schedule. This study measures every
combination of the configured lists, per inspected model, from full-run trajectories in the shared store
(:func:`~latenttracer.cascade.replay_cascade`, which equals a live run: ``tests/test_cascade.py``), and says how a
setting would be *chosen* without looking at the evaluation images:

* **evaluation** columns (``agreement``, ``image_steps_fraction``, ``n_band``, ``disagreements``): the cascade
  learnt from the inspected model's whole calibration half, on Table 1's evaluation images, against the authors'
  full run (100 steps, its own threshold), as in ``results/early_exit.csv``;
* **selection** columns (``selection_agreement``, ``selection_image_steps``): the same measures on a selection set
  that holds no evaluation image: the calibration half split in ``selection_folds`` folds (the band learnt on the
  others, each fold scored once) plus the calibration halves of the suite's other generators (known negatives,
  scored in every fold and counted once). The setting chosen for a model is the cheapest on the selection set at
  ``goal_agreement`` (else the one agreeing most).

The Markdown shows, per model, the setting chosen on the selection set and its evaluation numbers; the cheapest
setting at the agreement goal on the evaluation images themselves (an *oracle*: it looks at the answers, so it
bounds what any selection rule could reach with this grid); and the single settings that meet both goals
(``goal_agreement``, ``goal_image_steps``) on the most models. Rows are merged into ``<out>.csv`` by
(inspected, screen, screen_steps, screen_lr, verdict, band_margin, screen_margin, verdict_margin).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import MISSING

from data_gen import zoo
from latenttracer import tables
from latenttracer.cascade import learn_cascade, replay_cascade
from latenttracer.inversion import InversionConfig
from latenttracer.metrics import calibrate_threshold
from latenttracer.studies.base import STUDIES, Context, FigureOut, Merge, MergedStudy, ReportSection, StudyResult
from latenttracer.studies.early_exit import disagreements, fresh_sets, inspected, known_negatives, suite_label

log = logging.getLogger(__name__)

KEY = ("inspected", "screen", "screen_steps", "screen_lr", "verdict", "band_margin", "screen_margin",
       "verdict_margin")
COLUMNS = [*KEY, "agreement", "image_steps_fraction", "n_band", "disagreements", "selection_agreement",
           "selection_image_steps", "n_evaluation", "n_calibration", "n_negatives", "selection_folds",
           "goal_agreement", "goal_image_steps", "pinned"]
SETTING = ["screen", "verdict", "band_margin", "screen_margin", "verdict_margin"]
FIGURE = "cascade_frontier"


def _verdicts() -> list[dict[str, Any]]:
    return [{"name": "authors"},                            # the authors' 100 steps at lr 0.05
            {"name": "lr0.1_50", "lr": 0.1, "steps": 50}]  # the probe of results/early_exit.md (rate fixed a priori)


@dataclass
class CascadeFrontierConfig:
    """The grid (these defaults are the published one; conf/cascade_frontier.yaml and
    conf/real_decoder_cascade_frontier.yaml change only what differs) and the goals."""

    inspected: list[str] | None = None   # names in suite.models; null: every model of the suite
    verdicts: list[dict[str, Any]] = field(default_factory=_verdicts)  # a name + the inversion keys that differ
    band_margins: list[float] = field(default_factory=lambda: [1.0, 1.05, 1.1, 1.2])  # each >= 1
    screen_margins: list[float] = field(default_factory=lambda: [1.2, 1.5])  # the screen's exit margin, >= 1
    verdict_margins: list[float] = field(default_factory=lambda: [1.0, 1.5])  # the verdict schedule's, >= 1
    goal_agreement: float = 0.99         # with the authors' full run
    goal_image_steps: float = 0.1        # mean scored steps per image / the authors' 100 (issue 16's 1/10)
    selection_folds: int = 5             # folds of the calibration half on the selection set (>= 2; at most one
                                         # per calibration image: fewer images, fewer folds, in the CSV)
    selection_seed: int = 0
    pinned: list[dict[str, Any]] = field(default_factory=list)  # settings fixed before this run (e.g. chosen on
                                         # another seed's sets): {verdict, band_margin, screen_margin,
                                         # verdict_margin}, each a point of the grid; a table of their own
    out: str = MISSING                   # publishes <out>.{md,csv}


def _margins(cfg: Any, key: str) -> list[float]:
    values = [float(v) for v in cfg[key]]
    if not values or any(not np.isfinite(v) or v < 1 for v in values):
        raise ValueError(f"cascade_frontier.{key}: a non-empty list of numbers >= 1, got {list(cfg[key])!r}")
    return values


def verdict_schedules(cfg: Any, authors: InversionConfig) -> dict[str, InversionConfig]:
    """``cfg.verdicts`` (entries of a ``name`` and the inversion keys that differ from the authors' schedule) as
    configs, by name."""
    names = {f.name for f in fields(InversionConfig)}
    out: dict[str, InversionConfig] = {}
    if not cfg.verdicts:
        raise ValueError("cascade_frontier.verdicts: list at least one verdict schedule ({name: authors} is the "
                         "authors' own)")
    for i, entry in enumerate(cfg.verdicts):
        changes = dict(entry or {})
        name = changes.pop("name", None)
        where = f"cascade_frontier.verdicts[{i}]"
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: needs a name (e.g. {{name: authors}}), got {dict(entry or {})!r}")
        if name in out:
            raise ValueError(f"{where}: the name {name!r} is used twice")
        where = f"{where} ({name})"
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"{where}: unknown inversion key(s) {unknown}")
        early = sorted(k for k in changes if k.startswith("exit") or k == "early_exit")
        if early:
            raise ValueError(f"{where}: {early} are set by the study (verdict_margins), not here")
        try:
            out[name] = InversionConfig.from_dict({**asdict(authors), **changes})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from err
    return out


def pinned_settings(cfg: Any) -> list[tuple[str, float, float, float]]:
    """``cfg.pinned`` as (verdict, band_margin, screen_margin, verdict_margin) tuples, each checked to be a point of
    the grid (so that its row is measured)."""
    grid = {"verdict": [str(v.get("name")) for v in cfg.verdicts or []],
            **{k[:-1]: _margins(cfg, k) for k in ("band_margins", "screen_margins", "verdict_margins")}}
    return grid_points(cfg.pinned, grid, "cascade_frontier.pinned",
                       lambda key, v: str(v) if key == "verdict" else float(v))


def grid_points(entries: Any, grid: dict[str, list], where: str, parse: Callable[[str, Any], Any]) -> list[tuple]:
    """``entries`` (mappings of exactly the keys of ``grid``) as tuples in ``grid``'s key order, each value read by
    ``parse(key, value)`` and checked to be in ``grid[key]``; errors name ``where[i].key``."""
    out = []
    for i, entry in enumerate(entries or []):
        entry = dict(entry or {})
        if set(entry) != set(grid):
            raise ValueError(f"{where}[{i}]: needs exactly the keys {list(grid)}, got {sorted(entry)}")
        point = tuple(parse(key, entry[key]) for key in grid)
        for key, value in zip(grid, point):
            if value not in grid[key]:
                raise ValueError(f"{where}[{i}].{key}: {value!r} is not in the grid's {key}s {grid[key]} (a pinned "
                                 "setting must be one of the measured points)")
        out.append(point)
    return out


def _score(screen: list, verdict: list, truth: np.ndarray, cascade: Any, s_cfg: InversionConfig,
           v_cfg: InversionConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cascade replayed: its verdicts, whether each equals ``truth``, the steps run, whether in the band."""
    r = replay_cascade(screen, verdict, cascade, s_cfg, v_cfg)
    return r["belonging"], r["belonging"] == truth, np.asarray(r["steps_run"], float), r["stage"] == "verdict"


def _selection(own: dict, neg: dict, truth_own: np.ndarray, truth_neg: np.ndarray, t_verdict: float,
               band_margin: float, s_cfg: InversionConfig, v_cfg: InversionConfig, folds: int, seed: int,
               authors_steps: int) -> tuple[float, float]:
    """Agreement and image-steps fraction on the selection set (module docstring)."""
    n = len(truth_own)
    parts = np.array_split(np.random.default_rng(seed).permutation(n), folds)
    own_agree, own_steps = np.zeros(n), np.zeros(n)
    neg_agree, neg_steps = np.zeros(len(truth_neg)), np.zeros(len(truth_neg))
    for held in parts:
        train = np.setdiff1d(np.arange(n), held)
        cascade = learn_cascade([own["screen"][i] for i in train], [own["verdict"][i] for i in train],
                                threshold=t_verdict, band_margin=band_margin, screen=s_cfg, verdict=v_cfg)
        _, a, s, _ = _score([own["screen"][i] for i in held], [own["verdict"][i] for i in held],
                            truth_own[held], cascade, s_cfg, v_cfg)
        own_agree[held], own_steps[held] = a, s
        if len(truth_neg):
            _, a, s, _ = _score(neg["screen"], neg["verdict"], truth_neg, cascade, s_cfg, v_cfg)
            neg_agree += a / folds
            neg_steps += s / folds
    agree, steps = np.concatenate([own_agree, neg_agree]), np.concatenate([own_steps, neg_steps])
    return float(agree.mean()), float(steps.mean() / authors_steps)


def stored_runs(ctx: Context, ae: Any, groups: dict[str, list], configs: dict[str, InversionConfig],
                name: str) -> tuple[dict[tuple[str, str], pd.DataFrame], dict[str, list]]:
    """Full runs of every config (by role) on every image group, from the shared store (two roles of one schedule
    share its runs), indexed by path; and per group the images every config scored (a failed image has no
    trajectory to replay: left out, with a warning)."""
    runs: dict[tuple[str, str], pd.DataFrame] = {}
    done: dict[tuple[str, str], pd.DataFrame] = {}  # by (schedule hash, group)
    for role, config in configs.items():
        for group, paths in groups.items():
            key = (config.hash(), group)
            if key not in done:
                done[key] = ctx.invert_paths(ae, paths, config).set_index("path") if paths else pd.DataFrame(
                    columns=["status", "trajectory", "score"])
            runs[role, group] = done[key]
    kept = {}
    for group, paths in groups.items():
        kept[group] = [p for p in paths if all(runs[role, group].loc[p, "status"] == "ok" for role in configs)]
        if len(kept[group]) < len(paths):
            log.warning("%s: %d %s image(s) failed in a full run; left out", name, len(paths) - len(kept[group]),
                        group)
    return runs, kept


def selection_folds(cfg: Any, n_cal: int, name: str, study: str) -> int:
    """``cfg.selection_folds``, checked (>= 2, and 2 calibration images at least), at most one per calibration
    image (a smoke run's few images; the ``selection_folds`` column says how many were used)."""
    folds = int(cfg.selection_folds)
    if folds < 2 or n_cal < 2:
        raise ValueError(f"{study}.selection_folds: needs at least 2 folds of one calibration image each, "
                         f"got {folds} folds and {n_cal} calibration image(s) of {name}")
    if folds > n_cal:
        log.warning("%s: %d calibration images, so %d selection folds instead of %d", name, n_cal, n_cal, folds)
    return min(folds, n_cal)


def measure(cfg: Any, ctx: Context, name: str, sets: dict, screen_name: str, ae: Any = None) -> list[dict]:
    """Every setting of the grid for one inspected model (module docstring); ``ae``: its decoder when loaded."""
    model = inspected(cfg, ctx, name, sets, ae)  # as the early-exit study sees it
    ae, calibration, evaluation = model.ae, model.calibration, model.evaluation
    screen, authors, tpr = model.schedule, model.authors, model.target_tpr
    verdicts = verdict_schedules(cfg, authors)
    pinned = set(pinned_settings(cfg))
    groups = {"calibration": calibration, "evaluation": evaluation["path"].tolist(),
              "negatives": known_negatives(sets, name)}
    configs = {"screen": screen, "authors": authors, **{f"verdict:{k}": v for k, v in verdicts.items()}}
    runs, kept = stored_runs(ctx, ae, groups, configs, name)

    def traj(role: str, group: str) -> list:
        return runs[role, group].loc[kept[group], "trajectory"].tolist()

    def scores(role: str, group: str) -> np.ndarray:
        return runs[role, group].loc[kept[group], "score"].to_numpy(float)

    t_authors = calibrate_threshold(scores("authors", "calibration"), tpr)
    truth = {g: scores("authors", g) <= t_authors for g in groups}
    sources = evaluation.set_index("path").loc[kept["evaluation"], "source"].to_numpy()
    folds = selection_folds(cfg, len(kept["calibration"]), name, "cascade_frontier")
    rows = []
    for (vname, vconfig), bm, sm, vm in itertools.product(
            verdicts.items(), _margins(cfg, "band_margins"), _margins(cfg, "screen_margins"),
            _margins(cfg, "verdict_margins")):
        s_cfg, v_cfg = replace(screen, exit_margin=sm), replace(vconfig, exit_margin=vm)
        role = f"verdict:{vname}"
        t_verdict = calibrate_threshold(scores(role, "calibration"), tpr)
        cascade = learn_cascade(traj("screen", "calibration"), traj(role, "calibration"), threshold=t_verdict,
                                band_margin=bm, screen=s_cfg, verdict=v_cfg)
        verdicts_ev, agree, steps, band = _score(traj("screen", "evaluation"), traj(role, "evaluation"),
                                                 truth["evaluation"], cascade, s_cfg, v_cfg)
        own = {"screen": traj("screen", "calibration"), "verdict": traj(role, "calibration")}
        neg = {"screen": traj("screen", "negatives"), "verdict": traj(role, "negatives")}
        sel_agree, sel_steps = _selection(own, neg, truth["calibration"], truth["negatives"], t_verdict, bm, s_cfg,
                                          v_cfg, folds, int(cfg.selection_seed), authors.scored_steps)
        rows.append({"inspected": name, "screen": screen_name, "screen_steps": screen.steps, "screen_lr": screen.lr,
                     "verdict": vname, "band_margin": bm, "screen_margin": sm, "verdict_margin": vm,
                     "agreement": float(agree.mean()),
                     "image_steps_fraction": float(steps.mean()) / authors.scored_steps, "n_band": int(band.sum()),
                     "disagreements": disagreements(verdicts_ev, truth["evaluation"], sources),
                     "selection_agreement": sel_agree, "selection_image_steps": sel_steps,
                     "n_evaluation": len(agree), "n_calibration": len(kept["calibration"]),
                     "n_negatives": len(kept["negatives"]), "selection_folds": folds,
                     "goal_agreement": float(cfg.goal_agreement), "goal_image_steps": float(cfg.goal_image_steps),
                     "pinned": (vname, bm, sm, vm) in pinned})
    best = min((r for r in rows if r["agreement"] >= cfg.goal_agreement), default=None,
               key=lambda r: r["image_steps_fraction"])
    log.info("%s: %d settings; cheapest at the agreement goal on evaluation: %s", name, len(rows),
             "none" if best is None else f"{best['image_steps_fraction']:.4f}")
    return rows


# -- what the table says ----------------------------------------------------------------------------------------
def chosen(table: pd.DataFrame, by: tuple[str, ...] = ("inspected", "screen")) -> pd.DataFrame:
    """Per ``by`` group (inspected, screen): the setting chosen on the selection set: the cheapest there at the
    agreement goal, else the one agreeing most (ties: the cheaper, then the grid order)."""
    out = []
    for _, g in table.groupby(list(by), sort=False, dropna=False):
        ok = g[g["selection_agreement"] >= g["goal_agreement"]]
        pick = (ok.sort_values("selection_image_steps", kind="stable") if len(ok) else
                g.sort_values(["selection_agreement", "selection_image_steps"], ascending=[False, True],
                              kind="stable"))
        out.append(pick.iloc[0])
    return pd.DataFrame(out).reset_index(drop=True)


def oracle(table: pd.DataFrame, by: tuple[str, ...] = ("inspected", "screen")) -> pd.DataFrame:
    """Per ``by`` group (inspected, screen): the cheapest setting at the agreement goal on the evaluation images
    (if any)."""
    out = []
    for _, g in table.groupby(list(by), sort=False, dropna=False):
        ok = g[g["agreement"] >= g["goal_agreement"]].sort_values("image_steps_fraction", kind="stable")
        if len(ok):
            out.append(ok.iloc[0])
    return pd.DataFrame(out).reset_index(drop=True)


def single_settings(table: pd.DataFrame, top: int = 5, setting: list[str] = SETTING,
                    on: tuple[str, str] = ("agreement", "image_steps_fraction")) -> pd.DataFrame:
    """The settings (the ``setting`` columns) meeting both goals on the most inspected models (then: the lowest
    worst-case image-steps among those at the agreement goal everywhere); ``on``: the agreement and image-steps
    columns judged (the selection set's: ``("selection_agreement", "selection_image_steps")``)."""
    agreement, steps = on
    t = table.assign(meets=(table[agreement] >= table["goal_agreement"]) & (table[steps] <= table["goal_image_steps"]))
    g = t.groupby(setting, sort=False, dropna=False).agg(models=("inspected", "size"), meeting_both=("meets", "sum"),
                                                         worst_agreement=(agreement, "min"),
                                                         worst_image_steps=(steps, "max")).reset_index()
    g = g.sort_values(["meeting_both", "worst_image_steps"], ascending=[False, True], kind="stable")
    return g.head(top).reset_index(drop=True)


def pinned_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the pinned settings (a CSV without the column, from before it existed, has none)."""
    flag = table["pinned"].fillna(False).astype(bool) if "pinned" in table else pd.Series(False, index=table.index)
    return table[flag].reset_index(drop=True)


def fmt(v: float, digits: int = 4) -> str:
    """``v`` at ``digits`` decimals; empty for NaN."""
    return f"{v:.{digits}f}" if v == v else ""


def oracle_section(oracle_rows: pd.DataFrame, missing: list[str]) -> list[str]:
    """The published page's oracle section (lines): its table, or that no setting reaches the goal, and where."""
    parts = ["## Oracle: the cheapest setting at the agreement goal on the evaluation images", "",
             "It looks at the answers: no selection rule can do better with this grid.", ""]
    parts += [tables.markdown_table(oracle_rows), ""] if len(oracle_rows) else ["(no setting reaches it)", ""]
    if missing:
        parts += [f"No setting reaches the agreement goal on: {', '.join(missing)}.", ""]
    return parts


def meets(r: pd.Series) -> str:
    """Whether a row meets both goals on the evaluation images: ``yes`` or ``no``."""
    return "yes" if r["agreement"] >= r["goal_agreement"] and r["image_steps_fraction"] <= r["goal_image_steps"] \
        else "no"


def markdown(table: pd.DataFrame, notes: list[str], title: str = "Cascade settings: the measured frontier") -> str:
    """The published page: the notes, then the chosen, oracle and single-setting tables (all from ``table``)."""
    setting = ["screen", "verdict", "band_margin", "screen_margin", "verdict_margin"]

    c = chosen(table)
    chosen_rows = pd.DataFrame({"inspected": c["inspected"], **{k: c[k] for k in setting},
                                "selection_agreement": c["selection_agreement"].map(fmt),
                                "selection_image_steps": c["selection_image_steps"].map(fmt),
                                "agreement": c["agreement"].map(fmt),
                                "image_steps_fraction": c["image_steps_fraction"].map(fmt),
                                "disagreements": c["disagreements"].fillna(""),
                                "both goals": [meets(r) for _, r in c.iterrows()]})
    o = oracle(table)
    oracle_rows = pd.DataFrame({"inspected": o["inspected"], **{k: o[k] for k in setting},
                                "oracle agreement": o["agreement"].map(fmt),
                                "oracle image_steps_fraction": o["image_steps_fraction"].map(fmt),
                                "both goals": [meets(r) for _, r in o.iterrows()]}) if len(o) else pd.DataFrame()
    missing = sorted(set(table["inspected"]) - set(o["inspected"] if len(o) else []))
    s = single_settings(table)
    single_rows = pd.DataFrame({**{k: s[k] for k in setting},
                                "models meeting both goals": s["meeting_both"], "of models": s["models"],
                                "worst agreement": s["worst_agreement"].map(fmt),
                                "worst image_steps_fraction": s["worst_image_steps"].map(fmt)})
    p = pinned_rows(table)
    pinned_table = pd.DataFrame({"inspected": p["inspected"], **{k: p[k] for k in setting},
                                 "agreement": p["agreement"].map(fmt),
                                 "image_steps_fraction": p["image_steps_fraction"].map(fmt),
                                 "disagreements": p["disagreements"].fillna(""),
                                 "both goals (pinned)": [meets(r) for _, r in p.iterrows()]})
    for frame in (chosen_rows, oracle_rows, single_rows, pinned_table):
        for k in ("band_margin", "screen_margin", "verdict_margin"):
            if k in frame:
                frame[k] = frame[k].map(lambda v: fmt(v, 2))
    parts = [f"# {title}", "", *[f"- {n}" for n in notes], "",
             "## Chosen on the selection set (no evaluation image), per inspected model", "",
             tables.markdown_table(chosen_rows), "",
             *oracle_section(oracle_rows, missing),
             "## One setting for every model: the settings meeting both goals on the most models", "",
              tables.markdown_table(single_rows), ""]
    if len(pinned_table):
        met = sum(r == "yes" for r in pinned_table["both goals (pinned)"])
        parts += ["## Pinned: settings fixed before this run (`pinned`), on these evaluation images", "",
                  f"Fixed without these images, so no selection on them: both goals on {met} of "
                  f"{len(pinned_table)} (model, setting) pairs.", "", tables.markdown_table(pinned_table), ""]
    return "\n".join(parts)


def notes(p: dict, table: pd.DataFrame, wall: float, speed_text: str,
          command: str = "python -m experiments.cascade_frontier [inversion=<screen schedule>]") -> list[str]:
    """How the table was made; ``p``: the job's protocol (:meth:`Context.protocol`)."""
    r = table.iloc[0]
    return [f"{suite_label(p)}, Table 1's split; goals: agreement >= {r['goal_agreement']:g} with the authors' "
            f"full run at <= {r['goal_image_steps']:g} of its image-steps. Every setting replayed from full-run "
            "trajectories (equal to a live run); the full grid is in the CSV.",
            "Evaluation columns: the cascade learnt from the whole calibration half, on the evaluation images. "
            f"Selection columns: the calibration half in {int(r['selection_folds'])} folds (band learnt on the "
            "others) plus the other generators' calibration halves as known negatives; no evaluation image.",
            "Settings: screen = the screen schedule (the `inversion` node); verdict = the schedule its band runs "
            "(`verdicts`); band_margin widens the band; screen_margin / verdict_margin: each stage's early-exit "
            "margin.",
            f"Command: `{command}`; this run: {wall:.0f} s wall (replays; inversions only where the store lacks "
            f"them); machine speed {speed_text}."]


def figure(table: pd.DataFrame, sets: str = "", color_by: str = "verdict", what: str = "Cascade settings",
           by: tuple[str, ...] = ("inspected", "screen")) -> Any:
    """Per inspected model: every setting's agreement against its image-steps (a colour per ``color_by`` value),
    the goals as lines, the setting chosen on the selection set ringed, pinned settings starred; ``sets``: which
    sets, ``what``: which settings, for the title; ``by``: the groups a setting is chosen in (:func:`chosen`)."""
    plt = tables._pyplot()
    names = list(dict.fromkeys(table["inspected"]))
    cols = min(3, len(names))
    rows_n = -(-len(names) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), squeeze=False)
    c = chosen(table, by)
    for ax, name in zip(axes.flat, names):
        g = table[table["inspected"] == name]
        for vname, gv in g.groupby(color_by, sort=False, dropna=False):
            ax.scatter(gv["image_steps_fraction"], gv["agreement"], s=18, alpha=0.75, label=f"{color_by}: {vname:g}"
                       if isinstance(vname, float) else f"{color_by}: {vname}")
        pick = c[c["inspected"] == name]
        ax.scatter(pick["image_steps_fraction"], pick["agreement"], s=110, facecolors="none", edgecolors="black",
                   linewidths=1.4, label="chosen on selection set")
        pin = pinned_rows(g)
        if len(pin):
            ax.scatter(pin["image_steps_fraction"], pin["agreement"], s=90, marker="*", color="crimson",
                       label="pinned (fixed in advance)")
        ax.axhline(g["goal_agreement"].iloc[0], color="grey", ls="--", lw=0.9)
        ax.axvline(g["goal_image_steps"].iloc[0], color="grey", ls="--", lw=0.9)
        ax.set_title(name)
        ax.set_xlabel("image-steps / authors' 100")
        ax.set_ylabel("agreement with the authors' run")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{what}: agreement against cost" + ("\n" if cols == 1 else " ") + "(dashed: the goals)"
                 + (f"\n{sets}" if sets else ""), fontsize=11 if cols > 1 else 10)
    fig.tight_layout()
    return fig


@STUDIES.register
class CascadeFrontier(MergedStudy):
    name = "cascade_frontier"
    config = CascadeFrontierConfig
    title = "Cascade settings: the measured frontier"
    command = "python -m experiments.cascade_frontier [inversion=<screen schedule>]"
    section = ReportSection(title, ("cascade_frontier.csv", "cascade_frontier_holdout.csv"),  # + fresh sets
                            (f"{FIGURE}.png", f"{FIGURE}_holdout.png"), command, order=60.5)

    def targets(self, cfg: Any, ctx: Context) -> tuple[dict, dict[str, Any]]:
        """The protocol's sets and the inspected models (name -> a loaded decoder, or None: loaded by name)."""
        return ctx.image_sets(), {name: None for name in ctx.inspected_models()}

    def run(self, cfg: Any, ctx: Context) -> StudyResult:
        started = time.time()
        record = self.checked_sets_record(cfg, ctx)  # the sets of :meth:`targets`
        speed_text = zoo.machine_speed(1)  # beside the wall time (benchmarks/decoder_speed.py)
        screen_name = ctx.inversion_preset()
        if screen_name == "paper":
            raise ValueError("cascade_frontier: the screen is the `inversion` node; the authors' schedule screens "
                             "nothing (choose a faster one, e.g. inversion=fast_rms)")
        pinned_settings(cfg)  # a bad pinned entry fails before any inversion
        sets, models = self.targets(cfg, ctx)
        rows = []
        for name, ae in models.items():
            rows.extend(measure(cfg, ctx, name, sets, screen_name, ae=ae))
        new = pd.DataFrame(rows)[COLUMNS]
        preset = ctx.preset("experiment")  # a preset beyond the config's default is part of the command
        command = (f"python -m experiments.{self.name} experiment={preset}" if preset not in (None, "table1_zoo")
                   else self.command)
        p = ctx.protocol()
        told = notes(p, new, time.time() - started, speed_text, command)
        stem = Path(cfg.out)
        title = self.title
        return StudyResult(new, stem=stem, tables={"": new},
                           merge=Merge(KEY, lambda table: markdown(table, told, title), sets=record),
                           figures=[FigureOut(figure(new, fresh_sets(p)), [Path(cfg.outputs.figures) / stem.name])])
