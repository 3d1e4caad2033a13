"""The embedded default zoo: small latent generative models trained here, on CPU, from shipped photos.

Each member is an autoencoder plus an unconditional latent diffusion prior (``UNet2DModel``, DDPM objective on
the autoencoder's scaled latents, sampled with DDIM), saved as a diffusers ``LDMPipeline`` directory (components
``vqvae``, ``unet``, ``scheduler``), so ``diffusers.DiffusionPipeline.from_pretrained(member_dir)`` loads it
and the code path that serves Stable Diffusion's VAE serves these too.

=========  =================================================  ===========================================
member     autoencoder                                        stands in for
=========  =================================================  ===========================================
kl-a       AutoencoderKL, seed 0                              SD 1.5
kl-b       AutoencoderKL, same architecture and data, seed 1  SD 2 (same architecture, other weights)
kl-a-ft    kl-a with only its decoder fine-tuned; kl-a's      SD's fine-tuned VAE (the hardest pair)
           prior (encoder and latent space are unchanged)
vq         VQModel                                            VQ-Diffusion / Kandinsky MoVQ
tiny       AutoencoderTiny                                    TAESD-style fast decoder
=========  =================================================  ===========================================

Conventions: encoder input and decoder output in [-1, 1]; ``config.scaling_factor`` makes the scaled latents
unit-std on the training crops; ``config.sample_size`` is the image resolution; the VQ prior runs on
pre-quantisation latents (``decode`` quantises). Architectures are chosen for the speed of the decoder's
forward + backward pass w.r.t. its input (what latent inversion runs), measured by :func:`decoder_speed`.

Run ``python -m data_gen.zoo --out zoo`` to train every member (``--members``, ``--micro`` for a smoke run),
and ``python -m data_gen.zoo --out zoo --grid docs/zoo_samples.png`` to draw the sample grid.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import multiprocessing
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from data_gen import real_images

RESOLUTION = 32
LATENT_CHANNELS = 4
NUM_TRAIN_TIMESTEPS = 1000
_BAR = {"position": None}  # tqdm line of this process's bars; set only inside --jobs worker processes


@dataclass(frozen=True)
class Member:
    """One zoo member. ``base``: fine-tune this member's decoder and reuse its prior instead of training anew."""

    name: str
    kind: str  # "kl", "vq" or "tiny"
    seed: int
    stands_in_for: str
    base: str | None = None


MEMBERS: dict[str, Member] = {m.name: m for m in (
    Member("kl-a", "kl", 0, "Stable Diffusion 1.5 (KL autoencoder)"),
    Member("kl-b", "kl", 1, "Stable Diffusion 2 (same autoencoder architecture, other weights)"),
    Member("kl-a-ft", "kl", 2, "SD's fine-tuned VAE decoder (same encoder, decoder fine-tuned)", base="kl-a"),
    Member("vq", "vq", 3, "VQ-Diffusion / Kandinsky MoVQ (vector-quantised autoencoder)"),
    Member("tiny", "tiny", 4, "TAESD-style fast decoder (AutoencoderTiny)"),
)}


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


# -- architectures ---------------------------------------------------------------------------------------------
def build_autoencoder(kind: str, resolution: int = RESOLUTION):
    """A fresh, randomly initialised autoencoder of ``kind`` (seed the RNG first for determinism).

    Downsampling factor 4 (32x32 images -> 8x8x4 latents) for all kinds; widths picked for decoder speed
    (``benchmarks/decoder_speed.py``): KL/VQ channels (8, 16, 32), one layer per block, no mid-block attention;
    Tiny decoder 3 x 16 channels, one block per level.
    """
    from diffusers import AutoencoderKL, AutoencoderTiny, VQModel

    shared = {
        "in_channels": 3, "out_channels": 3, "block_out_channels": (8, 16, 32), "layers_per_block": 1,
        "down_block_types": ("DownEncoderBlock2D",) * 3, "up_block_types": ("UpDecoderBlock2D",) * 3,
        "latent_channels": LATENT_CHANNELS, "norm_num_groups": 8, "sample_size": resolution,
        "scaling_factor": 1.0, "mid_block_add_attention": False,
    }
    if kind == "kl":
        return AutoencoderKL(**shared)
    if kind == "vq":
        return VQModel(**shared, num_vq_embeddings=256, vq_embed_dim=LATENT_CHANNELS)
    if kind == "tiny":
        ae = AutoencoderTiny(
            in_channels=3, out_channels=3, encoder_block_out_channels=(32, 32, 32),
            decoder_block_out_channels=(16, 16, 16), num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1),
            latent_channels=LATENT_CHANNELS, scaling_factor=1.0)
        ae.register_to_config(sample_size=resolution)
        return ae
    raise ValueError(f"autoencoder kind: expected 'kl', 'vq' or 'tiny', got {kind!r}")


def build_prior(latent_size: int):
    """The latent diffusion prior: a small ``UNet2DModel`` on ``(4, latent_size, latent_size)`` latents."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=latent_size, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=32)


def build_scheduler(kind: str = "ddim"):
    """Stable Diffusion's noise schedule (scaled-linear betas 0.00085..0.012, epsilon prediction): DDPM for
    training, DDIM for sampling (SD's settings; no sample clipping, the latents are unit-std, not in [-1, 1]).

    A cosine schedule was tried first: its last timestep has alpha_bar ~ 0, so a briefly trained prior's DDIM
    samples blew up (latent std 2.6 instead of 1) and fell off the encoder's range.
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    common = {"num_train_timesteps": NUM_TRAIN_TIMESTEPS, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
              "beta_end": 0.012, "clip_sample": False, "prediction_type": "epsilon"}
    if kind == "ddim":
        return DDIMScheduler(**common, set_alpha_to_one=False, steps_offset=1)
    return DDPMScheduler(**common)


# -- the autoencoder maps, in one place -------------------------------------------------------------------------
def encode(ae, x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> unscaled latents (KL: posterior mean; VQ: pre-quantisation; Tiny: encoder output)."""
    out = ae.encode(x)
    return out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents


def decode_for_inversion(ae, z: torch.Tensor) -> torch.Tensor:
    """Unscaled latents -> images in [-1, 1], without quantising (the path latent inversion differentiates)."""
    if ae.__class__.__name__ == "VQModel":
        return ae.decode(z, force_not_quantize=True).sample
    return ae.decode(z).sample


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old)


def decoder_speed(ae, batch: int = 256, reps: int = 5, threads: int | None = 2) -> dict:
    """Decoder cost: params, forward MFLOP per image, and image-steps/s of forward + backward w.r.t. the input.

    Weights are frozen (``requires_grad`` False), fp32, ``threads`` intra-op threads. The rate is the best of
    ``reps`` timed repetitions after one warm-up (the machine is shared; the best repetition is the least
    disturbed one).
    """
    from torch.utils.flop_counter import FlopCounterMode

    size = int(ae.config.sample_size)
    was_training = ae.training
    ae.eval()
    flags = [p.requires_grad for p in ae.parameters()]
    ae.requires_grad_(False)
    latent = _latent_size(ae, size)
    z = torch.randn(batch, LATENT_CHANNELS, latent, latent)
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


def _latent_size(ae, resolution: int) -> int:
    with torch.no_grad():
        return int(encode(ae, torch.zeros(1, 3, resolution, resolution)).shape[-1])


def psnr(ae, images01: torch.Tensor, batch: int = 256) -> float:
    """Mean PSNR (dB, [0, 1] pixels) of encode -> decode (VQ quantised, as in generation) over ``images01``."""
    vals = []
    with torch.no_grad():
        for chunk in images01.split(batch):
            z = encode(ae, chunk * 2 - 1)
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


def train_autoencoder(ae, kind: str, crops01: torch.Tensor, budget: Budget, seed: int, desc: str) -> dict:
    """Train ``ae`` on ``crops01`` (N, 3, H, W in [0, 1]) for ``budget.ae_steps`` Adam steps; return stats.

    Loss: pixel MSE in [-1, 1] plus, for KL, ``kl_weight`` x the posterior KL (latents sampled during training),
    and, for VQ, the codebook + commitment loss (beta 0.25), with unused codes moved onto encoder outputs
    every 50 steps.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(ae.parameters(), lr=budget.ae_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.ae_lr, total_steps=max(budget.ae_steps, 2),
                                                pct_start=0.05)
    counts = torch.zeros(ae.config.num_vq_embeddings) if kind == "vq" else None
    ae.train()
    bar = tqdm(_batches(len(crops01), budget.ae_batch, budget.ae_steps, gen), total=budget.ae_steps, desc=desc,
               leave=False, position=_BAR["position"])
    mse = torch.tensor(float("nan"))
    for step, idx in enumerate(bar):
        x = crops01[idx] * 2 - 1
        extra = torch.zeros(())
        if kind == "kl":
            post = ae.encode(x).latent_dist
            rec = ae.decode(post.sample(gen)).sample
            extra = budget.kl_weight * post.kl().mean()
        elif kind == "vq":
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


def finetune_decoder(ae, crops01: torch.Tensor, budget: Budget, seed: int, desc: str) -> dict:
    """Fine-tune only the decoder (and post-quant conv) of a KL autoencoder; the encoder stays frozen.

    Like SD's ft-MSE VAE: same encoder and latent space, a decoder trained further with a different loss
    (here L1 + MSE instead of MSE) on a differently seeded stream of the same data.
    """
    ae.requires_grad_(False)
    params = list(ae.decoder.parameters()) + list(ae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=budget.finetune_lr)
    ae.decoder.train()
    loss = torch.tensor(float("nan"))
    for idx in tqdm(_batches(len(crops01), budget.ae_batch, budget.finetune_steps, gen),
                    total=budget.finetune_steps, desc=desc, leave=False, position=_BAR["position"]):
        x = crops01[idx] * 2 - 1
        with torch.no_grad():
            z = ae.encode(x).latent_dist.sample(gen)
        rec = ae.decode(z).sample
        loss = F.mse_loss(rec, x) + 0.1 * F.l1_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    ae.eval().requires_grad_(True)
    return {"final_finetune_loss": loss.item()}


def latents_for_prior(ae, crops01: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Unscaled latents of the training crops (what the prior models, before scaling)."""
    with torch.no_grad():
        return torch.cat([encode(ae, c * 2 - 1) for c in crops01.split(batch)])


def train_prior(unet, latents: torch.Tensor, budget: Budget, seed: int, desc: str):
    """DDPM epsilon-prediction training on scaled latents; returns the EMA copy of ``unet`` (what is shipped)."""
    gen = torch.Generator().manual_seed(seed)
    noise_sched = build_scheduler("ddpm")
    alphas = noise_sched.alphas_cumprod
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=budget.prior_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.prior_lr,
                                                total_steps=max(budget.prior_steps, 2), pct_start=0.05)
    unet.train()
    bar = tqdm(_batches(len(latents), budget.prior_batch, budget.prior_steps, gen), total=budget.prior_steps,
               desc=desc, leave=False, position=_BAR["position"])
    loss = torch.tensor(float("nan"))
    for step, idx in enumerate(bar):
        z0 = latents[idx]
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(idx),), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(zt, t).sample, noise)
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


# -- members -----------------------------------------------------------------------------------------------------
def make_pipeline(ae, unet):
    """The member as a diffusers ``LDMPipeline`` (components ``vqvae``, ``unet``, ``scheduler``)."""
    from diffusers import LDMPipeline

    pipe = LDMPipeline(vqvae=ae, unet=unet, scheduler=build_scheduler("ddim"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_member(member_dir: str | Path):
    """Load a member directory with the generic ``DiffusionPipeline.from_pretrained`` (no extra arguments)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(member_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _card_readme(card: dict) -> str:
    s = card.get("speed")
    speed = (f"| decoder | {s['decoder_params']} params, {s['decoder_mflop_per_image']:.1f} MFLOP/image |\n"
             f"| decoder fwd+bwd | {s['image_steps_per_s']:.0f} image-steps/s (batch {s['batch']}, {s['threads']} "
             "threads, fp32, w.r.t. the latent) |\n") if s else ""
    return (
        f"# Zoo member `{card['name']}`\n\n"
        f"A small latent generative model trained by `data_gen/zoo.py` (stands in for {card['stands_in_for']}).\n"
        f"Load it with `diffusers.DiffusionPipeline.from_pretrained(\"zoo/{card['name']}\")` (an `LDMPipeline`: "
        f"`vqvae` = `{card['autoencoder_class']}`, `unet` = latent diffusion prior, `scheduler` = DDIM).\n\n"
        f"| field | value |\n|---|---|\n"
        f"| seed | {card['seed']} |\n"
        + (f"| based on | `{card['base']}` (decoder fine-tuned {card['budget']['finetune_steps']} steps; "
           f"prior reused) |\n" if card["base"] else "")
        + f"| resolution | {card['resolution']}x{card['resolution']}, latents {card['latent_shape']} |\n"
        f"| autoencoder steps | {card['autoencoder_steps']} |\n"
        f"| prior steps | {card['prior_steps']} |\n"
        f"| training seconds | {card['seconds']['total']:.0f} (autoencoder {card['seconds']['autoencoder']:.0f},"
        f" prior {card['seconds']['prior']:.0f}) |\n"
        f"| scaling factor | {card['scaling_factor']:.4f} |\n"
        f"| PSNR, held-out real crops | {card['psnr_heldout_real_db']:.2f} dB ({card['n_heldout']} crops) |\n"
        + speed + "\n"
        "Training data: crops of the photos marked `train` in `data_gen/real_images.py` (licences there); the "
        "`eval` photos are never seen in training. Full configuration in `card.json`.\n")


def _write_card(member_dir: Path, card: dict) -> None:
    (member_dir / "card.json").write_text(json.dumps(card, indent=1, default=str) + "\n")
    (member_dir / "README.md").write_text(_card_readme(card))


def _save_member(out: Path, pipe, card: dict) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    _write_card(tmp, card)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def add_speed_to_card(member_dir: str | Path, batch: int = 256, threads: int = 2) -> dict:
    """Measure a saved member's decoder with :func:`decoder_speed` and record it in its card; return the card."""
    member_dir = Path(member_dir)
    card = json.loads((member_dir / "card.json").read_text())
    card["speed"] = decoder_speed(load_member(member_dir).vqvae, batch=batch, threads=threads)
    _write_card(member_dir, card)
    return card


def train_member(member: Member, out_root: str | Path, budget: Budget = Budget(),
                 crops01: torch.Tensor | None = None, heldout01: torch.Tensor | None = None,
                 resolution: int = RESOLUTION, measure_speed: bool = True) -> dict:
    """Train one member and save it to ``out_root/<name>``; return its card.

    ``measure_speed=False`` leaves the decoder speed out of the card (add it later with
    :func:`add_speed_to_card`, e.g. once parallel training has finished and the cores are quiet).

    A member with ``base`` loads ``out_root/<base>`` (train that first), fine-tunes its decoder and reuses its
    prior and scaling factor. ``crops01`` / ``heldout01`` default to the shared training crops and the held-out
    real crops; pass them to avoid recomputing across members.
    """
    import diffusers

    out_root = Path(out_root)
    if crops01 is None:
        crops01 = real_images.training_crops(resolution, budget.n_crops, seed=0)
    if heldout01 is None:
        heldout01 = _heldout(resolution, budget.n_heldout)
    t_start = time.perf_counter()
    torch.manual_seed(member.seed)
    with _deterministic():
        if member.base is None:
            ae = build_autoencoder(member.kind, resolution)
            ae_stats = train_autoencoder(ae, member.kind, crops01, budget, member.seed, f"{member.name} autoencoder")
            lat = latents_for_prior(ae, crops01)
            scaling = float(1.0 / lat.std())
            ae.register_to_config(scaling_factor=scaling)
            t_ae = time.perf_counter()
            torch.manual_seed(member.seed + 1000)
            unet = build_prior(lat.shape[-1])
            unet, prior_stats = train_prior(unet, lat * scaling, budget, member.seed, f"{member.name} prior")
            ae_steps, prior_steps = budget.ae_steps, budget.prior_steps
        else:
            base_dir = out_root / member.base
            if not (base_dir / "model_index.json").is_file():
                raise FileNotFoundError(f"{base_dir}: member {member.name!r} fine-tunes {member.base!r}; "
                                        f"train {member.base!r} into {out_root} first")
            base = load_member(base_dir)
            ae, unet = base.vqvae, base.unet
            scaling = float(ae.config.scaling_factor)
            ae_stats = finetune_decoder(ae, crops01, budget, member.seed, f"{member.name} decoder fine-tune")
            base_card = json.loads((base_dir / "card.json").read_text())
            t_ae = time.perf_counter()
            prior_stats = {"prior_reused_from": member.base}
            ae_steps, prior_steps = base_card["autoencoder_steps"], base_card["prior_steps"]
    t_end = time.perf_counter()
    latent = _latent_size(ae, resolution)
    card = {
        "name": member.name, "stands_in_for": member.stands_in_for, "kind": member.kind,
        "autoencoder_class": ae.__class__.__name__, "seed": member.seed, "base": member.base,
        "resolution": resolution, "latent_shape": [LATENT_CHANNELS, latent, latent],
        "scaling_factor": scaling,
        "autoencoder_steps": ae_steps, "prior_steps": prior_steps,
        "finetune_steps": budget.finetune_steps if member.base else 0,
        "seconds": {"autoencoder": t_ae - t_start, "prior": t_end - t_ae, "total": t_end - t_start},
        "psnr_heldout_real_db": psnr(ae, heldout01), "n_heldout": len(heldout01),
        "psnr_train_db": psnr(ae, crops01[:len(heldout01)]),
        "stats": {**ae_stats, **prior_stats}, "budget": asdict(budget),
        "training_data": {"photos": [p.name for p in real_images.photos("train")], "n_crops": len(crops01),
                          "data_seed": 0},
        "autoencoder_config": dict(ae.config), "unet_config": dict(unet.config),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
    }
    _save_member(out_root / member.name, make_pipeline(ae, unet), card)
    if measure_speed:
        card = add_speed_to_card(out_root / member.name, budget.speed_batch, budget.speed_threads)
    return card


def _heldout(resolution: int, n: int) -> torch.Tensor:
    return torch.from_numpy(real_images.make_eval_crops(resolution, n, seed=0)[0]).permute(0, 3, 1, 2).float() / 255


def _worker_init(threads: int, counter) -> None:
    torch.set_num_threads(threads)
    with counter.get_lock():
        _BAR["position"] = 1 + counter.value
        counter.value += 1


def _worker_train(name: str, out_root: str, budget: Budget, resolution: int) -> dict:
    return train_member(MEMBERS[name], out_root, budget, resolution=resolution, measure_speed=False)


def _report(card: dict) -> None:
    tqdm.write(f"{card['name']}: {card['seconds']['total']:.0f}s, PSNR held-out {card['psnr_heldout_real_db']:.2f} dB")


def train_zoo(out_root: str | Path, names: list[str] | None = None, budget: Budget = Budget(),
              resolution: int = RESOLUTION, jobs: int = 1, threads: int = 1) -> list[dict]:
    """Train the named members (default: all) into ``out_root``; return their cards.

    ``jobs > 1`` trains that many members at once in worker processes of ``threads`` intra-op threads each
    (single-threaded processes use the cores better than multi-threaded ones on a shared machine, and keep
    each member bit-reproducible); a fine-tuned member starts when its base is done.
    """
    names = list(MEMBERS) if not names else names
    unknown = [n for n in names if n not in MEMBERS]
    if unknown:
        raise ValueError(f"--members: unknown member(s) {unknown}; known: {list(MEMBERS)}")
    names = [n for n in MEMBERS if n in names]  # bases before the members that fine-tune them
    bar = tqdm(total=len(names), desc="zoo", position=0)
    cards = []
    if jobs <= 1:
        with _threads(threads):
            crops01 = real_images.training_crops(resolution, budget.n_crops, seed=0)
            heldout01 = _heldout(resolution, budget.n_heldout)
            for name in names:
                cards.append(train_member(MEMBERS[name], out_root, budget, crops01, heldout01, resolution))
                _report(cards[-1])
                bar.update()
        bar.close()
        return cards
    ctx = multiprocessing.get_context("spawn")
    later = [n for n in names if MEMBERS[n].base in names]
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads, ctx.Value("i", 0))) as pool:
        def submit(name: str):
            return pool.submit(_worker_train, name, str(out_root), budget, resolution)

        pending = {submit(n): n for n in names if n not in later}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                name = pending.pop(fut)
                cards.append(fut.result())
                _report(cards[-1])
                bar.update()
                for n in [n for n in later if MEMBERS[n].base == name]:
                    later.remove(n)
                    pending[submit(n)] = n
    bar.close()
    cards = [add_speed_to_card(Path(out_root) / c["name"], budget.speed_batch, budget.speed_threads)
             for c in sorted(cards, key=lambda c: list(MEMBERS).index(c["name"]))]
    return cards


# -- the sample grid --------------------------------------------------------------------------------------------
def sample(pipe, n: int, seed: int = 0, steps: int = 50) -> torch.Tensor:
    """``n`` samples from a member pipeline, ``(n, 3, H, W)`` in [0, 1], deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    out = pipe(batch_size=n, generator=gen, num_inference_steps=steps, output_type="np").images
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def draw_grid(zoo_dir: str | Path, out_png: str | Path, n: int = 10, seed: int = 0,
              names: list[str] | None = None) -> Path:
    """One PNG: a row of samples per member, beside a row of real evaluation crops, labelled."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    zoo_dir = Path(zoo_dir)
    names = names or [m for m in MEMBERS if (zoo_dir / m / "model_index.json").is_file()]
    if not names:
        raise FileNotFoundError(f"{zoo_dir}: no zoo members found (train them with python -m data_gen.zoo)")
    rows = []
    for name in names:
        card = json.loads((zoo_dir / name / "card.json").read_text())
        rows.append((f"{name}\n({card['autoencoder_class']})", sample(load_member(zoo_dir / name), n, seed)))
        resolution = card["resolution"]
    real = real_images.make_eval_crops(resolution, 600, seed=0)[0]
    pick = np.linspace(0, len(real) - 1, n).round().astype(int)  # spread over the eval photos
    rows.append(("real\n(eval photos)", torch.from_numpy(real[pick]).permute(0, 3, 1, 2).float() / 255))
    fig = Figure(figsize=(n * 0.9 + 1.2, len(rows) * 0.95 + 0.4))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(imgs[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"Zoo samples ({resolution}x{resolution}, DDIM 50 steps, seed {seed}) and real crops", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png


# -- command line ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_gen.zoo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="zoo", help="zoo directory (one sub-directory per member)")
    parser.add_argument("--members", default="", help=f"comma-separated subset of {','.join(MEMBERS)}")
    parser.add_argument("--micro", action="store_true", help="a few training steps only (smoke test)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: bit-reproducible, and robust on a shared machine)")
    parser.add_argument("--jobs", type=int, default=2, help="members trained at once, one process each (default 2)")
    parser.add_argument("--grid", default=None, metavar="PNG",
                        help="draw the sample grid of the zoo in --out to PNG instead of training")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.members.split(",") if n.strip()]
    if args.grid:
        with _threads(args.threads):
            print(draw_grid(args.out, args.grid, names=names or None))
        return 0
    t0 = time.perf_counter()
    cards = train_zoo(args.out, names, MICRO if args.micro else Budget(), jobs=args.jobs, threads=args.threads)
    print(f"\ntrained {len(cards)} member(s) into {args.out} in {time.perf_counter() - t0:.0f}s")
    for c in cards:
        print(f"  {c['name']:8s} {c['autoencoder_class']:16s} {c['seconds']['total']:6.0f}s  "
              f"PSNR {c['psnr_heldout_real_db']:.2f} dB  scaling {c['scaling_factor']:.3f}  "
              f"{c['speed']['image_steps_per_s']:.0f} image-steps/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
