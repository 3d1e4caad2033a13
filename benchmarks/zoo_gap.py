"""Does the paper's effect hold in the zoo? Median reconstruction loss per (inspected member, image source).

For each inspected member, images from every member (its own samples, rounded to 8 bits like a PNG) and real
evaluation crops are inverted through the inspected decoder by the project's engine
(:func:`latenttracer.inversion.invert`, default :class:`~latenttracer.inversion.InversionConfig`: encoder
initialisation, Adam on the latent, lr 0.05 with the authors' schedule, pixel MSE in [0, 1], score = minimum
over the steps; ``--steps`` sets the step count).

    .venv/bin/python benchmarks/zoo_gap.py --zoo zoo --n 32 --steps 100
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from data_gen import real_images, zoo
from latenttracer.autoencoders import load_autoencoder
from latenttracer.inversion import InversionConfig, invert


def scores(ae, images01: torch.Tensor, steps: int = 100) -> np.ndarray:
    """Each image's score (min-over-steps pixel MSE) under ``ae``, from the engine; failed images are NaN."""
    results = invert(ae, images01, InversionConfig(steps=steps, device="cpu"))
    return np.array([r.score if r.status == "ok" else np.nan for r in results])


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
    if not names:
        raise SystemExit(f"{root}: no zoo members (train with python -m data_gen.zoo)")
    aes = {n: load_autoencoder(root / n) for n in names}
    resolution = aes[names[0]].resolution
    sources = {n: (zoo.sample(zoo.load_member(root / n), args.n, seed=123) * 255).round() / 255 for n in names}
    real = real_images.make_eval_crops(resolution, max(args.n, 3), seed=0)[0][: args.n]
    sources["real"] = torch.from_numpy(real).permute(0, 3, 1, 2).float() / 255
    print(f"median min-over-{args.steps}-steps MSE ([0,1] pixels), {args.n} images per source")
    print("own/other: own median over the lowest other median; own max, other min: the worst own image and the "
          "best non-belonging image (separable when own max < other min)")
    print(f"{'inspected':10s}" + "".join(f"{s:>11s}" for s in sources)
          + f"{'own/other':>11s}{'own max':>11s}{'other min':>11s}{'s':>5s}")
    for name, ae in aes.items():
        t0 = time.perf_counter()
        res = {s: scores(ae, imgs, args.steps) for s, imgs in sources.items()}
        med = {s: float(np.nanmedian(v)) for s, v in res.items()}
        other = min(v for s, v in med.items() if s != name)
        other_min = min(float(np.nanmin(v)) for s, v in res.items() if s != name)
        print(f"{name:10s}" + "".join(f"{v:11.2e}" for v in med.values())
              + f"{med[name] / other:11.1e}{float(np.nanmax(res[name])):11.2e}{other_min:11.2e}"
              + f"{time.perf_counter() - t0:5.0f}", flush=True)


if __name__ == "__main__":
    main()
