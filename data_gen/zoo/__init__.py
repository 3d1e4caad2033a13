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
kl16       AutoencoderKL with 16 latent channels and no        FLUX / SD 3.5 (16-channel VAEs that
           downsampling (32x32x16 latents): >= 6 dB above      reconstruct far better than SD's)
           kl-a's held-out PSNR; a wider prior for its latents
=========  =================================================  ===========================================

Conventions: encoder input and decoder output in [-1, 1]; ``config.scaling_factor`` makes the scaled latents
unit-std on the training crops; the image resolution is the prior's ``sample_size`` x 4 (x 1 for kl16; KL and VQ
also record it as ``config.sample_size``; ``AutoencoderTiny`` takes no such key); the VQ prior runs on
pre-quantisation latents (``decode`` quantises). Architectures are chosen for the speed of the decoder's
forward + backward pass w.r.t. its input (what latent inversion runs), measured by :func:`decoder_speed`.

Run ``python -m data_gen.zoo --out zoo`` to train every member (``--members``, ``--micro`` for a smoke run),
and ``python -m data_gen.zoo --out zoo --grid docs/zoo_samples.png`` to draw the sample grid.

Files (one job each): :mod:`~data_gen.zoo.architectures` (the members, their networks and latent maps),
:mod:`~data_gen.zoo.training` (the training loops), :mod:`~data_gen.zoo.members` (a member directory: save,
load), :mod:`~data_gen.zoo.cards` (``card.json`` and the model card ``README.md``), :mod:`~data_gen.zoo.speed`
(decoder cost), :mod:`~data_gen.zoo.build` (train members and the zoo, in parallel processes),
:mod:`~data_gen.zoo.grid` (the sample grid), ``__main__`` (the command line). This package re-exports their
public names, so ``from data_gen import zoo; zoo.train_zoo(...)`` works.
"""

from data_gen.zoo.architectures import (
    LATENT_CHANNELS,
    MEMBERS,
    NUM_TRAIN_TIMESTEPS,
    RESOLUTION,
    Member,
    build_autoencoder,
    build_prior,
    build_scheduler,
    decode_for_inversion,
    encode_unscaled,
    latent_size,
)
from data_gen.zoo.build import train_member, train_zoo
from data_gen.zoo.cards import card_readme, write_card
from data_gen.zoo.grid import draw_grid, sample
from data_gen.zoo.members import (
    add_speed_to_card,
    clean_configs,
    known_vqvae_type_quiet,
    load_member,
    make_pipeline,
    save_member,
)
from data_gen.zoo.speed import decoder_speed, machine_speed
from data_gen.zoo.training import (
    MICRO,
    Budget,
    finetune_decoder,
    latents_for_prior,
    psnr,
    train_autoencoder,
    train_prior,
    whiten_latent_channels,
)

__all__ = [
    "LATENT_CHANNELS", "MEMBERS", "MICRO", "NUM_TRAIN_TIMESTEPS", "RESOLUTION", "Budget", "Member",
    "add_speed_to_card", "build_autoencoder", "build_prior", "build_scheduler", "card_readme", "clean_configs",
    "decode_for_inversion", "decoder_speed", "draw_grid", "encode_unscaled", "finetune_decoder",
    "known_vqvae_type_quiet", "latent_size", "latents_for_prior", "load_member", "machine_speed", "make_pipeline",
    "psnr", "sample", "save_member", "train_autoencoder", "train_member", "train_prior", "train_zoo",
    "whiten_latent_channels",
    "write_card",
]
