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
import sys
import time
from pathlib import Path

from latenttracer import __version__, atomic
from latenttracer.cli_shared import add_common_args, checked_number, make_tracer, setup, tracer_options
from latenttracer.early_exit import DEFAULT_RISK
from latenttracer.methods.flags import describe, method_from_args
from latenttracer.writable import check_writable, scratch_folder


def _risk(text: str) -> float:
    return checked_number(text, float, lambda v: 0 < v < 1, "a number in (0, 1)")


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
                        "from the --calibrate images' full runs (conformal). Guarantee: for the model's own "
                        "images, exchangeable with the calibration images, P(stopped as not belonging although the "
                        "full run says belonging) <= --exit-risk, on average over calibration sets; nothing is "
                        "claimed for other images. With --threshold: the exact exit only")
    t.add_argument("--exit-risk", type=_risk, metavar="ALPHA",
                   help=f"with --early-exit: the risk alpha above (default {DEFAULT_RISK:g}); a calibration set "
                        "in which n images end belonging allows alpha >= 1/(n + 1): below that only the exact exit "
                        "is used (printed)")
    add_common_args(t)
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
    add_common_args(a)
    from latenttracer import attack_cli  # `latenttracer attack` (its parser and handler live there)

    attack_cli.add_parser(sub)
    return p


def _check_outputs(args: argparse.Namespace) -> None:
    """Every path the command will write, checked before any work."""
    check_writable(args.out, "--out")
    if getattr(args, "html", None):
        check_writable(args.html, "--html")
        check_writable(args.html.parent / f"{args.html.stem}_files", "--html", folder=True)
    if not args.no_cache:
        check_writable(args.cache, "--cache", folder=True)


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
        from latenttracer.tracing import check_early_exit

        check_early_exit(method_from_args(args))
    if args.calibrate_perturb is None:
        return ()
    if args.calibrate is None:
        raise ValueError("--calibrate-perturb needs --calibrate DIR (the images whose perturbed copies set the "
                         "threshold)")
    return parse_family(args.calibrate_perturb)


def trace(args: argparse.Namespace) -> int:
    from latenttracer.autoencoders import load_autoencoder
    from latenttracer.images import list_images

    family = _check_trace_flags(args)
    _check_outputs(args)
    perturbed = None
    if family:
        perturbed = scratch_folder(None if args.no_cache else args.cache, "perturbed")
        check_writable(perturbed, "--calibrate-perturb (perturbed copies)", folder=True)
    method, options, store = setup(args)
    if getattr(getattr(method, "config", None), "lr_scale", "absolute") != "absolute" and args.calibrate is None:
        raise ValueError("--lr-scale latent_rms needs --calibrate DIR (the rate is in units of the model's latent RMS "
                         "on its own images)")
    paths = list_images(args.images, recursive=args.recursive)
    calibration = list_images(args.calibrate, recursive=args.recursive) if args.calibrate else None
    ae = load_autoencoder(args.model, resolution=args.resolution, device=args.device, dtype=args.dtype)
    print(f"inspected model: {ae.name} ({ae.family}, {ae.resolution}px); {len(paths)} images; {describe(method)}",
          file=sys.stderr)
    t0 = time.perf_counter()
    tracer = make_tracer(args, ae, method, options, store)
    tracer.threshold = args.threshold
    if calibration is not None:
        tracer.calibrate(calibration, args.target_tpr, family, perturbed, where=f"--calibrate {args.calibrate}")
    if args.early_exit:
        tracer.early_exit(DEFAULT_RISK if args.exit_risk is None else args.exit_risk)
    frame, skipped = tracer.trace(paths)
    elapsed = time.perf_counter() - t0
    atomic.write_frame(tracer.table(frame), args.out)
    lines = [*tracer.report(frame, len(paths), len(skipped), elapsed, args.device), f"wrote {args.out}"]
    if args.html:
        from latenttracer.html_report import build_trace_report

        page = build_trace_report(frame, args.html, model=ae.name, threshold=tracer.threshold, config=vars(args))
        lines.append(f"wrote {page}")
    print("\n".join(lines))
    return 0


def attribute(args: argparse.Namespace) -> int:
    from latenttracer.attribution import NONE
    from latenttracer.images import list_images
    from latenttracer.tracing import attribute as attribute_models

    if len(args.calibrate) != len(args.model):
        raise ValueError(f"attribute: {len(args.model)} --model but {len(args.calibrate)} --calibrate; give one "
                         "--calibrate folder per --model, in the same order")
    _check_outputs(args)
    method, options, store = setup(args)
    paths = list_images(args.images, recursive=args.recursive)
    folders = [list_images(folder, recursive=args.recursive) for folder in args.calibrate]  # fail early if empty
    t0 = time.perf_counter()
    out, names, skipped = attribute_models(
        args.model, folders, paths, method, target_tpr=args.target_tpr, normalise=args.normalise,
        where=[f"--calibrate {folder}" for folder in args.calibrate],
        load_options=dict(resolution=args.resolution, device=args.device, dtype=args.dtype),
        **tracer_options(args, options, store))
    atomic.write_frame(out, args.out)
    counts = out["predicted"].value_counts(dropna=False)
    summary = ", ".join(f"{name}: {int(counts.get(name, 0))}" for name in [*names, NONE])
    print(f"{len(paths)} images ({len(skipped)} skipped), method {method.label}, normalised by "
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
    from latenttracer import attack_cli

    try:
        return {"trace": trace, "attribute": attribute, "attack": attack_cli.run}[args.command](args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"latenttracer: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
