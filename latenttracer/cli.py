"""``latenttracer trace``: verdicts for a folder of images against one inspected model.

    latenttracer trace --model zoo/kl-a --images photos/ --out scores.csv --calibrate own_samples/

Writes one CSV row per image (``path,score,init_loss,best_step,status,belonging,...``); ``belonging`` is
empty unless a threshold is given (``--threshold``) or calibrated on images known to come from the model
(``--calibrate DIR``: the threshold is set at the ``--target-tpr`` point, 95% by default). Scores are cached
(``--cache``, default ``$LATENTTRACER_CACHE`` or ``~/.cache/latenttracer/scores``), so a rerun, or a run
interrupted and started again, recomputes nothing already done.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from latenttracer import __version__, atomic

DEFAULT_CACHE = Path(os.environ.get("LATENTTRACER_CACHE", Path.home() / ".cache" / "latenttracer" / "scores"))
CSV_COLUMNS = ["path", "score", "init_loss", "best_step", "status", "belonging", "reason", "sha256", "seconds",
               "cached"]


def _parser() -> argparse.ArgumentParser:
    from latenttracer.inversion import InversionConfig

    d = InversionConfig()
    p = argparse.ArgumentParser(prog="latenttracer", description="Trace images back to a latent generative model.")
    p.add_argument("--version", action="version", version=f"latenttracer {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trace", help="score a folder of images against one inspected model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--model", required=True, help="pipeline dir, hub id, or a dir with one saved autoencoder")
    t.add_argument("--images", required=True, type=Path, help="folder of images to trace")
    t.add_argument("--out", required=True, type=Path, help="CSV file to write")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="belonging iff score <= threshold")
    g.add_argument("--calibrate", type=Path, metavar="DIR", help="images known to come from the model")
    t.add_argument("--target-tpr", type=float, default=0.95, help="TPR on --calibrate images (default 0.95)")
    t.add_argument("--steps", type=int, default=d.steps)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--init", choices=["encoder", "random", "zeros"], default=d.init)
    t.add_argument("--schedule", choices=["authors", "constant"], default=d.schedule)
    t.add_argument("--distance", choices=["l2", "l1"], default=d.distance)
    t.add_argument("--strategy", choices=["min", "last"], default=d.strategy)
    t.add_argument("--seed", type=int, default=d.seed, help="seed of --init random")
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--device", default="auto")
    t.add_argument("--dtype", default=d.dtype, choices=["float32", "bfloat16", "float16"])
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
    return p


def trace(args: argparse.Namespace) -> int:
    import pandas as pd

    from latenttracer.autoencoders import load_autoencoder
    from latenttracer.images import ImageOptions, list_images
    from latenttracer.inversion import InversionConfig
    from latenttracer.metrics import calibrate_threshold
    from latenttracer.store import ResultStore
    from latenttracer.tracing import score_images, steps_per_second

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = InversionConfig(init=args.init, lr=args.lr, steps=args.steps, schedule=args.schedule,
                             distance=args.distance, strategy=args.strategy, batch_size=args.batch_size,
                             device=args.device, dtype=args.dtype, seed=args.seed)
    options = ImageOptions(resize=args.resize, alpha_background=args.alpha_background)
    paths = list_images(args.images, recursive=args.recursive)
    cal_paths = list_images(args.calibrate, recursive=args.recursive) if args.calibrate else []
    ae = load_autoencoder(args.model, resolution=args.resolution, device=args.device, dtype=args.dtype)
    store = None if args.no_cache else ResultStore(args.cache)
    progress = not args.quiet
    print(f"inspected model: {ae.name} ({ae.kind}, {ae.resolution}px); {len(paths)} images; "
          f"steps={config.steps} lr={config.lr} init={config.init} schedule={config.schedule}", file=sys.stderr)

    t0 = time.perf_counter()
    threshold = args.threshold
    if cal_paths:
        cal, cal_bad = score_images(ae, cal_paths, config, store=store, image_options=options,
                                    on_bad_image=args.on_bad_image, progress=progress, desc="calibrate")
        ok = cal[cal["status"] == "ok"]["score"].to_numpy()
        if len(ok) == 0:
            raise SystemExit(f"--calibrate {args.calibrate}: no image could be scored")
        threshold = calibrate_threshold(ok, args.target_tpr)
        print(f"threshold {threshold:.4g}: calibrated at {args.target_tpr:.0%} TPR on {len(ok)} images from "
              f"{args.calibrate}" + (f" ({len(cal_bad)} skipped)" if cal_bad else ""), file=sys.stderr)

    frame, skipped = score_images(ae, paths, config, store=store, image_options=options,
                                  on_bad_image=args.on_bad_image, progress=progress, desc="trace")
    elapsed = time.perf_counter() - t0
    if threshold is not None:
        frame["belonging"] = [bool(s <= threshold) if st == "ok" else None
                              for s, st in zip(frame["score"], frame["status"])]
    else:
        frame["belonging"] = None
    if skipped:
        frame = pd.concat([frame, pd.DataFrame([{"path": p, "status": "skipped", "reason": r} for p, r in skipped])],
                          ignore_index=True)
    order = {str(p): i for i, p in enumerate(paths)}
    frame = frame.sort_values("path", key=lambda s: s.map(lambda p: order.get(p, len(order))), kind="stable")
    atomic.write_frame(frame.reindex(columns=CSV_COLUMNS), args.out)

    n_ok = int((frame["status"] == "ok").sum())
    n_failed = int((frame["status"] == "failed").sum())
    lines = [f"{len(paths)} images: {n_ok} scored, {n_failed} failed, {len(skipped)} skipped; "
             f"{int(frame['cached'].fillna(False).astype(bool).sum())} from cache; {elapsed:.1f}s"]
    rate = steps_per_second(frame[frame["status"] != "skipped"], config) if n_ok else float("nan")
    if rate == rate:
        lines.append(f"speed: {rate:.0f} image-steps/s on {config.device}")
    if n_ok:
        s = frame.loc[frame["status"] == "ok", "score"]
        lines.append(f"score (reconstruction loss): median {s.median():.3g}, min {s.min():.3g}, max {s.max():.3g}")
    if threshold is not None:
        n_bel = int((frame["belonging"] == True).sum())  # noqa: E712
        lines.append(f"belonging (score <= {threshold:.4g}): {n_bel} of {n_ok}")
    else:
        lines.append("no threshold given: 'belonging' left empty (use --threshold or --calibrate)")
    lines.append(f"wrote {args.out}")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "trace":
            return trace(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"latenttracer: error: {err}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
