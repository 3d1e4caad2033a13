"""Reconstruction PSNR of a TAESD-family model on the evaluation photo crops (the fact on ``models/taef2``'s card).

Builds ``--n`` crops of the evaluation photos at each ``--sizes`` side with ``data_gen.real_images``
(``make_eval_crops``: the same crops the zoo suite's real set uses, seed 0), reconstructs each as
``decode(encode(x))`` (clamped to [0, 1], float32, no 8-bit rounding) and prints the PSNR distribution
(``10 log10(1 / MSE)`` per crop, images in [0, 1]), overall and per photo. ``--out FILE`` also writes the table.

    .venv/bin/python benchmarks/taesd_psnr.py                      # models/taef2 at 64 and 128 px
    .venv/bin/python benchmarks/taesd_psnr.py --model DIR --sizes 64 256 --n 24 --out results/taesd_psnr.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from data_gen import zoo
from data_gen.real_images import make_eval_crops
from latenttracer import atomic
from latenttracer.autoencoders import load_autoencoder


def psnr_per_image(ae, crops: np.ndarray, batch: int = 16) -> np.ndarray:
    """PSNR (dB) of ``decode(encode(x))`` against ``x`` for uint8 crops (N, H, W, 3)."""
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            mse = ((ae.decode(ae.encode(xb)) - xb) ** 2).mean((1, 2, 3))
            out.append(10 * torch.log10(1 / mse.clamp_min(1e-12)))
    return torch.cat(out).numpy().astype(np.float64)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/taef2")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--n", type=int, default=60, help="crops per size (spread evenly over the evaluation photos)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    lines = [f"model {args.model}; evaluation photo crops (data_gen.real_images.make_eval_crops, seed {args.seed}); "
             "PSNR of decode(encode(x)) in dB", "",
             "| size | crops | median | mean | min | 10th pct | max |", "|---:|---:|---:|---:|---:|---:|---:|"]
    per_photo: list[str] = []
    for size in args.sizes:
        ae = load_autoencoder(args.model, resolution=size)
        crops, rows = make_eval_crops(size=size, n=args.n, seed=args.seed)
        psnr = psnr_per_image(ae, crops)
        lines.append(f"| {size} | {len(psnr)} | {np.median(psnr):.2f} | {psnr.mean():.2f} | {psnr.min():.2f} | "
                     f"{np.percentile(psnr, 10):.2f} | {psnr.max():.2f} |")
        photos = [r["photo"] for r in rows]
        for name in dict.fromkeys(photos):
            sel = psnr[[ph == name for ph in photos]]
            per_photo.append(f"| {size} | {name} | {len(sel)} | {np.median(sel):.2f} | {sel.min():.2f} |")
    lines += ["", "| size | photo | crops | median | min |", "|---:|---|---:|---:|---:|", *per_photo, "",
              f"wall time {time.time() - start:.1f} s, {args.threads} threads; machine speed: {zoo.machine_speed(1)}"]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(args.out, text + "\n")
    return text


if __name__ == "__main__":
    main()
