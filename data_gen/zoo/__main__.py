"""``python -m data_gen.zoo``: train the zoo (``make zoo``) or draw its sample grid (``make zoo-grid``)."""

from __future__ import annotations

import argparse
import sys
import time

import data_gen.zoo as package
from data_gen.zoo.architectures import MEMBERS
from data_gen.zoo.build import train_zoo
from data_gen.zoo.grid import draw_grid
from data_gen.zoo.training import MICRO, Budget, threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_gen.zoo", description=package.__doc__.split("\n")[0])
    parser.add_argument("--out", default="zoo", help="zoo directory (one sub-directory per member)")
    parser.add_argument("--members", default="", help=f"comma-separated subset of {','.join(MEMBERS)}")
    parser.add_argument("--micro", action="store_true", help="a few training steps only (smoke test)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: bit-reproducible, and robust on a shared machine)")
    parser.add_argument("--jobs", type=int, default=2, help="members trained at once, one process each (default 2)")
    parser.add_argument("--grid", default=None, metavar="PNG",
                        help="draw the sample grid of the zoo in --out to PNG instead of training")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.members.split(",") if n.strip()]
    if args.grid:
        with threads(args.threads):
            print(draw_grid(args.out, args.grid, names=names or None))
        return 0
    t0 = time.perf_counter()
    cards = train_zoo(args.out, names, MICRO if args.micro else Budget(), jobs=args.jobs, threads=args.threads)
    print(f"\ntrained {len(cards)} member(s) into {args.out} in {time.perf_counter() - t0:.0f}s")
    for c in cards:
        print(f"  {c['name']:8s} {c['autoencoder_class']:16s} {c['seconds']['total']:6.0f}s  "
              f"PSNR {c['psnr_heldout_real_db']:.2f} dB  scaling {c['scaling_factor']:.3f}  "
              f"{c['speed']['image_steps_per_s']:.0f} image-steps/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
