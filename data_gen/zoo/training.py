"""Training the zoo: the sizes (:class:`Budget`), the autoencoder, decoder fine-tuning and prior loops, and the
reconstruction PSNR the cards report. Everything seeded; run single-threaded it is bit-reproducible."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from data_gen.zoo.architectures import NUM_TRAIN_TIMESTEPS, build_scheduler, encode_unscaled

BAR = {"position": None}  # tqdm line of this process's bars; set only inside --jobs worker processes


@dataclass(frozen=True)
class Budget:
    """Training sizes. The defaults are the shipped zoo; :data:`MICRO` is a smoke run for tests."""

    n_crops: int = 20000          # training crops (shared by all members; data seed 0)
    ae_steps: int = 1200
    ae_batch: int = 32
    ae_lr: float = 2e-3
    kl_weight: float = 1e-6       # weight of the KL term (summed over latent elements) against pixel MSE
    finetune_steps: int = 300     # kl-a-ft: decoder-only steps
    finetune_lr: float = 5e-4
    prior_steps: int = 1000
    prior_batch: int = 64
    prior_lr: float = 1e-3
    ema_decay: float = 0.995
    n_heldout: int = 256          # held-out real crops (eval photos) for the card's PSNR
    speed_batch: int = 256        # decoder speed measurement
    speed_threads: int = 2


MICRO = Budget(n_crops=256, ae_steps=4, ae_batch=8, finetune_steps=2, prior_steps=4, prior_batch=8,
               n_heldout=16, speed_batch=8, speed_threads=1)


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old)


def psnr(ae, images01: torch.Tensor, batch: int = 256) -> float:
    """Mean PSNR (dB, [0, 1] pixels) of encode -> decode (VQ quantised, as in generation) over ``images01``."""
    vals = []
    with torch.no_grad():
        for chunk in images01.split(batch):
            z = encode_unscaled(ae, chunk * 2 - 1)
            rec = (ae.decode(z).sample / 2 + 0.5).clamp(0, 1)
            mse = (rec - chunk).pow(2).flatten(1).mean(1).clamp_min(1e-10)
            vals.append(-10 * torch.log10(mse))
    return float(torch.cat(vals).mean())



# -- training ---------------------------------------------------------------------------------------------------
def _batches(n: int, batch: int, steps: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """``steps`` index batches, drawn epoch by epoch from seeded permutations of ``range(n)``."""
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        yield perm[pos:pos + min(batch, n)]
        pos += batch


def _refresh_dead_codes(quantizer, h: torch.Tensor, counts: torch.Tensor, gen: torch.Generator) -> int:
    """Move codebook entries unused since the last refresh onto random encoder outputs of this batch."""
    dead = (counts == 0).nonzero().flatten()
    if len(dead):
        vecs = h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1])
        pick = torch.randint(len(vecs), (len(dead),), generator=gen)
        quantizer.embedding.weight.data[dead] = vecs[pick]
    counts.zero_()
    return len(dead)


def train_autoencoder(ae, autoencoder: str, crops01: torch.Tensor, budget: Budget, seed: int, desc: str) -> dict:
    """Train ``ae`` on ``crops01`` (N, 3, H, W in [0, 1]) for ``budget.ae_steps`` Adam steps; return stats.

    Loss: pixel MSE in [-1, 1] plus, for KL, ``kl_weight`` x the posterior KL (latents sampled during training),
    and, for VQ, the codebook + commitment loss (beta 0.25), with unused codes moved onto encoder outputs
    every 50 steps.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(ae.parameters(), lr=budget.ae_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.ae_lr, total_steps=max(budget.ae_steps, 2),
                                                pct_start=0.05)
    counts = torch.zeros(ae.config.num_vq_embeddings) if autoencoder == "vq" else None
    ae.train()
    bar = tqdm(_batches(len(crops01), budget.ae_batch, budget.ae_steps, gen), total=budget.ae_steps, desc=desc,
               leave=False, position=BAR["position"])
    mse = torch.tensor(float("nan"))
    for step, idx in enumerate(bar):
        x = crops01[idx] * 2 - 1
        extra = torch.zeros(())
        if autoencoder == "kl":
            post = ae.encode(x).latent_dist
            rec = ae.decode(post.sample(gen)).sample
            extra = budget.kl_weight * post.kl().mean()
        elif autoencoder == "vq":
            h = ae.encode(x).latents
            zq, extra, (_, _, codes) = ae.quantize(h)
            counts += torch.bincount(codes.flatten(), minlength=len(counts))
            rec = ae.decode(zq, force_not_quantize=True).sample
            if step % 50 == 49 and step < budget.ae_steps * 0.8:
                _refresh_dead_codes(ae.quantize, h, counts, gen)
        else:
            rec = ae.decode(ae.encode(x).latents).sample
        mse = F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        (mse + extra).backward()
        opt.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(mse01=f"{mse.item() / 4:.2e}")
    ae.eval()
    return {"final_train_mse01": mse.item() / 4}


def finetune_decoder(ae, crops01: torch.Tensor, budget: Budget, seed: int, desc: str,
                     on_step: Callable[[int], None] | None = None) -> dict:
    """Fine-tune only the decoder (and post-quant conv) of a KL autoencoder; the encoder stays frozen.

    Like SD's ft-MSE VAE: same encoder and latent space, a decoder trained further with a different loss
    (here L1 + MSE instead of MSE) on a differently seeded stream of the same data. ``on_step(k)`` is called after
    the k-th optimiser step (k = 1..finetune_steps): the run of N steps is a prefix of any longer one (constant lr,
    one seeded stream), so a caller can snapshot the decoder after N steps of a longer run.
    """
    ae.requires_grad_(False)
    params = list(ae.decoder.parameters()) + list(ae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=budget.finetune_lr)
    ae.decoder.train()
    loss = torch.tensor(float("nan"))
    for step, idx in enumerate(tqdm(_batches(len(crops01), budget.ae_batch, budget.finetune_steps, gen),
                                    total=budget.finetune_steps, desc=desc, leave=False, position=BAR["position"])):
        x = crops01[idx] * 2 - 1
        with torch.no_grad():
            z = ae.encode(x).latent_dist.sample(gen)
        rec = ae.decode(z).sample
        loss = F.mse_loss(rec, x) + 0.1 * F.l1_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step + 1)
    ae.eval().requires_grad_(True)
    return {"final_finetune_loss": loss.item()}


def whiten_latent_channels(ae, latents: torch.Tensor) -> list[float]:
    """Give each latent channel of a KL autoencoder unit std on ``latents`` (its unscaled training latents), in place.

    The per-channel std ``s`` is folded into the 1x1 convolutions around the latent: the encoder's ``quant_conv``
    outputs ``mean / s`` (and ``logvar - 2 log s``), the decoder's ``post_quant_conv`` multiplies its input by
    ``s``, so ``decode(encode(x))`` is the same function (up to float rounding). Needed when the channels differ
    by orders of magnitude (kl16: stds 0.06 to 3.3): the zoo's pipelines scale latents by one global factor, and a
    prior trained on channels 30x below unit std samples them at the wrong scale, which the decoder turns into
    noise. Returns ``s``.
    """
    std = latents.std(dim=(0, 2, 3)).double()
    c = std.numel()
    with torch.no_grad():
        qw, qb = ae.quant_conv.weight, ae.quant_conv.bias
        qw[:c] /= std.view(-1, 1, 1, 1).to(qw.dtype)
        qb[:c] /= std.to(qb.dtype)
        qb[c:] -= (2 * std.log()).to(qb.dtype)
        ae.post_quant_conv.weight.mul_(std.view(1, -1, 1, 1).to(qw.dtype))
    return [float(v) for v in std]


def latents_for_prior(ae, crops01: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Unscaled latents of the training crops (what the prior models, before scaling)."""
    with torch.no_grad():
        return torch.cat([encode_unscaled(ae, c * 2 - 1) for c in crops01.split(batch)])


def train_prior(unet, latents: torch.Tensor, budget: Budget, seed: int, desc: str, prediction: str = "epsilon"):
    """DDPM training on scaled latents; returns the EMA copy of ``unet`` (what is shipped).

    ``prediction``: the target, ``"epsilon"`` (the noise) or ``"v_prediction"`` (``sqrt(a) noise - sqrt(1 - a) z0``,
    which keeps the high-noise steps well posed).
    """
    if prediction not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction: expected 'epsilon' or 'v_prediction', got {prediction!r}")
    gen = torch.Generator().manual_seed(seed)
    noise_sched = build_scheduler("ddpm")
    alphas = noise_sched.alphas_cumprod
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=budget.prior_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.prior_lr,
                                                total_steps=max(budget.prior_steps, 2), pct_start=0.05)
    unet.train()
    bar = tqdm(_batches(len(latents), budget.prior_batch, budget.prior_steps, gen), total=budget.prior_steps,
               desc=desc, leave=False, position=BAR["position"])
    loss = torch.tensor(float("nan"))
    for step, idx in enumerate(bar):
        z0 = latents[idx]
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(idx),), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        target = noise if prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * z0
        loss = F.mse_loss(unet(zt, t).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        decay = min(budget.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return ema.eval(), {"final_prior_loss": loss.item()}
