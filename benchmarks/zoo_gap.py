"""Does the paper's effect hold in the zoo? Median reconstruction loss per (inspected member, image source).

For each inspected member, images from every member (its own samples, saved as 8-bit like a PNG) and real
evaluation crops are inverted through the inspected decoder: encoder initialisation, Adam on the latent
(lr 0.05, halved after step 0 and every 50 steps, as in the authors' code), pixel MSE in [0, 1], score =
minimum over the steps. A small local loop on purpose: the project's engine is ``latenttracer/inversion.py``;
this script only checks the zoo.

    .venv/bin/python benchmarks/zoo_gap.py --zoo zoo --n 32 --steps 100
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from data_gen import real_images, zoo


def scores(ae, images01: torch.Tensor, steps: int = 100, lr: float = 0.05) -> torch.Tensor:
    """Min-over-steps pixel MSE of latent inversion for each image (batched; images are independent)."""
    vq = ae.__class__.__name__ == "VQModel"
    scale = 1.0 if vq else float(ae.config.scaling_factor)
    with torch.no_grad():
        z = zoo.encode(ae, images01 * 2 - 1)
        if vq:
            z = ae.quantize(z)[0]
    z = (z * scale).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    best = torch.full((len(images01),), float("inf"))
    for i in range(steps):
        rec = (zoo.decode_for_inversion(ae, z / scale) / 2 + 0.5).clamp(0, 1)
        per_image = (rec - images01).pow(2).flatten(1).mean(1)
        best = torch.minimum(best, per_image.detach())
        opt.zero_grad()
        per_image.sum().backward()
        opt.step()
        if i % 50 == 0:
            for g in opt.param_groups:
                g["lr"] *= 0.5
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoo", default="zoo")
    p.add_argument("--n", type=int, default=32, help="images per source")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--members", default="", help="comma-separated subset (default: all found)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.zoo)
    names = [n for n in (args.members.split(",") if args.members else zoo.MEMBERS)
             if (root / n / "model_index.json").is_file()]
    pipes = {n: zoo.load_member(root / n) for n in names}
    resolution = pipes[names[0]].vqvae.config.sample_size
    sources = {n: (zoo.sample(pipe, args.n, seed=123) * 255).round() / 255 for n, pipe in pipes.items()}
    real = real_images.make_eval_crops(resolution, max(args.n, 3), seed=0)[0][: args.n]
    sources["real"] = torch.from_numpy(real).permute(0, 3, 1, 2).float() / 255
    print(f"median min-over-{args.steps}-steps MSE ([0,1] pixels), {args.n} images per source")
    print("own/other: own median over the lowest other median; own max, other min: the worst own image and the "
          "best non-belonging image (separable when own max < other min)")
    print(f"{'inspected':10s}" + "".join(f"{s:>11s}" for s in sources)
          + f"{'own/other':>11s}{'own max':>11s}{'other min':>11s}{'s':>5s}")
    for name, pipe in pipes.items():
        t0 = time.perf_counter()
        res = {s: scores(pipe.vqvae, imgs, args.steps) for s, imgs in sources.items()}
        med = {s: float(v.median()) for s, v in res.items()}
        other = min(v for s, v in med.items() if s != name)
        other_min = min(float(v.min()) for s, v in res.items() if s != name)
        print(f"{name:10s}" + "".join(f"{v:11.2e}" for v in med.values())
              + f"{med[name] / other:11.1e}{float(res[name].max()):11.2e}{other_min:11.2e}"
              + f"{time.perf_counter() - t0:5.0f}", flush=True)


if __name__ == "__main__":
    main()
