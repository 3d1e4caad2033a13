"""Seconds per image of every scoring method on one inspected model (no cache), and, with ``--other``, how well
each separates the model's own images from another set (AUC, belonging = own).

    python benchmarks/method_speed.py --model zoo/kl-a --images own_dir --other other_dir --threads 1

Every method goes through :func:`latenttracer.tracing.score_images`, the one scoring path; each runs once on
the same images, in the same process, so the ratios between rows are what to compare. AEROBLADE's LPIPS
distance is left out unless ``--vgg-weights`` and ``--lpips-weights`` are given.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from latenttracer.autoencoders import load_autoencoder
from latenttracer.images import list_images
from latenttracer.methods import get_method
from latenttracer.metrics import detection_metrics
from latenttracer.tracing import score_images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="zoo/kl-a")
    p.add_argument("--images", required=True, help="images made by --model")
    p.add_argument("--other", help="images not made by --model (for the AUC column)")
    p.add_argument("--n", type=int, default=20, help="images per set")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, help="override the inversion methods' steps (default: their presets)")
    p.add_argument("--vgg-weights")
    p.add_argument("--lpips-weights")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ae = load_autoencoder(args.model, device="cpu")
    own = list_images(args.images)[: args.n]
    other = list_images(args.other)[: args.n] if args.other else []
    steps = {"steps": args.steps} if args.steps else {}
    methods = [("latenttracer", dict(steps)), ("ronan", dict(steps)), ("aedr", {}),
               ("aeroblade", {"distance": "l2"}), ("aeroblade", {"distance": "ssim"})]
    if args.vgg_weights and args.lpips_weights:
        methods.append(("aeroblade", {"vgg_weights": args.vgg_weights, "lpips_weights": args.lpips_weights}))
    score_images(ae, own[:2], method=get_method("aedr"), progress=False)  # warm-up
    print(f"model {ae.name} ({ae.family}, {ae.resolution}px), {len(own)} own + {len(other)} other images, "
          f"torch threads {torch.get_num_threads()}, {torch.__version__}, {platform.system().lower()}")
    print("| method | settings | s/image | AUC own vs other |")
    print("|---|---|---:|---:|")
    for name, options in methods:
        method = get_method(name, options)
        t0 = time.perf_counter()
        frame, _ = score_images(ae, own + other, method=method, progress=False)
        per_image = (time.perf_counter() - t0) / len(frame)
        auc = "–"
        if other:
            scores = frame.set_index("path")["score"]
            auc = f"{detection_metrics(scores[[str(p) for p in own]], scores[[str(p) for p in other]]).auc:.3f}"
        shown = {k: v for k, v in method.identity().items() if k in ("steps", "lr", "init", "posterior", "distance")}
        print(f"| {method.label} | {' '.join(f'{k}={v}' for k, v in shown.items())} | {per_image:.4f} | {auc} |")


if __name__ == "__main__":
    main()
