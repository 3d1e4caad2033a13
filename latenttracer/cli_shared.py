"""The flags every command shares (``latenttracer trace``, ``attribute``, ``attack``) and what they build: the
method, the image options, the results store and a :class:`~latenttracer.tracing.Tracer` with the command's
settings. :mod:`latenttracer.cli` and :mod:`latenttracer.attack_cli` both use it (neither imports the other's
helpers)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from latenttracer.methods.flags import add_method_args, method_from_args

__all__ = ["DEFAULT_CACHE", "add_common_args", "checked_number", "make_tracer", "setup", "tracer_options"]

DEFAULT_CACHE = Path(os.environ.get("LATENTTRACER_CACHE", Path.home() / ".cache" / "latenttracer" / "scores"))


def checked_number(text: str, convert, ok, want: str):
    """``convert(text)`` if it converts and passes ``ok``, else an argparse error saying what is wanted."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
    return value


def _batch_size(text: str) -> int | str:
    return text if text == "auto" else checked_number(text, int, lambda v: v >= 1, "'auto' or an integer >= 1")


def add_common_args(t: argparse.ArgumentParser) -> None:
    """The options every command takes, then ``--method`` and every method's options."""
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
    add_method_args(t)


def setup(args: argparse.Namespace):
    """(the method, the image options, the results store) the arguments ask for; torch's CPU threads set."""
    from latenttracer.images import ImageOptions
    from latenttracer.store import ResultStore

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    method = method_from_args(args)
    options = ImageOptions(resize=args.resize, alpha_background=args.alpha_background)
    store = None if args.no_cache else ResultStore(args.cache)
    return method, options, store


def tracer_options(args: argparse.Namespace, options, store) -> dict:
    """:class:`~latenttracer.tracing.Tracer`'s settings from the arguments; its notes go to stderr."""
    return dict(store=store, image_options=options, batch_size=args.batch_size, on_bad_image=args.on_bad_image,
                progress=not args.quiet, log=lambda line: print(line, file=sys.stderr))


def make_tracer(args: argparse.Namespace, ae, method, options, store):
    from latenttracer.tracing import Tracer

    return Tracer(ae, method, **tracer_options(args, options, store))
