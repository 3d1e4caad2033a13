"""The ``diffusers-vq`` family: a diffusers ``VQModel`` (VQ-Diffusion, Kandinsky's MoVQ, the zoo's ``vq``).

* ``encode``: the encoder output **quantised** (the authors' ``encode`` -> ``quantize``), in the raw codebook
  space (no scaling).
* ``decode``: runs with ``force_not_quantize=True``, so inversion moves in the continuous pre-quantisation space,
  as in the authors' code; maps [-1, 1] to [0, 1].
* ``reconstruct``: the encoder output, quantised by the decoder unless ``quantize=False`` (AEROBLADE decodes
  with ``force_not_quantize=True``). Deterministic: ``generators`` are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from latenttracer.autoencoders._diffusers import TINY_CONV_CONFIG, DiffusersAutoencoder
from latenttracer.autoencoders.base import FAMILIES


@FAMILIES.register
class DiffusersVQ(DiffusersAutoencoder):
    family = "diffusers-vq"
    model_class = "VQModel"
    looks_for = ("a diffusers pipeline folder or hub id with a VQModel component, or a folder with a VQModel "
                 "saved by save_pretrained (config.json)")
    tiny_config = dict(TINY_CONV_CONFIG, num_vq_embeddings=32, vq_embed_dim=4)  # + a 32-entry codebook

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, self.dtype) * 2 - 1
        quantised, _, _ = self.model.quantize(self.model.encode(x).latents)
        return quantised

    def _decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents, force_not_quantize=True).sample

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *, generators: Sequence[torch.Generator] | None = None,
                    quantize: bool = True) -> torch.Tensor:
        x = x.to(self.device, self.dtype)
        return self.model.decode(self.model.encode(x).latents, force_not_quantize=not quantize).sample
