"""Inversion throughput: the batched engine against the authors' procedure, in one run on one machine.

    .venv/bin/python benchmarks/inversion_throughput.py [--model zoo/kl-a] [--images N] [--authors-images M]

Rows (same model, same images, the paper's settings: encoder init, 100 steps, lr 0.05, authors' schedule):
  (a) engine, batched        -- `latenttracer.inversion.invert` at --batch-size
  (c) engine, batch 1        -- the same, one image at a time, in this process
  (b) authors' procedure     -- batch 1, a fresh Python process per image that loads the model (what the
                                authors' runner does with os.system), timed end to end per image
It also prints the achieved GFLOP/s of the decoder forward+backward (counted with torch's FlopCounterMode) next
to a dense float32 matmul measured on the same machine. Ratios are what to compare; machines are noisy.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latenttracer.autoencoders import load_autoencoder  # noqa: E402
from latenttracer.images import load_image  # noqa: E402
from latenttracer.inversion import InversionConfig, invert  # noqa: E402


def single_image(model: str, image: str, steps: int) -> None:
    """What one authors'-style process does: import, load the model, load one image, invert it, print."""
    ae = load_autoencoder(model)
    x, _ = load_image(image, ae.resolution)
    res = invert(ae, x[None], InversionConfig(steps=steps, batch_size=1, device="cpu"))[0]
    print(res.score)


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def decoder_flops_per_step(ae, batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(batch, 3, ae.resolution, ae.resolution)
    z = ae.encode(x).requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        ((ae.decode(z) - x) ** 2).flatten(1).mean(1).sum().backward()
    return counter.get_total_flops() / batch


def make_images(ae, n: int, folder: Path) -> list[Path]:
    """Images the model's own decoder made (8-bit PNG), as a generated set would hold."""
    g = torch.Generator().manual_seed(0)
    z0 = ae.encode(torch.rand(1, 3, ae.resolution, ae.resolution))
    with torch.no_grad():
        imgs = ae.decode(torch.randn((n, *z0.shape[1:]), generator=g))
    paths = []
    for i, x in enumerate(imgs):
        p = folder / f"{i:05d}.png"
        Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "zoo" / "kl-a"))
    ap.add_argument("--images", type=int, default=256, help="images for the engine rows")
    ap.add_argument("--authors-images", type=int, default=6, help="images (= processes) for row (b)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--single", nargs=2, metavar=("MODEL", "IMAGE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.single:
        return single_image(*args.single, steps=args.steps)

    ae = load_autoencoder(args.model, device="cpu")
    cfg = InversionConfig(steps=args.steps, batch_size=args.batch_size, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(ae, max(args.images, args.authors_images), Path(tmp))
        x = torch.stack([load_image(p, ae.resolution)[0] for p in paths])
        rows = []

        invert(ae, x[: min(8, len(x))], InversionConfig(steps=2, batch_size=8))  # warm-up
        t0 = time.perf_counter()
        batched = invert(ae, x[: args.images], cfg)
        t_a = (time.perf_counter() - t0) / args.images
        rows.append(("(a) engine, batched", f"batch {args.batch_size}", args.images, t_a))

        n_c = min(args.images, 16)
        t0 = time.perf_counter()
        single = invert(ae, x[:n_c], InversionConfig(steps=args.steps, batch_size=1, device="cpu"))
        t_c = (time.perf_counter() - t0) / n_c
        rows.append(("(c) engine, batch 1", "in-process", n_c, t_c))
        drift = max(abs(a.score - b.score) / max(b.score, 1e-12) for a, b in zip(single, batched))

        t0 = time.perf_counter()
        threads = ["--threads", str(args.threads)] if args.threads else []
        for p in paths[: args.authors_images]:
            subprocess.run([sys.executable, __file__, "--single", args.model, str(p), "--steps", str(args.steps),
                            *threads], check=True, capture_output=True)
        t_b = (time.perf_counter() - t0) / args.authors_images
        rows.append(("(b) authors' procedure", "process per image", args.authors_images, t_b))

    flops = decoder_flops_per_step(ae, 8)
    achieved = flops * args.steps / t_a / 1e9
    peak = matmul_gflops()
    print(f"model {ae.name} ({ae.family}, {ae.resolution}px), {args.steps} steps, torch threads "
          f"{torch.get_num_threads()}, {torch.__version__}, {sys.platform}")
    print()
    print("| procedure | how | images | s/image | image-steps/s | speed-up vs (b) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, how, n, t in rows:
        print(f"| {name} | {how} | {n} | {t:.3f} | {args.steps / t:.0f} | {t_b / t:.1f}x |")
    print()
    print(f"decoder forward+backward: {flops / 1e6:.1f} MFLOP per image-step; achieved {achieved:.1f} GFLOP/s "
          f"in (a) vs dense fp32 matmul {peak:.1f} GFLOP/s ({achieved / peak:.0%} of it)")
    print(f"max relative score difference batch 1 vs batched: {drift:.1e}")


if __name__ == "__main__":
    main()
