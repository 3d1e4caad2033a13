"""Peak memory of an SD-size VAE decoder (random init, no download) on CPU, forward and forward + backward, and
the activation counts it implies for :mod:`latenttracer.memory`'s estimate.

    python benchmarks/decoder_memory.py --resolutions 64 128

Each measurement runs in a fresh process (peak resident set size, ``ru_maxrss``, after the model is built),
one image, float32, one thread. The implied count is the growth of peak memory between two resolutions divided
by the growth of ``width x resolution^2 x 4 B`` (width 128, the decoder's full-size block), which removes fixed
overheads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

WIDTH = 128
PROBE = """
import json, resource, sys, torch
torch.set_num_threads(1)
from diffusers import AutoencoderKL
res, backward = int(sys.argv[1]), sys.argv[2] == "backward"
ae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                   norm_num_groups=32).eval().requires_grad_(False)
z = torch.randn(1, 4, res // 8, res // 8).requires_grad_(backward)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.set_grad_enabled(backward):
    out = ae.decode(z).sample
    if backward:
        out.square().mean().backward()
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024))
"""


def peak_bytes(resolution: int, mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, str(resolution), mode], capture_output=True, text=True,
                          check=True)
    return int(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    args = p.parse_args()
    print("| pass | " + " | ".join(f"{r} px (MB)" for r in args.resolutions) + " | implied activations |")
    print("|---|" + "---:|" * (len(args.resolutions) + 1))
    for mode in ("forward", "backward"):
        peaks = [peak_bytes(r, mode) for r in args.resolutions]
        lo, hi = args.resolutions[0], args.resolutions[-1]
        implied = (peaks[-1] - peaks[0]) / (WIDTH * (hi ** 2 - lo ** 2) * 4)
        label = "forward (no_grad)" if mode == "forward" else "forward + backward"
        print(f"| {label} | " + " | ".join(f"{b / 2 ** 20:.0f}" for b in peaks) + f" | {implied:.0f} |")


if __name__ == "__main__":
    main()
