"""Decoder cost of each zoo member: what one latent-inversion step costs.

Prints member, decoder parameters, decoder forward MFLOP per image (``torch.utils.flop_counter``), and
image-steps/s of the decoder's forward + backward pass w.r.t. its input (weights frozen, fp32, batch 256,
2 intra-op threads by default), best of ``--reps`` repetitions. The default benchmark needs about
1000-1500 image-steps/s per member on 2 CPU cores.

    .venv/bin/python benchmarks/decoder_speed.py --zoo zoo
    .venv/bin/python benchmarks/decoder_speed.py --fresh        # untrained architectures, no zoo needed
    .venv/bin/python benchmarks/decoder_speed.py --machine      # one line: this machine's speed (1 thread)
    .venv/bin/python benchmarks/decoder_speed.py --machine --since 1700000000   # ... and the wall time since then
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from data_gen import zoo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoo", default="zoo")
    p.add_argument("--fresh", action="store_true", help="measure freshly built architectures instead")
    p.add_argument("--resolution", type=int, default=zoo.RESOLUTION, help="image size for --fresh")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--machine", action="store_true",
                   help="print one line: this machine's speed (a fresh KL member, 1 thread), as tables quote it")
    p.add_argument("--since", type=float, default=None, metavar="EPOCH_SECONDS",
                   help="with --machine: also print the wall time since this Unix time (a Makefile target's start)")
    args = p.parse_args()
    if args.machine:
        wall = ""
        if args.since is not None:
            seconds = time.time() - args.since
            wall = f"wall time {int(seconds // 60)} min {seconds % 60:.0f} s; "
        print(f"{wall}machine speed: {zoo.machine_speed(1)}", flush=True)
        return
    if args.fresh:
        torch.manual_seed(0)
        aes = {f"{kind}@{args.resolution}": (zoo.build_autoencoder(kind, args.resolution), args.resolution)
               for kind in ("kl", "vq", "tiny")}
    else:
        root = Path(args.zoo)
        aes = {n: (zoo.load_member(root / n).vqvae, json.loads((root / n / "card.json").read_text())["resolution"])
               for n in zoo.MEMBERS if (root / n / "model_index.json").is_file()}
        if not aes:
            raise SystemExit(f"{root}: no zoo members (train with python -m data_gen.zoo, or use --fresh)")
    print(f"batch {args.batch}, {args.threads} threads, fp32, forward + backward w.r.t. the latent, "
          f"best of {args.reps}")
    print(f"{'member':10s} {'class':16s} {'params':>9s} {'MFLOP/img':>10s} {'image-steps/s':>14s}")
    for name, (ae, resolution) in aes.items():
        s = zoo.decoder_speed(ae, batch=args.batch, reps=args.reps, threads=args.threads, resolution=resolution)
        print(f"{name:10s} {ae.__class__.__name__:16s} {s['decoder_params']:9d} {s['decoder_mflop_per_image']:10.1f}"
              f" {s['image_steps_per_s']:14.0f}", flush=True)


if __name__ == "__main__":
    main()
