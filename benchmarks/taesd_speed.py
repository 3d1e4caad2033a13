"""Inversion speed through a real-width decoder (taef2, 64 channels): image-steps/s of the engine and its fraction
of this machine's dense-matmul rate, and what channels_last, bfloat16 autocast and torch.compile change.

The engine is :func:`latenttracer.inversion.invert` itself (the authors' loop, encoder init), run for ``--steps``
steps on a batch of real crops; a variant changes only how the autoencoder's ``decode`` runs (the loss and the
scores stay float32, computed by the engine):

* ``fp32``: as shipped;
* ``channels_last``: weights and latents in channels-last memory format;
* ``bf16``: the decoder under ``torch.autocast("cpu", torch.bfloat16)``, its output cast back to float32;
* ``channels_last+bf16``: both;
* ``compile``: ``torch.compile`` of the decoder (inductor; the first call compiles and is not timed).

Per variant and size: image-steps/s (best of ``--reps`` timed runs after one warm-up), achieved GFLOP/s (forward +
backward w.r.t. the latent, counted by ``torch.utils.flop_counter``), its fraction of the dense float32 matmul rate
measured here with the same threads, and the largest relative change of the scores against fp32. A variant that
changes scores can only be an option of the engine, never its default.

    python benchmarks/taesd_speed.py                       # 64 and 128 px, 2 threads; prints a Markdown table
    python benchmarks/taesd_speed.py --sizes 64 --threads 1 --out results/taesd_speed.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from data_gen import real_images
from data_gen.zoo.speed import machine_speed
from latenttracer import atomic, tables
from latenttracer.autoencoders import load_autoencoder
from latenttracer.inversion import InversionConfig, invert

VARIANTS = ("fp32", "channels_last", "bf16", "channels_last+bf16", "compile")


def matmul_gflops(threads: int, n: int = 1024, reps: int = 5) -> float:
    """Dense float32 matmul rate (GFLOP/s, best of ``reps``) with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def step_flops(ae, size: int) -> float:
    """FLOPs of one inversion step for one image: decoder forward + backward w.r.t. the latent."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, size, size)
    z = ae.encode(x).detach().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        loss = F.mse_loss(ae.decode(z), x)
        loss.backward()
    return float(counter.get_total_flops())


def variant_decoder(ae, variant: str):
    """``ae`` with its decode changed as ``variant`` says (a fresh load each time; the engine is untouched)."""
    net = ae.model.decoder
    if "channels_last" in variant:
        net.to(memory_format=torch.channels_last)
    run = torch.compile(net) if variant == "compile" else net
    bf16 = "bf16" in variant

    def decode(latents: torch.Tensor) -> torch.Tensor:
        if "channels_last" in variant:
            latents = latents.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            out = run(latents)
        out = out.float()
        return out.clamp(0, 1) if ae.clamp else out

    ae.decode = decode
    return ae


def measure(model: str, size: int, variant: str, images: torch.Tensor, steps: int, reps: int):
    ae = variant_decoder(load_autoencoder(model, resolution=size, device="cpu"), variant)
    cfg = InversionConfig(steps=steps, batch_size=len(images), device="cpu")
    invert(ae, images[:1], dataclasses.replace(cfg, steps=2))  # warm-up (compiles under `compile`)
    times, scores = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        results = invert(ae, images, cfg)
        times.append(time.perf_counter() - t0)
        scores = torch.tensor([r.score for r in results], dtype=torch.float64)
    return len(images) * steps / min(times), scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/taef2")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--batch", type=int, nargs="+", default=[8, 4], help="images per size (one per --sizes)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--out", default=None, help="also write the table (Markdown) here, e.g. results/taesd_speed.md")
    args = p.parse_args()
    if len(args.batch) not in (1, len(args.sizes)):
        raise SystemExit(f"--batch: give one value or one per size ({len(args.sizes)})")
    batches = args.batch * len(args.sizes) if len(args.batch) == 1 else args.batch
    speed = machine_speed(1)
    gflops = matmul_gflops(args.threads)
    torch.set_num_threads(args.threads)
    rows = []
    for size, batch in zip(args.sizes, batches):
        crops = real_images.make_eval_crops(size, batch, seed=0)[0]
        images = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255.0)
        flops = step_flops(load_autoencoder(args.model, resolution=size, device="cpu"), size)
        base_scores = None
        for variant in args.variants:
            try:
                rate, scores = measure(args.model, size, variant, images, args.steps, args.reps)
            except Exception as err:  # e.g. torch.compile without a working C++ toolchain
                rows.append([size, variant, batch, "failed", "", "", f"{type(err).__name__}: {str(err)[:80]}"])
                print(rows[-1], flush=True)
                continue
            if base_scores is None:
                base_scores = scores
            change = float(((scores - base_scores).abs() / base_scores.abs()).max())
            achieved = rate * flops / 1e9
            rows.append([size, variant, batch, f"{rate:.2f}", f"{achieved:.1f}", f"{achieved / gflops:.1%}",
                         f"{change:.1e}"])
            print(rows[-1], flush=True)
    table = tables.markdown_table(rows, ["px", "variant", "batch", "image-steps/s", "GFLOP/s", "of matmul rate",
                                         "max relative score change vs fp32"])
    text = "\n".join([
        f"# Inversion speed through taef2's decoder ({args.model})", "",
        f"latenttracer.inversion.invert, {args.steps} steps (authors' loop, encoder init), {args.threads} threads, "
        f"best of {args.reps} after a warm-up; GFLOP/s from torch.utils.flop_counter (decoder forward + backward "
        f"w.r.t. the latent: {flops / 1e9:.2f} GFLOP per image-step at {args.sizes[-1]} px); dense float32 matmul "
        f"rate here: {gflops:.1f} GFLOP/s (1024x1024, {args.threads} threads). Machine speed: {speed}.",
        "Command: `python benchmarks/taesd_speed.py " + " ".join(f"--sizes {' '.join(map(str, args.sizes))}".split())
        + f" --threads {args.threads} --steps {args.steps}`.", "", table, ""])
    print(text, flush=True)
    if args.out:
        atomic.write_text(Path(args.out), text)


if __name__ == "__main__":
    main()
