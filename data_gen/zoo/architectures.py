"""The zoo's members and their networks: the member registry, the autoencoder / prior / scheduler builders, and
the autoencoder maps (encode to unscaled latents, decode for inversion) in one place."""

from __future__ import annotations

from dataclasses import dataclass

import torch

RESOLUTION = 32
LATENT_CHANNELS = 4
NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class Member:
    """One zoo member. ``base``: fine-tune this member's decoder and reuse its prior instead of training anew.

    The architecture fields default to the shared zoo layout (factor-4 downsampling, 4 latent channels);
    ``ae_steps_factor``, ``ae_lr`` and ``prior_steps_factor`` scale this member's training against the
    :class:`~data_gen.zoo.training.Budget` (so a smoke budget stays a smoke budget for every member).
    """

    name: str
    autoencoder: str  # "kl", "vq" or "tiny"
    seed: int
    stands_in_for: str
    base: str | None = None
    latent_channels: int = LATENT_CHANNELS
    widths: tuple[int, ...] = (8, 16, 32)   # KL / VQ block_out_channels: one downsampling per width after the first
    norm_groups: int = 8                     # KL / VQ GroupNorm groups
    ae_steps_factor: float = 1.0
    ae_lr: float | None = None               # None: the budget's ae_lr
    prior_steps_factor: float = 1.0
    whiten_latents: bool = False             # KL only: unit std per latent channel (training.whiten_latent_channels)
    prediction: str = "epsilon"              # the prior's target: "epsilon" (SD 1.5) or "v_prediction" (SD 2)


MEMBERS: dict[str, Member] = {m.name: m for m in (
    Member("kl-a", "kl", 0, "Stable Diffusion 1.5 (KL autoencoder)"),
    Member("kl-b", "kl", 1, "Stable Diffusion 2 (same autoencoder architecture, other weights)"),
    Member("kl-a-ft", "kl", 2, "SD's fine-tuned VAE decoder (same encoder, decoder fine-tuned)", base="kl-a"),
    Member("vq", "vq", 3, "VQ-Diffusion / Kandinsky MoVQ (vector-quantised autoencoder)"),
    Member("tiny", "tiny", 4, "TAESD-style fast decoder (AutoencoderTiny)"),
    # FLUX / SD 3.5 use 16-channel VAEs that reconstruct several dB better than SD's. At 32x32 px a factor-4 or
    # factor-2 KL autoencoder of the zoo's widths stays below kl-a + 6 dB in the training time tried; no
    # downsampling (32x32x16 latents), one GroupNorm group and a higher learning rate reach it (card: PSNR). Its
    # latent channels differ in std by 50x, so they are whitened before the prior is trained; its prior predicts v
    # (an epsilon prior of this size did not learn the high-noise steps and sampled noise-like textures).
    Member("kl16", "kl", 5, "FLUX / SD 3.5 (16-channel KL autoencoder, near-lossless reconstruction)",
           latent_channels=16, widths=(8,), norm_groups=1, ae_steps_factor=2.0, ae_lr=1e-2, whiten_latents=True,
           prediction="v_prediction"),
)}


# -- architectures ---------------------------------------------------------------------------------------------
def build_autoencoder(autoencoder: str, resolution: int = RESOLUTION, latent_channels: int = LATENT_CHANNELS,
                      widths: tuple[int, ...] = (8, 16, 32), norm_groups: int = 8):
    """A fresh, randomly initialised autoencoder of type ``autoencoder`` (seed the RNG first for determinism).

    Default: downsampling factor 4 (32x32 images -> 8x8x4 latents) for all kinds; widths picked for decoder speed
    (``benchmarks/decoder_speed.py``): KL/VQ channels (8, 16, 32), one layer per block, no mid-block attention;
    Tiny decoder 3 x 16 channels, one block per level. KL and VQ record ``resolution`` as ``config.sample_size``.
    KL/VQ take other ``widths`` (one downsampling per width after the first) and ``norm_groups``.
    """
    from diffusers import AutoencoderKL, AutoencoderTiny, VQModel

    shared = {
        "in_channels": 3, "out_channels": 3, "block_out_channels": tuple(widths), "layers_per_block": 1,
        "down_block_types": ("DownEncoderBlock2D",) * len(widths),
        "up_block_types": ("UpDecoderBlock2D",) * len(widths),
        "latent_channels": latent_channels, "norm_num_groups": norm_groups, "sample_size": resolution,
        "scaling_factor": 1.0, "mid_block_add_attention": False,
    }
    if autoencoder == "kl":
        return AutoencoderKL(**shared)
    if autoencoder == "vq":
        return VQModel(**shared, num_vq_embeddings=256, vq_embed_dim=latent_channels)
    if autoencoder == "tiny":
        ae = AutoencoderTiny(
            in_channels=3, out_channels=3, encoder_block_out_channels=(32, 32, 32),
            decoder_block_out_channels=(16, 16, 16), num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1),
            latent_channels=latent_channels, scaling_factor=1.0)
        return ae  # no sample_size: AutoencoderTiny does not take one (the resolution is the prior's x 4)
    raise ValueError(f"autoencoder: expected 'kl', 'vq' or 'tiny', got {autoencoder!r}")


def build_prior(latent_size: int, latent_channels: int = LATENT_CHANNELS):
    """The latent diffusion prior: a small ``UNet2DModel`` on ``(latent_channels, latent_size, latent_size)``.

    Latents of side <= 8: two levels (32, 64 channels), attention at the coarse one. Larger latents (kl16's 32x32)
    get two more halvings at narrow widths first, (16, 32, 64) with attention at 8x8 only: the same attention
    cost, and about 7x the compute per training step of the small prior (not 16x).
    """
    from diffusers import UNet2DModel

    if latent_size <= 8:
        return UNet2DModel(
            sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
            block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=32)
    return UNet2DModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=32)


def build_scheduler(kind: str = "ddim", prediction_type: str = "epsilon"):
    """Stable Diffusion's noise schedule (scaled-linear betas 0.00085..0.012; epsilon or v prediction): DDPM for
    training, DDIM for sampling (SD's settings; no sample clipping, the latents are unit-std, not in [-1, 1]).

    A cosine schedule was tried first: its last timestep has alpha_bar ~ 0, so a briefly trained prior's DDIM
    samples blew up (latent std 2.6 instead of 1) and fell off the encoder's range.
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    common = {"num_train_timesteps": NUM_TRAIN_TIMESTEPS, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
              "beta_end": 0.012, "clip_sample": False, "prediction_type": prediction_type}
    if kind == "ddim":
        return DDIMScheduler(**common, set_alpha_to_one=False, steps_offset=1)
    return DDPMScheduler(**common)


# -- the autoencoder maps, in one place -------------------------------------------------------------------------
def encode_unscaled(ae, x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> unscaled latents (KL: posterior mean; VQ: pre-quantisation; Tiny: encoder output)."""
    out = ae.encode(x)
    return out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents


def decode_for_inversion(ae, z: torch.Tensor) -> torch.Tensor:
    """Unscaled latents -> images in [-1, 1], without quantising (the path latent inversion differentiates)."""
    if ae.__class__.__name__ == "VQModel":
        return ae.decode(z, force_not_quantize=True).sample
    return ae.decode(z).sample



def latent_size(ae, resolution: int) -> int:
    """The side of the latents of ``resolution`` x ``resolution`` images."""
    with torch.no_grad():
        return int(encode_unscaled(ae, torch.zeros(1, 3, resolution, resolution)).shape[-1])
