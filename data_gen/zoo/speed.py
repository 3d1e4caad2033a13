"""Decoder cost: parameters, forward MFLOP and the rate of forward + backward w.r.t. the latent (what latent
inversion runs). Used for the member cards and ``benchmarks/decoder_speed.py``."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from data_gen.zoo.architectures import RESOLUTION, decode_for_inversion, encode_unscaled
from data_gen.zoo.training import threads as _threads


def decoder_speed(ae, batch: int = 256, reps: int = 5, threads: int | None = 2,
                  resolution: int | None = None) -> dict:
    """Decoder cost: params, forward MFLOP per image, and image-steps/s of forward + backward w.r.t. the input.

    Weights are frozen (``requires_grad`` False), fp32, ``threads`` intra-op threads. The rate is the best of
    ``reps`` timed repetitions after one warm-up (the machine is shared; the best repetition is the least
    disturbed one). ``resolution``: the image side (default: ``config.sample_size``, else 32).
    """
    from torch.utils.flop_counter import FlopCounterMode

    size = int(resolution or ae.config.get("sample_size") or RESOLUTION)
    was_training = ae.training
    ae.eval()
    flags = [p.requires_grad for p in ae.parameters()]
    ae.requires_grad_(False)
    with torch.no_grad():
        shape = encode_unscaled(ae, torch.zeros(1, 3, size, size)).shape[1:]
    z = torch.randn(batch, *shape)
    target = torch.rand(batch, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        decode_for_inversion(ae, z[:1])
    params = sum(p.numel() for name, p in ae.named_parameters()
                 if name.startswith(("decoder.", "post_quant_conv.", "quantize.")))
    times = []
    with _threads(threads):
        for i in range(reps + 1):
            zz = z.clone().requires_grad_(True)
            t0 = time.perf_counter()
            img = (decode_for_inversion(ae, zz) / 2 + 0.5).clamp(0, 1)
            torch.autograd.grad(F.mse_loss(img, target), zz)
            if i:
                times.append(time.perf_counter() - t0)
    for p, f in zip(ae.parameters(), flags):
        p.requires_grad_(f)
    ae.train(was_training)
    return {"decoder_params": params, "decoder_mflop_per_image": counter.get_total_flops() / 1e6,
            "image_steps_per_s": batch / min(times), "batch": batch, "threads": threads}


def machine_speed(threads: int = 1) -> str:
    """This machine's speed, one line: decoder forward + backward image-steps/s of a fresh (seeded) KL member.

    Printed beside wall times (``make reproduce-table1``, the methods table), so that a reader can compare runs on
    machines that differ in single-thread speed; the same measurement as ``benchmarks/decoder_speed.py --machine``.
    """
    from data_gen.zoo.architectures import build_autoencoder

    torch.manual_seed(0)
    s = decoder_speed(build_autoencoder("kl", RESOLUTION), batch=64, reps=3, threads=threads)
    return (f"{s['image_steps_per_s']:.0f} KL-decoder image-steps/s (forward + backward, batch 64, {threads} "
            f"thread{'s' if threads != 1 else ''}, best of 3; benchmarks/decoder_speed.py --machine)")
