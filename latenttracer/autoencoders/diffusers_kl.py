"""The ``diffusers-kl`` family: a diffusers ``AutoencoderKL`` (Stable Diffusion's VAE and the zoo's KL members).

* ``encode``: the posterior **mean**, minus ``shift_factor`` (models that have one), times ``scaling_factor``.
* ``decode``: undoes both, decodes, maps [-1, 1] to [0, 1].
* ``reconstruct``: a latent **sampled** from the posterior, one generator per image (draws continue where the
  generator stopped, so a second call with the same generators makes AEDR's second draw), or the posterior
  mean when ``generators`` is None; as diffusers' ``retrieve_latents`` + ``decode`` give it. The scaling and
  shift factors cancel out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from latenttracer.autoencoders._diffusers import TINY_CONV_CONFIG, DiffusersAutoencoder
from latenttracer.autoencoders.base import FAMILIES


@FAMILIES.register
class DiffusersKL(DiffusersAutoencoder):
    family = "diffusers-kl"
    model_class = "AutoencoderKL"
    looks_for = ("a diffusers pipeline folder or hub id with an AutoencoderKL component, or a folder with an "
                 "AutoencoderKL saved by save_pretrained (config.json)")
    tiny_config = dict(TINY_CONV_CONFIG)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, self.dtype) * 2 - 1
        mean = self.model.encode(x).latent_dist.mean
        return (mean - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *, generators: Sequence[torch.Generator] | None = None,
                    quantize: bool = True) -> torch.Tensor:
        x = x.to(self.device, self.dtype)
        posterior = self.model.encode(x).latent_dist
        latents = posterior.mean
        if generators is not None:
            if len(generators) != x.shape[0]:
                raise ValueError(f"generators: {len(generators)} given for {x.shape[0]} images")
            noise = torch.stack([torch.randn(latents.shape[1:], generator=g, dtype=torch.float32)
                                 for g in generators]).to(latents.device, latents.dtype)
            latents = latents + posterior.std * noise
        return self.model.decode(latents).sample
