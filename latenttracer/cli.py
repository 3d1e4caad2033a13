"""``latenttracer trace`` and ``latenttracer attribute``: verdicts for a folder of images.

    latenttracer trace --model zoo/kl-a --images photos/ --out scores.csv --calibrate own_samples/
    latenttracer trace --model zoo/kl-a --images photos/ --out scores.csv --calibrate own_samples/ --early-exit
    latenttracer trace --method aedr --model zoo/kl-a --images photos/ --out scores.csv --calibrate own/
    latenttracer attribute --model zoo/kl-a --calibrate own_a/ --model zoo/kl-b --calibrate own_b/ \\
        --images photos/ --out attribution.csv

One CSV row per image (``path,score,init_loss,best_step,status,belonging,...``); ``belonging`` needs a threshold
(``--threshold``) or images known to come from the model (``--calibrate DIR``: the ``--target-tpr`` point, 95% by
default). Scores are cached (``--cache``, default ``$LATENTTRACER_CACHE`` or ``~/.cache/latenttracer/scores``): a
rerun recomputes nothing. ``--method`` picks the scoring method (``latenttracer``, ``ronan``, ``aedr``,
``aeroblade``, or a plugin's: ``--plugin FILE``); its options are flags built from its settings. Output paths are
checked before any work. ``trace --early-exit`` stops each image once its verdict is known; its one parameter is
``--exit-risk`` (see its help and docs/cli.md). ``attribute`` names, per image, the ``--model`` with the strongest
claim among those whose threshold it passes, or ``none``.
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
from latenttracer.early_exit import DEFAULT_RISK

DEFAULT_CACHE = Path(os.environ.get("LATENTTRACER_CACHE", Path.home() / ".cache" / "latenttracer" / "scores"))
CSV_COLUMNS = ["path", "score", "init_loss", "best_step", "status", "belonging", "reason", "sha256", "seconds",
               "cached"]


def _risk(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


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
    t.add_argument("--early-exit", action="store_true",
                   help="stop each image once its verdict is known (inversion methods): belonging once its running "
                        "minimum is <= the threshold (exact), not belonging once it is above a per-step bound learnt "
                        "from the --calibrate images' full runs (split-conformal). Guarantee: for the model's own "
                        "images, exchangeable with the calibration images, P(stopped as not belonging although the "
                        "full run says belonging) <= --exit-risk, on average over calibration sets; nothing is "
                        "claimed for other images. With --threshold: the exact exit only")
    t.add_argument("--exit-risk", type=_risk, metavar="ALPHA",
                   help=f"with --early-exit: the risk alpha above (default {DEFAULT_RISK:g}); a calibration set "
                        "whose n images that end belonging give n/2 scores allows alpha >= 1/(n/2 + 1): below that "
                        "only the exact exit is used (printed)")
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
    from latenttracer import attack_cli  # `latenttracer attack` (its parser and handler live there)

    attack_cli.add_parser(sub)
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


EXIT_COLUMNS = ["exit_step", "exit_reason", "steps_run"]


def _check_trace_flags(args: argparse.Namespace) -> tuple:
    """One-line errors for flags out of place (before any work); the perturbation family of
    ``--calibrate-perturb``."""
    from latenttracer.reencoding import parse_family

    if args.exit_risk is not None and not args.early_exit:
        raise ValueError("--exit-risk needs --early-exit")
    if args.early_exit and args.threshold is None and args.calibrate is None:
        raise ValueError("--early-exit needs --calibrate DIR (threshold and per-step bound from the calibration "
                         "images' full runs) or --threshold T (the exact part only: an image stops once its score "
                         "is <= T)")
    if args.early_exit:  # a method without the loop, or whose score is not its running minimum, fails here
        from dataclasses import replace

        from latenttracer.inversion import InversionConfig
        from latenttracer.methods import METHODS

        takes = [n for n in METHODS.names() if METHODS.get(n).settings_type() is InversionConfig]
        if args.method not in takes:
            raise ValueError(f"--method {args.method} does not take --early-exit (methods that take it: "
                             f"{', '.join(takes)})")
        method = method_from_args(args)
        type(method).from_settings(replace(method.config, early_exit=True, exit_threshold=1.0))
    if args.calibrate_perturb is None:
        return ()
    if args.calibrate is None:
        raise ValueError("--calibrate-perturb needs --calibrate DIR (the images whose perturbed copies set the "
                         "threshold)")
    return parse_family(args.calibrate_perturb)


def _tracer(args: argparse.Namespace, ae, method, options, store):
    from latenttracer.tracing import Tracer

    return Tracer(ae, method, store=store, image_options=options, batch_size=args.batch_size,
                  on_bad_image=args.on_bad_image, progress=not args.quiet,
                  log=lambda line: print(line, file=sys.stderr))


def trace(args: argparse.Namespace) -> int:
    from latenttracer.autoencoders import load_autoencoder
    from latenttracer.images import list_images
    from latenttracer.methods import LatentTracer
    from latenttracer.tracing import steps_per_second

    family = _check_trace_flags(args)
    _check_outputs(args)
    perturbed = None
    if family:
        perturbed = (Path(tempfile.mkdtemp(prefix="latenttracer-perturbed-")) if args.no_cache
                     else args.cache.parent / "perturbed")
        check_writable(perturbed, "--calibrate-perturb (perturbed copies)", folder=True)
    method, options, store = _setup(args)
    if getattr(getattr(method, "config", None), "lr_scale", "absolute") != "absolute" and args.calibrate is None:
        raise ValueError("--lr-scale latent_rms needs --calibrate DIR (the rate is in units of the model's latent RMS "
                         "on its own images)")
    paths = list_images(args.images, recursive=args.recursive)
    calibration = list_images(args.calibrate, recursive=args.recursive) if args.calibrate else None
    ae = load_autoencoder(args.model, resolution=args.resolution, device=args.device, dtype=args.dtype)
    print(f"inspected model: {ae.name} ({ae.family}, {ae.resolution}px); {len(paths)} images; {_describe(method)}",
          file=sys.stderr)
    t0 = time.perf_counter()
    tracer = _tracer(args, ae, method, options, store)
    tracer.threshold = args.threshold
    if calibration is not None:
        tracer.calibrate(calibration, args.target_tpr, family, perturbed, where=f"--calibrate {args.calibrate}")
    if args.early_exit:
        tracer.early_exit(DEFAULT_RISK if args.exit_risk is None else args.exit_risk)
    frame, skipped = tracer.trace(paths)
    elapsed = time.perf_counter() - t0
    columns = CSV_COLUMNS + list(tracer.method.components) + (EXIT_COLUMNS if tracer.exits else [])
    atomic.write_frame(frame.reindex(columns=columns), args.out)

    n_ok = int((frame["status"] == "ok").sum())
    lines = [f"{len(paths)} images: {n_ok} scored, {int((frame['status'] == 'failed').sum())} failed, "
             f"{len(skipped)} skipped; {int(frame['cached'].fillna(False).astype(bool).sum())} from cache; "
             f"{elapsed:.1f}s"]
    if n_ok and isinstance(tracer.method, LatentTracer):
        rate = steps_per_second(frame[frame["status"] != "skipped"], tracer.method.config)
        if rate == rate:
            lines.append(f"speed: {rate:.0f} image-steps/s on {args.device}")
    lines += [*tracer.summary(frame), f"wrote {args.out}"]
    if args.html:
        from latenttracer.html_report import build_trace_report

        page = build_trace_report(frame, args.html, model=ae.name, threshold=tracer.threshold, config=vars(args))
        lines.append(f"wrote {page}")
    print("\n".join(lines))
    return 0


def attribute(args: argparse.Namespace) -> int:
    import pandas as pd

    from latenttracer.attribution import NONE
    from latenttracer.attribution import attribute as attribute_frame
    from latenttracer.autoencoders import load_autoencoder
    from latenttracer.images import list_images

    if len(args.calibrate) != len(args.model):
        raise ValueError(f"attribute: {len(args.model)} --model but {len(args.calibrate)} --calibrate; give one "
                         "--calibrate folder per --model, in the same order")
    _check_outputs(args)
    method, options, store = _setup(args)
    paths = list_images(args.images, recursive=args.recursive)
    folders = [list_images(folder, recursive=args.recursive) for folder in args.calibrate]  # fail early if empty
    t0 = time.perf_counter()
    scores, calibration, thresholds, skipped_all = {}, {}, {}, {}
    for source, cal_dir, cal_paths in zip(args.model, args.calibrate, folders):
        ae = load_autoencoder(source, resolution=args.resolution, device=args.device, dtype=args.dtype)
        if ae.name in scores:
            raise ValueError(f"attribute: two --model share the name {ae.name!r} (names are directory base names)")
        if ae.name == NONE:
            raise ValueError(f"attribute: a model may not be called {NONE!r}")
        print(f"inspected model: {ae.name} ({ae.family}, {ae.resolution}px); {_describe(method)}", file=sys.stderr)
        tracer = _tracer(args, ae, method, options, store)  # each model's own rate (lr_scale) and threshold
        thresholds[ae.name] = tracer.calibrate(cal_paths, args.target_tpr, where=f"--calibrate {cal_dir}")
        calibration[ae.name] = tracer.calibration["score"].to_numpy()
        frame, skipped = tracer.score(paths, f"attribute {ae.name}")
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
        if args.command == "attack":
            from latenttracer import attack_cli

            return attack_cli.run(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"latenttracer: error: {err}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
