"""``latenttracer trace`` and ``latenttracer attribute``: verdicts for a folder of images.

    latenttracer trace --model zoo/kl-a --images photos/ --out scores.csv --calibrate own_samples/
    latenttracer trace --method aedr --model zoo/kl-a --images photos/ --out scores.csv --calibrate own/
    latenttracer attribute --model zoo/kl-a --calibrate own_a/ --model zoo/kl-b --calibrate own_b/ \\
        --images photos/ --out attribution.csv

Writes one CSV row per image (``path,score,init_loss,best_step,status,belonging,...``); ``belonging`` is
empty unless a threshold is given (``--threshold``) or calibrated on images known to come from the model
(``--calibrate DIR``: the threshold is set at the ``--target-tpr`` point, 95% by default). Scores are cached
(``--cache``, default ``$LATENTTRACER_CACHE`` or ``~/.cache/latenttracer/scores``), so a rerun, or a run
interrupted and started again, recomputes nothing already done. ``--method`` picks the scoring method
(``latenttracer`` default, ``ronan``, ``aedr``, ``aeroblade``, or one from a plugin file: ``--plugin FILE``,
repeatable, or ``$LATENTTRACER_PLUGINS``); its options are flags built from the method's settings dataclass, and
each method calibrates its own way (quantile, or AEDR's Gaussian KDE). Every output path is checked before any
scoring. ``trace --early-exit`` stops each image once its verdict is known; ``trace --cascade SCREEN`` runs a
faster screen schedule first and the method's own schedule only on the images the screen cannot decide
(docs/deployment.md). ``attribute`` scores every image under every ``--model`` (one ``--calibrate`` folder
per model, same order) and names the model with the strongest claim among those whose threshold the image
passes, or ``none``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from latenttracer import __version__, atomic

DEFAULT_CACHE = Path(os.environ.get("LATENTTRACER_CACHE", Path.home() / ".cache" / "latenttracer" / "scores"))
CSV_COLUMNS = ["path", "score", "init_loss", "best_step", "status", "belonging", "reason", "sha256", "seconds",
               "cached"]


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer >= 1, got {text!r}")
    return value


def _add_method_args(t: argparse.ArgumentParser) -> None:
    """Method choice and every registered method's options (shared by trace and attribute)."""
    from latenttracer.methods import METHODS
    from latenttracer.methods.flags import method_flags

    m = t.add_argument_group("method", "each option flag says which methods take it and their defaults")
    m.add_argument("--method", choices=METHODS.names(), default="latenttracer",
                   help="scoring method (default latenttracer)")
    for flag in method_flags().values():
        kwargs: dict[str, Any] = {"dest": flag.dest, "default": None, "help": flag.help_text()}
        if flag.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = flag.convert
            if flag.kind == "values":
                kwargs["nargs"] = "+"
            kwargs["metavar"] = flag.name.upper()
            all_choices = [v for c in flag.choices.values() for v in c]
            if all_choices and len(flag.choices) == len(flag.defaults):  # only Literal fields: list the choices
                kwargs["metavar"] = "{" + ",".join(dict.fromkeys(map(str, all_choices))) + "}"
        try:
            m.add_argument(flag.flag, **kwargs)
        except argparse.ArgumentError as err:
            raise TypeError(f"method option {flag.name} ({', '.join(flag.methods)}): {flag.flag} is already a "
                            f"flag of {t.prog} ({err})") from err


def _add_common_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("--target-tpr", type=float, default=0.95, help="TPR on --calibrate images (default 0.95)")
    t.add_argument("--batch-size", type=_batch_size, default="auto",
                   help="images per batch, or auto (from free GPU memory; 64 on CPU); halved on out-of-memory")
    t.add_argument("--device", default="auto")
    t.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    t.add_argument("--resolution", type=int, help="override the model's native resolution")
    t.add_argument("--resize", choices=["native", "authors"], default="native",
                   help="native: to the model's size; authors: 512x512 area first, as the authors' code")
    t.add_argument("--alpha-background", choices=["black", "white"], default="black")
    t.add_argument("--on-bad-image", choices=["error", "skip"], default="error")
    t.add_argument("--recursive", action="store_true", help="also look in subfolders")
    t.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="results store directory")
    t.add_argument("--no-cache", action="store_true", help="compute everything, store nothing")
    t.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="a Python file (or dotted module) that registers methods; repeatable (also: "
                        "$LATENTTRACER_PLUGINS, paths separated by the OS path separator)")
    _add_method_args(t)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latenttracer", description="Trace images back to a latent generative model.")
    p.add_argument("--version", action="version", version=f"latenttracer {__version__}")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="a Python file (or dotted module) that registers methods; repeatable")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trace", help="score a folder of images against one inspected model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--model", required=True, help="pipeline dir, hub id, or a dir with one saved autoencoder")
    t.add_argument("--images", required=True, type=Path, help="folder of images to trace")
    t.add_argument("--out", required=True, type=Path, help="CSV file to write")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="belonging iff score <= threshold")
    g.add_argument("--calibrate", type=Path, metavar="DIR", help="images known to come from the model")
    t.add_argument("--calibrate-perturb", metavar="FAMILY",
                   help="with --calibrate: also score perturbed copies of the calibration images and set the "
                        "threshold on clean and perturbed pooled, e.g. jpeg:90..70,downscale:0.5 (a range a..b: "
                        "the strengths of AEROBLADE's grid between a and b; docs/deployment.md)")
    t.add_argument("--cascade", metavar="SCREEN",
                   help="two stages: a screen schedule with early exit decides the clear images, the method's own "
                        "schedule (with early exit) the rest; SCREEN: the inversion settings the screen changes, "
                        "key=value separated by commas, e.g. steps=25,lr=0.175,lr_scale=latent_rms; needs "
                        "--calibrate (docs/deployment.md)")
    t.add_argument("--band-margin", type=float, metavar="M",
                   help="with --cascade: widen the band of screen scores sent to the method's own schedule by this "
                        "factor (>= 1; default: latenttracer.cascade.DEFAULT_BAND_MARGIN, 1.1)")
    t.add_argument("--screen-margin", type=float, metavar="M",
                   help="with --cascade: the screen's early-exit margin (>= 1; default: --exit-margin, which then "
                        "sets both stages'); results/cascade_frontier.md measures the pairs")
    t.add_argument("--negatives", type=Path, metavar="DIR",
                   help="with --early-exit and --calibrate: images known NOT to come from the model (other "
                        "generators, photos); their full runs set a per-step accept bound, so that an image lower "
                        "than any of them (and than every rejected calibration image) stops early as belonging")
    t.add_argument("--accept-margin", type=float, metavar="M",
                   help="with --negatives: the accept bound is divided by this (>= 1; default 1.0: no extra "
                        "room); results/early_exit.md measures 1.2")
    _add_common_args(t)
    t.add_argument("--html", type=Path, metavar="HTML", help="also write an HTML report (images in <stem>_files/)")

    a = sub.add_parser("attribute", help="which of several inspected models made each image, or none",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--model", action="append", required=True,
                   help="an inspected model (repeat; its name is the directory's base name)")
    a.add_argument("--calibrate", type=Path, action="append", required=True, metavar="DIR",
                   help="images known to come from the --model at the same position (repeat, same order)")
    a.add_argument("--images", required=True, type=Path, help="folder of images to attribute")
    a.add_argument("--out", required=True, type=Path, help="CSV file to write")
    a.add_argument("--normalise", choices=["ratio", "pvalue"], default="ratio",
                   help="ratio: score / threshold (default); pvalue: empirical p-value among calibration scores")
    _add_common_args(a)
    return p


def method_from_args(args: argparse.Namespace):
    """The :class:`~latenttracer.methods.Method` the command line asks for. A flag the chosen method does not
    take, or a value it does not allow, is an error naming the flag, the method and the methods that take it."""
    from latenttracer.methods import METHODS, get_method
    from latenttracer.methods.base import SHARED_OPTIONS
    from latenttracer.methods.flags import method_flags

    name = args.method
    flags = method_flags()
    given = {f.name: getattr(args, f.dest) for f in flags.values() if getattr(args, f.dest, None) is not None}
    given = {k: tuple(v) if flags[k].kind == "values" else v for k, v in given.items()}
    for key, value in given.items():
        flag = flags[key]
        if name not in flag.defaults:
            raise ValueError(f"--method {name} does not take {flag.spelled(value)} (methods that take "
                             f"{flag.flag}: {', '.join(flag.methods)})")
        allowed = flag.choices.get(name)
        if allowed is not None and flag.kind == "value" and value not in allowed:
            others = [m for m, c in flag.choices.items() if value in c]
            raise ValueError(f"--method {name} takes {flag.flag} {'|'.join(map(str, allowed))}, not {value}"
                             + (f" ({value} is for {', '.join(others)})" if others else ""))
    takes = {f.name for f in METHODS.get(name).option_fields()}
    shared = {"device": args.device, "dtype": args.dtype}
    if args.batch_size != "auto":
        shared["batch_size"] = args.batch_size
    options = {k: v for k, v in shared.items() if k in takes and k in SHARED_OPTIONS}
    return get_method(name, {**given, **options})


def _describe(method) -> str:
    return f"{method.label}: " + " ".join(f"{k}={v}" for k, v in method.identity().items())


def _calibration_text(method, target_tpr: float) -> str:
    if method.calibration == "kde":
        return f"Gaussian KDE, {target_tpr:.0%} quantile"
    return f"{target_tpr:.0%} TPR"


def check_writable(path: Path, flag: str, *, folder: bool = False) -> None:
    """A one-line error unless ``path`` (a file, or a folder with ``folder``) can be written: no part of it is a
    file where a folder is needed, and its nearest existing folder takes a new file."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        want, got = ("folder", "file") if folder else ("file", "folder")
        raise ValueError(f"{flag} {path}: is a {got}, not a {want}")
    probe = path if folder and path.exists() else path.parent
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{flag} {path}: {probe} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".latenttracer-write-check-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot write in {probe} ({err.strerror or err})") from err


def _check_outputs(args: argparse.Namespace) -> None:
    """Every path the command will write, checked before any work."""
    check_writable(args.out, "--out")
    if getattr(args, "html", None):
        check_writable(args.html, "--html")
        check_writable(args.html.parent / f"{args.html.stem}_files", "--html", folder=True)
    if not args.no_cache:
        check_writable(args.cache, "--cache", folder=True)


def _setup(args: argparse.Namespace):
    from latenttracer.images import ImageOptions
    from latenttracer.store import ResultStore

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    method = method_from_args(args)
    options = ImageOptions(resize=args.resize, alpha_background=args.alpha_background)
    store = None if args.no_cache else ResultStore(args.cache)
    return method, options, store


def _needs_calibration(method) -> bool:
    """Whether ``method`` runs the inversion with a rate in units of the model's latent RMS (``--lr-scale
    latent_rms``), which is measured on the ``--calibrate`` images."""
    return getattr(getattr(method, "config", None), "lr_scale", "absolute") != "absolute"


def _resolve_lr(method, ae, cal_dir: Path, args, options, stage: str = ""):
    """``method`` with ``--lr-scale latent_rms`` turned into an absolute rate on ``ae``'s calibration images
    (``stage``: named in the stderr line, e.g. ``screen`` for the cascade's screen schedule)."""
    if not _needs_calibration(method):
        return method
    from latenttracer.images import list_images, load_images
    from latenttracer.inversion import resolve_lr_scale

    images, _, _ = load_images(list_images(cal_dir, recursive=args.recursive), ae.resolution, options,
                               on_bad_image="skip")
    if images.shape[0] == 0:
        raise ValueError(f"--lr-scale {method.config.lr_scale}: no usable image in --calibrate {cal_dir}")
    resolved = type(method).from_settings(resolve_lr_scale(method.config, ae, images))
    print(f"{ae.name}{f' ({stage})' if stage else ''}: --lr-scale {method.config.lr_scale}: lr {method.config.lr:g} "
          f"x latent RMS "
          f"{resolved.config.lr / method.config.lr:.4g} = {resolved.config.lr:.4g} (on {images.shape[0]} "
          f"--calibrate images)", file=sys.stderr)
    return resolved


def _calibration_scores(ae, method, cal_dir: Path, args, options, store, family=(), stage: str = ""):
    """Score ``cal_dir`` (images known to come from ``ae``'s model; with a perturbation ``family``, their perturbed
    copies too, :mod:`latenttracer.calibration`) with ``method``. Returns the rows (every set, ``status == "ok"``,
    column ``calibration_set``) and how many images were skipped."""
    import pandas as pd

    from latenttracer.calibration import calibration_sets
    from latenttracer.images import list_images
    from latenttracer.tracing import score_images

    clean = list_images(cal_dir, recursive=args.recursive)
    sets = calibration_sets(clean, family, _perturbed_root(args)) if family else {"clean": clean}
    frames, n_bad = [], 0
    for name, paths in sets.items():
        cal, cal_bad = score_images(ae, paths, method=method, batch_size=args.batch_size, store=store,
                                    image_options=options, on_bad_image=args.on_bad_image, progress=not args.quiet,
                                    desc=f"calibrate {ae.name}" + (f" {stage}" if stage else "")
                                    + ("" if name == "clean" else f" {name}"))
        frames.append(cal[cal["status"] == "ok"].assign(calibration_set=name))
        n_bad += len(cal_bad)
    ok = pd.concat(frames, ignore_index=True)
    if len(ok) == 0:
        raise ValueError(f"--calibrate {cal_dir}: no image could be scored" + (f" ({stage})" if stage else ""))
    return ok, n_bad


def _threshold(ae, method, cal_dir: Path, args, options, store, family=()) -> tuple[float, object]:
    """Score ``cal_dir`` (:func:`_calibration_scores`) and calibrate the method's threshold on the scores. Returns
    the threshold and the calibration rows (every set, ``status == "ok"``)."""
    from latenttracer.calibration import pooled_threshold

    ok, n_bad = _calibration_scores(ae, method, cal_dir, args, options, store, family)
    threshold = pooled_threshold(method, {k: g["score"] for k, g in ok.groupby("calibration_set")}, args.target_tpr)
    what = f"{len(ok)} images from {cal_dir}"
    if family:
        what = (f"{len(ok)} images: {cal_dir} and its perturbed copies ({', '.join(p.name for p in family)}), "
                "pooled")
    print(f"{ae.name}: threshold {threshold:.4g}: calibrated at {_calibration_text(method, args.target_tpr)} on "
          f"{what}" + (f" ({n_bad} skipped)" if n_bad else ""), file=sys.stderr)
    return threshold, ok


def _exit_method(method, threshold: float, calibration, args, ae=None, options=None, store=None):
    """The method with early exit on; says on stderr where its threshold (and bounds) came from."""
    from latenttracer.early_exit import learn_bounds

    if calibration is None:
        print(f"early exit: exact part only: an image stops once its running minimum is <= {threshold:.4g} "
              "(--threshold); every other image runs to the end", file=sys.stderr)
        return _with_early_exit(method, threshold)
    trajectories = [list(t) for t in calibration["trajectory"] if t is not None and len(t)]
    n_steps = method.config.scored_steps
    trajectories = [t for t in trajectories if len(t) == n_steps]
    if not trajectories:
        raise ValueError(f"--early-exit: no full-run trajectory among the --calibrate {args.calibrate} scores")
    negatives = None if args.negatives is None else _negative_trajectories(ae, method, args, options, store)
    bounds = learn_bounds(trajectories, threshold=threshold, config=method.config, negatives=negatives)
    trend = f", trend {method.config.exit_trend:g}" if method.config.exit_trend else ""
    print(f"early exit: threshold {threshold:.4g} and per-step bounds (margin {method.config.exit_margin:g}{trend}) "
          f"learnt from the full runs of {len(trajectories)} calibration images (--calibrate {args.calibrate})",
          file=sys.stderr)
    if negatives is None:
        return _with_early_exit(method, threshold, bounds.ratios)
    margin = 1.0 if args.accept_margin is None else args.accept_margin
    print(f"early accept: per-step accept bound (margin {margin:g}) learnt from the full runs of {len(negatives)} "
          f"--negatives images ({args.negatives}) and the calibration images above the threshold", file=sys.stderr)
    return type(method).from_settings(bounds.apply(method.config, accept_margin=margin))


def _negative_trajectories(ae, method, args, options, store) -> list[list[float]]:
    """Full-run trajectories of the ``--negatives`` images (scored with ``method``, through the store)."""
    from latenttracer.images import list_images
    from latenttracer.tracing import score_images

    paths = list_images(args.negatives, recursive=args.recursive)
    frame, _ = score_images(ae, paths, method=method, batch_size=args.batch_size, store=store,
                            image_options=options, on_bad_image=args.on_bad_image,
                            progress=not args.quiet, desc="negatives")
    n_steps = method.config.scored_steps
    out = [list(t) for t, st in zip(frame["trajectory"], frame["status"])
           if st == "ok" and t is not None and len(t) == n_steps]
    if not out:
        raise ValueError(f"--negatives {args.negatives}: no image could be scored")
    return out


EARLY_EXIT_FLAG = "method_option_early_exit"  # the dest of --early-exit (an InversionConfig field's flag)
EXIT_COLUMNS = ["exit_step", "exit_reason", "steps_run"]


def _early_exit_request(args: argparse.Namespace) -> bool:
    """Whether ``trace --early-exit`` was asked for; checks its companions (one-line errors, before any work) and
    clears the flag so that the method is built for full runs (the calibration images run to the end)."""
    if not getattr(args, EARLY_EXIT_FLAG, None):
        return False
    _check_exits_early(args.method, "--early-exit")
    if args.threshold is None and args.calibrate is None:
        raise ValueError("--early-exit needs --calibrate DIR (threshold and per-step bounds from the calibration "
                         "images' full runs) or --threshold T (the exact part only: an image stops once its score "
                         "is <= T)")
    setattr(args, EARLY_EXIT_FLAG, None)
    return True


def _check_negatives(args: argparse.Namespace, early_exit: bool) -> None:
    """One-line errors for ``--negatives`` / ``--accept-margin`` out of place (before any work)."""
    if args.accept_margin is not None:
        if args.negatives is None:
            raise ValueError("--accept-margin needs --negatives DIR (the images the accept bound is learnt from)")
        if not (math.isfinite(args.accept_margin) and args.accept_margin >= 1):
            raise ValueError(f"--accept-margin: must be a number >= 1, got {args.accept_margin:g}")
    if args.negatives is None:
        return
    if not early_exit or args.calibrate is None:
        raise ValueError("--negatives needs --early-exit and --calibrate DIR (the accept bound joins the early-exit "
                         "bounds learnt from the calibration images' full runs)")
    from latenttracer.images import list_images

    list_images(args.negatives, recursive=args.recursive)  # fail early on an empty or missing folder


def _check_exits_early(method: str, flag_name: str) -> None:
    """A one-line error unless ``method`` runs the inversion loop (its settings have ``early_exit``)."""
    from latenttracer.methods.flags import method_flags

    flag = method_flags()["early_exit"]
    if method not in flag.defaults:
        raise ValueError(f"--method {method} does not take {flag_name} (methods that take it: "
                         f"{', '.join(flag.methods)})")


def _with_early_exit(method, threshold: float, ratios: tuple[float, ...] | None = None):
    """``method`` (an inversion method) with early exit on at ``threshold`` (and the per-step bound ratios)."""
    from dataclasses import replace

    return type(method).from_settings(replace(method.config, early_exit=True, exit_threshold=float(threshold),
                                              exit_ratios=ratios))


CASCADE_COLUMNS = ["stage", "screen_score", *EXIT_COLUMNS]
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _cascade_request(args: argparse.Namespace) -> dict[str, Any] | None:
    """The settings ``trace --cascade SCREEN`` changes for the screen (converted to their fields' types), or None
    without ``--cascade``. Checks its companions (one-line errors, before any work) and clears ``--early-exit``
    (the cascade always exits early; the method is built for full runs, as the calibration images need)."""
    if args.cascade is None:
        if args.band_margin is not None:
            raise ValueError("--band-margin needs --cascade SCREEN (it widens the band of screen scores that the "
                             "cascade sends to the method's own schedule)")
        if args.screen_margin is not None:
            raise ValueError("--screen-margin needs --cascade SCREEN (it is the screen's early-exit margin)")
        return None
    _check_exits_early(args.method, "--cascade")
    if args.calibrate is None:
        raise ValueError("--cascade needs --calibrate DIR (the band and both schedules' per-step bounds are learnt "
                         "from the calibration images' full runs under both schedules)")
    margin = args.band_margin
    if margin is not None and not (math.isfinite(margin) and margin >= 1):
        raise ValueError(f"--band-margin: must be a number >= 1, got {margin:g}")
    if args.screen_margin is not None and not (math.isfinite(args.screen_margin) and args.screen_margin >= 1):
        raise ValueError(f"--screen-margin: must be a number >= 1, got {args.screen_margin:g}")
    settings = _parse_screen(args.cascade, args.method)
    setattr(args, EARLY_EXIT_FLAG, None)
    return settings


def _parse_screen(text: str, method: str) -> dict[str, Any]:
    """``key=value,key=value`` (settings fields of ``method``) as a dict of converted values; every bad key or value
    is a one-line error naming ``--cascade`` and the key."""
    from latenttracer.inversion import _EXIT_FIELDS
    from latenttracer.methods import METHODS
    from latenttracer.methods.base import SHARED_OPTIONS
    from latenttracer.methods.flags import method_flags

    example = "e.g. --cascade steps=25,lr=0.175,lr_scale=latent_rms"
    if not text.strip():
        raise ValueError(f"--cascade: empty SCREEN; give the settings the screen changes ({example})")
    flags = method_flags()
    takes = sorted(f.name for f in METHODS.get(method).option_fields()
                   if f.name not in SHARED_OPTIONS and f.name not in _EXIT_FIELDS and f.name in flags)
    out: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise ValueError(f"--cascade {item.strip()!r}: not key=value ({example})")
        if key in _EXIT_FIELDS:
            raise ValueError(f"--cascade {key}: an early-exit setting; the cascade sets early_exit, exit_threshold "
                             "and exit_ratios itself (--exit-margin sets both stages' margin)")
        if key in SHARED_OPTIONS:
            raise ValueError(f"--cascade {key}: set for both stages by --{key.replace('_', '-')}, not by the screen")
        if key not in takes:
            raise ValueError(f"--cascade {key}: not a setting of --method {method} (its settings: {', '.join(takes)})")
        if key in out:
            raise ValueError(f"--cascade {key}: given twice")
        flag = flags[key]
        if flag.kind == "bool":
            if value.lower() not in _TRUE + _FALSE:
                raise ValueError(f"--cascade {key}={value}: not true or false")
            out[key] = value.lower() in _TRUE
        elif flag.kind == "values":
            raise ValueError(f"--cascade {key}: a list setting has no SCREEN form; set it with {flag.flag}")
        else:
            try:
                out[key] = flag.converts[method](value)  # type: ignore[misc]
            except (argparse.ArgumentTypeError, ValueError) as err:
                name = getattr(flag.base, "__name__", str(flag.base))
                why = str(err) if isinstance(err, argparse.ArgumentTypeError) else f"not a valid {name}"
                raise ValueError(f"--cascade {key}={value}: {why}") from err
    return out


def _screen_method(method, settings: dict[str, Any], text: str, screen_margin: float | None = None):
    """``method`` (the verdict schedule) with the ``--cascade`` settings (and ``--screen-margin`` as its early-exit
    margin); a value the settings refuse, or a screen that cannot exit early, is an error naming ``--cascade`` and
    the key."""
    from dataclasses import replace

    if screen_margin is not None:
        settings = {**settings, "exit_margin": float(screen_margin)}
    try:
        _with_early_exit(method, 1.0)
    except ValueError as err:
        raise ValueError(f"--cascade: {err}") from err
    for key, value in settings.items():
        try:
            _with_early_exit(type(method).from_settings(replace(method.config, **{key: value})), 1.0)
        except ValueError as err:
            raise ValueError(f"--cascade {key}={value}: {err}") from err
    try:
        screen = type(method).from_settings(replace(method.config, **settings))
        _with_early_exit(screen, 1.0)
    except ValueError as err:
        raise ValueError(f"--cascade {text}: {err}") from err
    if replace(screen.config, exit_margin=method.config.exit_margin) == method.config:
        raise ValueError(f"--cascade {text}: the screen is the method's own schedule; change what makes it faster "
                         "(e.g. steps, lr)")
    return screen


def _paired_trajectories(verdict_cal, screen_cal, verdict_steps: int, screen_steps: int):
    """The full-run trajectories of the calibration images both schedules scored, paired per (calibration set,
    path): (screen trajectories, verdict trajectories), same order."""
    def full(frame, n: int) -> dict:
        return {(c, str(p)): list(t) for c, p, t in zip(frame["calibration_set"], frame["path"], frame["trajectory"])
                if hasattr(t, "__len__") and len(t) == n}

    verdict, screen = full(verdict_cal, verdict_steps), full(screen_cal, screen_steps)
    keys = [k for k in verdict if k in screen]
    return [screen[k] for k in keys], [verdict[k] for k in keys]


def _learn_cascade(ae, method, screen, args, options, store, family):
    """Resolve both schedules' rates, score the calibration images to the end with both and learn the cascade.
    Returns (cascade, verdict method, screen method), the methods with absolute rates and early exit off."""
    from latenttracer.cascade import DEFAULT_BAND_MARGIN, learn_cascade

    method = _resolve_lr(method, ae, args.calibrate, args, options)
    threshold, calibration = _threshold(ae, method, args.calibrate, args, options, store, family=family)
    screen = _resolve_lr(screen, ae, args.calibrate, args, options, stage="screen")
    screen_cal, _ = _calibration_scores(ae, screen, args.calibrate, args, options, store, family, stage="screen")
    screen_trajectories, verdict_trajectories = _paired_trajectories(
        calibration, screen_cal, method.config.scored_steps, screen.config.scored_steps)
    if not screen_trajectories:
        raise ValueError(f"--cascade: no calibration image of --calibrate {args.calibrate} has full runs under "
                         "both schedules")
    margin = DEFAULT_BAND_MARGIN if args.band_margin is None else float(args.band_margin)
    try:
        cascade = learn_cascade(screen_trajectories, verdict_trajectories, target_tpr=args.target_tpr,
                                threshold=threshold, band_margin=margin, screen=screen.config, verdict=method.config)
    except ValueError as err:
        raise ValueError(f"--cascade: {err}") from err
    print(f"cascade: band ({cascade.low:.4g}, {cascade.high:.4g}] of screen scores (band margin {margin:g}) goes "
          f"to the verdict schedule, threshold {cascade.verdict.threshold:.4g}; learnt from the full runs of "
          f"{cascade.n_calibration} calibration images under both schedules (--calibrate {args.calibrate})",
          file=sys.stderr)
    return cascade, method, screen


def _run_cascade(ae, cascade, method, screen, paths, args, options, store):
    """Stage 1 (the screen with early exit) on every image, stage 2 (the verdict schedule with early exit) on the
    band images only, both through the results store. Returns the rows (``belonging``, ``stage``,
    ``screen_score``, ``exit_reason``, ``steps_run`` of both stages) and the skipped images."""
    import pandas as pd

    from latenttracer.tracing import RESULT_COLUMNS, score_images

    def run(stage_method, stage_paths, desc):
        return score_images(ae, stage_paths, method=stage_method, batch_size=args.batch_size, store=store,
                            image_options=options, on_bad_image=args.on_bad_image, progress=not args.quiet, desc=desc)

    def exit_of(row) -> str:
        e = row.get("exit")
        return e if isinstance(e, str) else ""

    first, skipped = run(type(screen).from_settings(cascade.screen_config(screen.config)), paths, "screen")
    first_rows = first.to_dict("records")
    decisions = [cascade.screen_decision(float(r["score"]), exit_of(r)) if r["status"] == "ok" else None
                 for r in first_rows]
    band = [str(r["path"]) for r, d in zip(first_rows, decisions) if r["status"] == "ok" and d is None]
    second_rows: dict[str, dict] = {}
    if band:
        second, skipped_late = run(type(method).from_settings(cascade.verdict_config(method.config)), band, "verdict")
        second_rows = {str(r["path"]): r for r in second.to_dict("records")}
        skipped += skipped_late  # unreadable since stage 1
    rows = []
    for r, decision in zip(first_rows, decisions):
        path = str(r["path"])
        common = {"screen_score": r["score"], "steps_run": int(r["steps_run"]) if r["status"] == "ok" else None}
        if r["status"] != "ok" or decision is not None:
            rows.append({**r, **common, "stage": "screen", "exit_reason": exit_of(r),
                         "belonging": decision if r["status"] == "ok" else None})
        elif path in second_rows:
            v = second_rows[path]
            ok = v["status"] == "ok"
            rows.append({**v, "stage": "verdict", "screen_score": r["score"], "exit_reason": exit_of(v),
                         "steps_run": int(r["steps_run"]) + int(v["steps_run"]) if ok else None,
                         "seconds": float(r["seconds"]) + float(v["seconds"]),
                         "cached": bool(r["cached"]) and bool(v["cached"]),
                         "belonging": cascade.verdict_decision(float(v["score"])) if ok else None})
    if not rows:
        return pd.DataFrame(columns=[*RESULT_COLUMNS, "belonging", *CASCADE_COLUMNS]), skipped
    return pd.DataFrame(rows), skipped


def _cascade_lines(frame, cascade, method) -> list[str]:
    """The summary lines of a cascade run: who decided, the steps spent, each stage's scores."""
    ok = frame[frame["status"] == "ok"]
    by_screen = ok[ok["stage"] == "screen"]
    by_verdict = ok[ok["stage"] == "verdict"]
    accepted = int((by_screen["belonging"] == True).sum())  # noqa: E712
    lines = [f"cascade: {len(by_screen)} decided by the screen ({accepted} accepted, {len(by_screen) - accepted} "
             f"rejected), {len(by_verdict)} by the verdict schedule; {float(ok['steps_run'].mean()):.1f} steps per "
             f"image on average (both stages) against the verdict schedule's {method.config.scored_steps}"]
    for stage, part in (("screen", by_screen), ("verdict", by_verdict)):
        if len(part):
            s = part["score"].astype(float)
            lines.append(f"score ({stage}, {method.label}): median {s.median():.3g}, min {s.min():.3g}, max "
                         f"{s.max():.3g} ({len(part)} image{'' if len(part) == 1 else 's'})")
    n_bel = int((ok["belonging"] == True).sum())  # noqa: E712
    lines.append(f"belonging (screen score <= {cascade.low:.4g}, or verdict score <= "
                 f"{cascade.verdict.threshold:.4g}): {n_bel} of {len(ok)}")
    return lines


def _perturbed_root(args: argparse.Namespace) -> Path:
    """Where ``--calibrate-perturb`` writes the perturbed copies: beside the results store, or a temporary folder."""
    if args.no_cache:
        return Path(tempfile.mkdtemp(prefix="latenttracer-perturbed-"))
    return args.cache.parent / "perturbed"


def trace(args: argparse.Namespace) -> int:
    import pandas as pd

    from latenttracer.autoencoders import load_autoencoder
    from latenttracer.calibration import parse_family
    from latenttracer.images import list_images
    from latenttracer.inversion import verdict
    from latenttracer.methods import LatentTracer
    from latenttracer.tracing import score_images, steps_per_second

    screen_settings = _cascade_request(args)  # before --early-exit's check: the cascade always exits early
    early_exit = _early_exit_request(args)
    _check_negatives(args, early_exit)
    family = ()
    if args.calibrate_perturb is not None:
        if args.calibrate is None:
            raise ValueError("--calibrate-perturb needs --calibrate DIR (the images whose perturbed copies set the "
                             "threshold)")
        family = parse_family(args.calibrate_perturb)
    _check_outputs(args)
    if family and not args.no_cache:
        check_writable(_perturbed_root(args), "--calibrate-perturb (perturbed copies)", folder=True)
    method, options, store = _setup(args)
    if _needs_calibration(method) and args.calibrate is None:
        raise ValueError("--lr-scale latent_rms needs --calibrate DIR (the rate is in units of the model's latent RMS "
                         "on its own images)")
    if early_exit:  # a bad combination (e.g. a method whose score is not the loop's) fails here, before any work
        _with_early_exit(method, 1.0)
    screen = None if screen_settings is None else _screen_method(method, screen_settings, args.cascade,
                                                                 args.screen_margin)
    paths = list_images(args.images, recursive=args.recursive)
    if args.calibrate:
        list_images(args.calibrate, recursive=args.recursive)  # fail early on an empty or missing folder
    ae = load_autoencoder(args.model, resolution=args.resolution, device=args.device, dtype=args.dtype)
    print(f"inspected model: {ae.name} ({ae.family}, {ae.resolution}px); {len(paths)} images; "
          f"{_describe(method)}" + (f"; screen {_describe(screen)}" if screen is not None else ""), file=sys.stderr)

    t0 = time.perf_counter()
    threshold = args.threshold
    calibration = cascade = None
    if screen is not None:
        cascade, method, screen = _learn_cascade(ae, method, screen, args, options, store, family)
        threshold = cascade.verdict.threshold
        frame, skipped = _run_cascade(ae, cascade, method, screen, paths, args, options, store)
    else:
        if args.calibrate:
            method = _resolve_lr(method, ae, args.calibrate, args, options)
            threshold, calibration = _threshold(ae, method, args.calibrate, args, options, store, family=family)
        if early_exit:
            method = _exit_method(method, threshold, calibration, args, ae, options, store)
        frame, skipped = score_images(ae, paths, method=method, batch_size=args.batch_size, store=store,
                                      image_options=options, on_bad_image=args.on_bad_image,
                                      progress=not args.quiet, desc="trace")
    elapsed = time.perf_counter() - t0
    if cascade is None:  # (a cascade's rows carry its verdicts)
        exits = frame["exit"].fillna("") if "exit" in frame else [""] * len(frame)
        frame["belonging"] = None if threshold is None else [verdict(s, e, threshold) if st == "ok" else None
                                                             for s, e, st in zip(frame["score"], exits,
                                                                                 frame["status"])]
    if skipped:
        frame = pd.concat([frame, pd.DataFrame([{"path": p, "status": "skipped", "reason": r} for p, r in skipped])],
                          ignore_index=True)
    order = {str(p): i for i, p in enumerate(paths)}
    frame = frame.sort_values("path", key=lambda s: s.map(lambda p: order.get(p, len(order))), kind="stable")
    columns = CSV_COLUMNS + list(method.components)
    if cascade is not None:
        columns += CASCADE_COLUMNS
    elif early_exit:
        frame["exit_reason"] = frame["exit"].fillna("") if "exit" in frame else ""
        columns += EXIT_COLUMNS
    atomic.write_frame(frame.reindex(columns=columns), args.out)

    n_ok = int((frame["status"] == "ok").sum())
    n_failed = int((frame["status"] == "failed").sum())
    lines = [f"{len(paths)} images: {n_ok} scored, {n_failed} failed, {len(skipped)} skipped; "
             f"{int(frame['cached'].fillna(False).astype(bool).sum())} from cache; {elapsed:.1f}s"]
    if cascade is not None and n_ok:
        lines += _cascade_lines(frame, cascade, method)
    elif cascade is None and n_ok and isinstance(method, LatentTracer):
        rate = steps_per_second(frame[frame["status"] != "skipped"], method.config)
        if rate == rate:
            lines.append(f"speed: {rate:.0f} image-steps/s on {args.device}")
    if early_exit and n_ok:
        ok = frame[frame["status"] == "ok"]
        counts = ok["exit_reason"].value_counts()
        lines.append(f"early exit: {float(ok['steps_run'].mean()):.1f} of {method.config.scored_steps} steps per "
                     f"image on average; {int(counts.get('threshold', 0))} stopped below the threshold, "
                     f"{int(counts.get('bound', 0))} above the bound, "
                     + (f"{int(counts.get('accept', 0))} below the accept bound, " if args.negatives else "")
                     + f"{int(counts.get('', 0))} ran to the end")
    if n_ok and cascade is None:
        s = frame.loc[frame["status"] == "ok", "score"]
        lines.append(f"score ({method.label}): median {s.median():.3g}, min {s.min():.3g}, max {s.max():.3g}")
    if cascade is None and threshold is not None:
        n_bel = int((frame["belonging"] == True).sum())  # noqa: E712
        lines.append(f"belonging (score <= {threshold:.4g}" + (", or below the accept bound" if args.negatives
                                                                 else "") + f"): {n_bel} of {n_ok}")
    elif cascade is None:
        lines.append("no threshold given: 'belonging' left empty (use --threshold or --calibrate)")
    lines.append(f"wrote {args.out}")
    if args.html:
        from latenttracer.html_report import build_trace_report

        page = build_trace_report(frame, args.html, model=ae.name, threshold=threshold, config=vars(args),
                                  band=None if cascade is None else (cascade.low, cascade.high))
        lines.append(f"wrote {page}")
    print("\n".join(lines))
    return 0


def attribute(args: argparse.Namespace) -> int:
    import pandas as pd

    from latenttracer.attribution import NONE
    from latenttracer.attribution import attribute as attribute_frame
    from latenttracer.autoencoders import load_autoencoder
    from latenttracer.images import list_images
    from latenttracer.tracing import score_images

    if len(args.calibrate) != len(args.model):
        raise ValueError(f"attribute: {len(args.model)} --model but {len(args.calibrate)} --calibrate; give one "
                         "--calibrate folder per --model, in the same order")
    _check_outputs(args)
    method, options, store = _setup(args)
    paths = list_images(args.images, recursive=args.recursive)
    for folder in args.calibrate:
        list_images(folder, recursive=args.recursive)  # fail early on an empty or missing folder
    t0 = time.perf_counter()
    scores, calibration, thresholds, skipped_all = {}, {}, {}, {}
    unresolved = method
    for source, cal_dir in zip(args.model, args.calibrate):
        ae = load_autoencoder(source, resolution=args.resolution, device=args.device, dtype=args.dtype)
        if ae.name in scores:
            raise ValueError(f"attribute: two --model share the name {ae.name!r} (names are directory base names)")
        if ae.name == NONE:
            raise ValueError(f"attribute: a model may not be called {NONE!r}")
        print(f"inspected model: {ae.name} ({ae.family}, {ae.resolution}px); {_describe(method)}", file=sys.stderr)
        method = _resolve_lr(unresolved, ae, cal_dir, args, options)  # each model's own rate
        thresholds[ae.name], cal = _threshold(ae, method, cal_dir, args, options, store)
        calibration[ae.name] = cal["score"].to_numpy()
        frame, skipped = score_images(ae, paths, method=method, batch_size=args.batch_size, store=store,
                                      image_options=options, on_bad_image=args.on_bad_image,
                                      progress=not args.quiet, desc=f"attribute {ae.name}")
        ok = frame[frame["status"] == "ok"]
        scores[ae.name] = pd.Series(ok["score"].to_numpy(dtype=float), index=ok["path"].astype(str))
        skipped_all.update(dict(skipped))
        del ae
    wide = pd.DataFrame(scores).reindex([str(p) for p in paths if str(p) not in skipped_all])
    out = attribute_frame(wide, calibration, thresholds, args.normalise)
    out.insert(0, "path", out.index)
    if skipped_all:
        out = pd.concat([out, pd.DataFrame([{"path": p, "predicted": None} for p in skipped_all])],
                        ignore_index=True)
    atomic.write_frame(out.reset_index(drop=True), args.out)
    counts = out["predicted"].value_counts(dropna=False)
    summary = ", ".join(f"{name}: {int(counts.get(name, 0))}" for name in [*scores, NONE])
    print(f"{len(paths)} images ({len(skipped_all)} skipped), method {method.label}, normalised by "
          f"{args.normalise}; {time.perf_counter() - t0:.1f}s\npredicted: {summary}\nwrote {args.out}")
    return 0


def _load_plugins(argv: list[str]) -> None:
    """Import the ``--plugin`` files before the parser is built, so that their methods get their flags."""
    from latenttracer.registry import load_plugins

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--plugin", action="append", default=[])
    load_plugins()  # $LATENTTRACER_PLUGINS
    load_plugins(pre.parse_known_args(argv)[0].plugin)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _load_plugins(argv)
        parser = _parser()
    except (ValueError, TypeError) as err:  # a plugin that cannot be imported, or a method without flags
        print(f"latenttracer: error: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        if args.command == "trace":
            return trace(args)
        if args.command == "attribute":
            return attribute(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"latenttracer: error: {err}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
