"""Score files of images against one inspected model: images -> a method -> results store.

This is the one path from a list of image files to per-image scores, for every method
(:mod:`latenttracer.methods`); the CLI, the Hydra entry points and the benchmarks all use it. :class:`Tracer` adds
a threshold, early exit and verdicts on top (``latenttracer trace``); :func:`attribute` runs one per inspected
model and names, per image, the model that made it (``latenttracer attribute``). Results are
keyed on (image content sha256, model name, run hash); the run hash covers the method and its settings, the
image preprocessing and a fingerprint of the autoencoder weights, so a rerun skips every image already scored,
and a run killed half-way resumes where it stopped (each batch is written to the store atomically as soon as
it finishes). The default method is LatentTracer with the given :class:`InversionConfig`.

Batches: ``batch_size="auto"`` picks the first batch from the model's resolution and the device's free memory
(:mod:`latenttracer.memory`; 64 on CPU). On an out-of-memory error the batch is halved and the same images are
tried again (logged); batches already finished are in the store and are kept.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from latenttracer.autoencoders import Autoencoder, load_autoencoder
from latenttracer.early_exit import DEFAULT_RISK, ExitPolicy, learn_exit_policy
from latenttracer.images import BadImageError, ImageOptions, file_sha256, load_images
from latenttracer.inversion import (  # noqa: F401
    InversionConfig,
    image_seed,
    latent_from_bytes,
    latent_to_bytes,
    resolve_lr_scale,
)
from latenttracer.memory import auto_batch_size, is_out_of_memory
from latenttracer.methods import LatentTracer, Method, get_method
from latenttracer.store import ResultStore

__all__ = ["CSV_COLUMNS", "EXIT_COLUMNS", "RESULT_COLUMNS", "Tracer", "as_method", "attribute", "check_early_exit",
           "image_seed", "run_hash", "score_images", "steps_per_second"]

log = logging.getLogger(__name__)

RESULT_COLUMNS = ["path", "sha256", "score", "init_loss", "best_step", "status", "reason", "seconds", "cached"]
# The columns of ``latenttracer trace``'s CSV (:meth:`Tracer.table`): these, the method's components, the exit ones.
CSV_COLUMNS = ["path", "score", "init_loss", "best_step", "status", "belonging", "reason", "sha256", "seconds",
               "cached"]
EXIT_COLUMNS = ["exit_step", "exit_reason", "steps_run"]


def as_method(method: Method | str | InversionConfig | None, config: InversionConfig | None = None) -> Method:
    """A :class:`Method` from a method, a method name, an inversion config (LatentTracer) or ``None``."""
    if isinstance(method, Method):
        return method
    if isinstance(method, InversionConfig):
        return LatentTracer(method)
    if isinstance(method, str):
        return get_method(method)
    if method is None:
        return LatentTracer(config if config is not None else InversionConfig())
    raise TypeError(f"method: expected a Method, a method name or an InversionConfig, got {type(method).__name__}")


def run_hash(ae: Autoencoder, config: InversionConfig | Method, image_options: ImageOptions) -> str:
    """The cache key part that says *how* an image was scored by this model (any method)."""
    return as_method(config).run_hash(ae, image_options)


def score_images(
    ae: Autoencoder,
    paths: Sequence[str | Path],
    config: InversionConfig | None = None,
    *,
    method: Method | str | None = None,
    batch_size: int | str | None = None,
    store: ResultStore | None = None,
    image_options: ImageOptions = ImageOptions(),
    on_bad_image: str = "error",
    progress: bool = True,
    desc: str | None = None,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Score every file in ``paths``; return (one row per scored path, [(path, reason) skipped]).

    ``method`` (a :class:`Method` or a name) defaults to LatentTracer with ``config`` (give one or the other).
    ``batch_size`` defaults to the method's (``config.batch_size`` for LatentTracer, else ``"auto"``).
    Rows carry ``path, sha256, score, init_loss, best_step, status, reason, seconds, cached``, the loss
    trajectory (``trajectory``, one float per scored step; inversion methods only) and the method's component
    columns (e.g. AEDR's ``loss_1, loss_2, homogeneity``); inversion methods also store the latent of the scored
    step (``best_latent``, :func:`latent_to_bytes`; rows cached before it existed have none). With a
    ``store``, finished images are taken from it and new results are appended batch by batch; without one,
    everything is computed in memory.
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image: {on_bad_image!r} is not one of ['error', 'skip']")
    if method is not None and config is not None:
        raise ValueError("score_images: give either config (LatentTracer) or method, not both")
    method = as_method(method, config)
    paths = [str(p) for p in paths]
    key = method.run_hash(ae, image_options)
    skipped: list[tuple[str, str]] = []
    shas: dict[str, str] = {}
    for p in paths:
        try:
            shas[p] = file_sha256(p)
        except OSError as err:
            bad = BadImageError(p, f"cannot read file ({err.strerror or err})")
            if on_bad_image == "error":
                raise bad from err
            skipped.append((p, bad.reason))
    done = store.done(ae.name, key) if store is not None else set()
    todo, seen = [], set(done)
    for p, sha in shas.items():
        if sha not in seen:
            todo.append(p)
            seen.add(sha)

    fresh: list[dict] = []
    if todo:
        method.prepare(ae)
        size = batch_size if batch_size is not None else method.batch_size
        if size == "auto":
            size = auto_batch_size(ae, ae.resolution, ae.device, backward=method.needs_grad, dtype=ae.dtype)
        elif isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batch_size: must be an integer >= 1 or 'auto', got {size!r}")
        fresh = _score_todo(ae, method, todo, key, int(size), store, image_options, on_bad_image, skipped,
                            tqdm(total=len(todo), desc=desc or f"{method.label} {ae.name}", unit="img",
                                 disable=not progress))

    skipped_paths = {p for p, _ in skipped}
    by_sha: dict[str, dict] = {row["sha256"]: {**row, "cached": False} for row in fresh}
    if store is not None:
        wanted = [s for p, s in shas.items() if p not in skipped_paths and s not in by_sha]
        if wanted:
            old = store.lookup(ae.name, key, wanted)
            for sha, row in old.iterrows():
                by_sha[sha] = {**row.to_dict(), "sha256": sha, "cached": True}
    out = []
    for p, sha in shas.items():
        if p in skipped_paths or sha not in by_sha:
            continue
        row = dict(by_sha[sha])
        row["path"] = p
        out.append(row)
    frame = pd.DataFrame(out)
    if frame.empty:
        frame = pd.DataFrame(columns=RESULT_COLUMNS + ["trajectory", *method.components])
    return frame, skipped


def _score_todo(ae: Autoencoder, method: Method, todo: list[str], key: str, size: int, store: ResultStore | None,
                image_options: ImageOptions, on_bad_image: str, skipped: list[tuple[str, str]], bar) -> list[dict]:
    """Score ``todo`` in batches of ``size``, halving the batch on out-of-memory errors."""
    fresh: list[dict] = []
    start = 0
    while start < len(todo):
        chunk = todo[start:start + size]
        images, records, bad = load_images(chunk, ae.resolution, image_options, on_bad_image=on_bad_image)
        if records:
            t0 = time.perf_counter()
            try:
                results = method.score_batch(ae, images, records)
            except Exception as err:
                if not is_out_of_memory(err) or len(chunk) == 1:
                    raise
                del images
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                size = max(1, len(chunk) // 2)
                log.warning("out of memory with a batch of %d images (%s); retrying with batches of %d",
                            len(chunk), type(err).__name__, size)
                continue
            per_image = (time.perf_counter() - t0) / len(records)
            rows = [{"path": r.path, "sha256": r.sha256, "model": ae.name, "config_hash": key, **res,
                     "seconds": per_image, "conversions": ";".join(r.conversions)}
                    for r, res in zip(records, results)]
            if store is not None:
                store.append(rows)
            fresh.extend(rows)
        skipped.extend(bad)
        start += len(chunk)
        bar.update(len(chunk))
    bar.close()
    return fresh


def steps_per_second(frame: pd.DataFrame, config: InversionConfig) -> float:
    """Image-steps per second over the freshly computed rows (NaN when all were cached)."""
    fresh = frame[~frame["cached"].astype(bool)] if "cached" in frame else frame
    total = float(fresh["seconds"].sum()) if len(fresh) else 0.0
    return len(fresh) * config.scored_steps / total if total > 0 else math.nan


def check_early_exit(method: Method) -> None:
    """A one-line error unless ``method`` can exit early: it runs the inversion loop and its score is the loop's
    running minimum (checked before any work)."""
    from latenttracer.methods import METHODS

    takes = [n for n in METHODS.names() if METHODS.get(n).settings_type() is InversionConfig]
    if method.name not in takes:
        raise ValueError(f"--method {method.name} does not take --early-exit (methods that take it: "
                         f"{', '.join(takes)})")
    type(method).from_settings(replace(method.config, early_exit=True, exit_threshold=1.0))


@dataclass
class Tracer:
    """Trace images against one inspected model, the one path every caller takes (``trace``, ``attribute``):

        tracer = Tracer(ae, method, store=ResultStore(cache))
        tracer.calibrate(own_images, target_tpr=0.95)           # the threshold (+ perturbed copies: ``family``)
        tracer.early_exit(risk=0.05)                             # the exit rule learnt from calibration's full runs
        frame, skipped = tracer.trace(images)                    # one row per image, with its verdict
        lines = tracer.summary(frame)

    ``calibrate`` resolves ``lr_scale="latent_rms"`` on the calibration images first (the rate is in units of the
    model's latent RMS on its own images); a threshold given by hand (``threshold=``) allows only the exact exit.
    ``log``: where the one-line notes go (what was calibrated on, what the exit rule allows)."""

    ae: Autoencoder
    method: Method
    store: ResultStore | None = None
    image_options: ImageOptions = field(default_factory=ImageOptions)
    batch_size: int | str | None = None
    on_bad_image: str = "error"
    progress: bool = True
    threshold: float | None = None
    log: Callable[[str], None] = print
    calibration: pd.DataFrame | None = field(default=None, repr=False)  # the calibration rows (status ok)
    policy: ExitPolicy | None = None

    def score(self, paths: Sequence[str | Path], desc: str = "trace", method: Method | None = None):
        """:func:`score_images` with this tracer's settings: (rows, skipped)."""
        return score_images(self.ae, paths, method=method or self.method, batch_size=self.batch_size,
                            store=self.store, image_options=self.image_options, on_bad_image=self.on_bad_image,
                            progress=self.progress, desc=desc)

    def calibrate(self, paths: Sequence[str | Path], target_tpr: float = 0.95, family: Sequence = (),
                  perturbed_root: str | Path | None = None, where: str = "") -> float:
        """Set the threshold at ``target_tpr`` on ``paths`` (images known to come from the model), and with a
        perturbation ``family`` on their perturbed copies too, pooled (:mod:`latenttracer.reencoding`)."""
        from latenttracer.reencoding import calibration_sets, pooled_threshold

        paths = [Path(p) for p in paths]
        if not paths:
            raise ValueError(f"calibration {where}: no image")
        config = getattr(self.method, "config", None)
        if getattr(config, "lr_scale", "absolute") != "absolute":
            images, _, _ = load_images(paths, self.ae.resolution, self.image_options, on_bad_image="skip")
            if images.shape[0] == 0:
                raise ValueError(f"--lr-scale {config.lr_scale}: no usable image in {where}")
            self.method = type(self.method).from_settings(resolve_lr_scale(config, self.ae, images))
            self.log(f"{self.ae.name}: --lr-scale {config.lr_scale}: lr {config.lr:g} x latent RMS "
                     f"{self.method.config.lr / config.lr:.4g} = {self.method.config.lr:.4g} (on "
                     f"{images.shape[0]} calibration images)")
        sets = calibration_sets(paths, family, perturbed_root) if family else {"clean": paths}
        frames, n_bad = [], 0
        for name, set_paths in sets.items():
            rows, bad = self.score(set_paths, f"calibrate {self.ae.name}" + ("" if name == "clean" else f" {name}"))
            frames.append(_ok(rows).assign(calibration_set=name))
            n_bad += len(bad)
        self.calibration = pd.concat(frames, ignore_index=True)
        if not len(self.calibration):
            raise ValueError(f"calibration {where}: no image could be scored")
        by_set = {k: g["score"] for k, g in self.calibration.groupby("calibration_set")}
        self.threshold = pooled_threshold(self.method, by_set, target_tpr)
        rule = (f"Gaussian KDE, {target_tpr:.0%} quantile" if self.method.calibration == "kde"
                else f"{target_tpr:.0%} TPR")
        what = f"{len(self.calibration)} images from {where}" + (
            f" and their perturbed copies ({', '.join(p.name for p in family)}), pooled" if family else "")
        self.log(f"{self.ae.name}: threshold {self.threshold:.4g}: calibrated at {rule} on {what}"
                 + (f" ({n_bad} skipped)" if n_bad else ""))
        return self.threshold

    def early_exit(self, risk: float = DEFAULT_RISK) -> ExitPolicy:
        """Turn early exit on: the exit rule at ``risk`` learnt from the clean calibration images' full runs
        (:func:`latenttracer.early_exit.learn_exit_policy`), or the exact exit only with a threshold given by
        hand. Raises ValueError for a method whose score is not the inversion loop's running minimum."""
        config = getattr(self.method, "config", None)
        if not isinstance(config, InversionConfig):
            raise ValueError(f"--method {self.method.name} does not take --early-exit (it runs no inversion loop)")
        if self.threshold is None:
            raise ValueError("early exit needs a threshold: calibrate on the model's own images, or give one")
        steps = config.scored_steps
        trajectories = [] if self.calibration is None else [
            list(t) for t, s in zip(self.calibration["trajectory"], self.calibration["calibration_set"])
            if s == "clean" and t is not None and len(t) == steps]
        if self.calibration is not None and not trajectories:
            raise ValueError("early exit: no full-run trajectory among the calibration scores")
        if trajectories:
            self.policy = learn_exit_policy(trajectories, self.threshold, risk, config)
            self.log(f"early exit: {self.policy.allows()}")
            fast = self.policy.apply(config)
        else:
            self.log(f"early exit: exact part only: an image stops once its running minimum is <= "
                     f"{self.threshold:.4g} (a threshold given by hand); every other image runs to the end")
            fast = replace(config, early_exit=True, exit_threshold=float(self.threshold))
        self.method = type(self.method).from_settings(fast)  # a method that cannot exit early says so here
        return self.policy

    def trace(self, paths: Sequence[str | Path]) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
        """Score ``paths``; the rows carry ``belonging`` (empty without a threshold) and, with early exit,
        ``exit_reason``; a skipped image is a row with ``status == "skipped"``. Rows in the order of ``paths``."""
        frame, skipped = self.score(paths)
        frame["belonging"] = None if self.threshold is None else [
            float(s) <= self.threshold if st == "ok" else None for s, st in zip(frame["score"], frame["status"])]
        if self.exits:
            frame["exit_reason"] = frame["exit"].fillna("") if "exit" in frame else ""
        if skipped:
            frame = pd.concat([frame, pd.DataFrame([{"path": p, "status": "skipped", "reason": r}
                                                    for p, r in skipped])], ignore_index=True)
        order = {str(p): i for i, p in enumerate(paths)}
        frame = frame.sort_values("path", key=lambda s: s.map(lambda p: order.get(p, len(order))), kind="stable")
        return frame.reset_index(drop=True), skipped

    def table(self, frame: pd.DataFrame) -> pd.DataFrame:
        """:meth:`trace`'s rows with the columns of ``trace``'s CSV: :data:`CSV_COLUMNS`, the method's components
        and, with early exit, :data:`EXIT_COLUMNS`."""
        columns = CSV_COLUMNS + list(self.method.components) + (EXIT_COLUMNS if self.exits else [])
        return frame.reindex(columns=columns)

    @property
    def exits(self) -> bool:
        return bool(getattr(getattr(self.method, "config", None), "early_exit", False))

    def report(self, frame: pd.DataFrame, n_images: int, n_skipped: int, seconds: float, device: str) -> list[str]:
        """What ``trace`` prints after a run of ``n_images`` (``n_skipped`` skipped) in ``seconds``: the counts,
        LatentTracer's speed on ``device``, then :meth:`summary`."""
        n_ok = int((frame["status"] == "ok").sum())
        lines = [f"{n_images} images: {n_ok} scored, {int((frame['status'] == 'failed').sum())} failed, "
                 f"{n_skipped} skipped; {int(frame['cached'].fillna(False).astype(bool).sum())} from cache; "
                 f"{seconds:.1f}s"]
        if n_ok and isinstance(self.method, LatentTracer):
            rate = steps_per_second(frame[frame["status"] != "skipped"], self.method.config)
            if rate == rate:
                lines.append(f"speed: {rate:.0f} image-steps/s on {device}")
        return lines + self.summary(frame)

    def summary(self, frame: pd.DataFrame) -> list[str]:
        """What ``trace`` prints after a run: scores, early exits, verdicts."""
        ok = _ok(frame)
        lines = []
        if len(ok) and self.exits:
            counts = ok["exit_reason"].value_counts()
            lines.append(f"early exit: {float(ok['steps_run'].mean()):.1f} of {self.method.config.scored_steps} "
                         f"steps per image on average; {int(counts.get('threshold', 0))} stopped below the "
                         f"threshold, {int(counts.get('bound', 0))} above the bound, {int(counts.get('', 0))} ran "
                         "to the end")
        if len(ok):
            s = ok["score"].astype(float)
            lines.append(f"score ({self.method.label}): median {s.median():.3g}, min {s.min():.3g}, max "
                         f"{s.max():.3g}")
        if self.threshold is None:
            lines.append("no threshold given: 'belonging' left empty (use --threshold or --calibrate)")
        else:
            lines.append(f"belonging (score <= {self.threshold:.4g}): {int((ok['belonging'] == True).sum())} of "  # noqa: E712
                         f"{len(ok)}")
        return lines


def attribute(models: Sequence[str | Path], calibration: Sequence[Sequence[str | Path]],
              paths: Sequence[str | Path], method: Method, *, target_tpr: float = 0.95, normalise: str = "ratio",
              where: Sequence[str] | None = None, load_options: Mapping | None = None,
              **tracer_options) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """Which of ``models`` made each of ``paths``, or none (:func:`latenttracer.attribution.attribute`).

    Each model is loaded in turn (``load_options`` for :func:`~latenttracer.autoencoders.load_autoencoder`),
    calibrated on its own images (``calibration``, one list per model, in the same order; ``where`` names each
    list in the notes) with its own rate and threshold, and scores ``paths``; ``tracer_options`` go to
    :class:`Tracer` (store, batch size, ``log``, ...). Returns (one row per path: ``path``, ``predicted`` and the
    per-model columns; skipped paths last, with no prediction), the model names (directory base names) and
    {skipped path: reason}."""
    from latenttracer.attribution import NONE
    from latenttracer.attribution import attribute as attribute_frame
    from latenttracer.methods.flags import describe

    if len(calibration) != len(models):
        raise ValueError(f"attribute: {len(models)} models but {len(calibration)} calibration sets")
    where = list(where) if where is not None else [f"calibration set {i + 1}" for i in range(len(models))]
    log = tracer_options.get("log", print)
    scores, cal_scores, thresholds, skipped_all = {}, {}, {}, {}
    for source, cal_where, cal_paths in zip(models, where, calibration):
        ae = load_autoencoder(source, **dict(load_options or {}))
        if ae.name in scores:
            raise ValueError(f"attribute: two --model share the name {ae.name!r} (names are directory base names)")
        if ae.name == NONE:
            raise ValueError(f"attribute: a model may not be called {NONE!r}")
        log(f"inspected model: {ae.name} ({ae.family}, {ae.resolution}px); {describe(method)}")
        tracer = Tracer(ae, method, **tracer_options)  # each model's own rate (lr_scale) and threshold
        thresholds[ae.name] = tracer.calibrate(cal_paths, target_tpr, where=cal_where)
        cal_scores[ae.name] = tracer.calibration["score"].to_numpy()
        frame, skipped = tracer.score(paths, f"attribute {ae.name}")
        ok = _ok(frame)
        scores[ae.name] = pd.Series(ok["score"].to_numpy(dtype=float), index=ok["path"].astype(str))
        skipped_all.update(dict(skipped))
        del ae, tracer
    wide = pd.DataFrame(scores).reindex([str(p) for p in paths if str(p) not in skipped_all])
    out = attribute_frame(wide, cal_scores, thresholds, normalise)
    out.insert(0, "path", out.index)
    if skipped_all:
        out = pd.concat([out, pd.DataFrame([{"path": p, "predicted": None} for p in skipped_all])],
                        ignore_index=True)
    return out.reset_index(drop=True), list(scores), skipped_all


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"]
