"""The ``diffusers-tiny`` family: a diffusers ``AutoencoderTiny`` (TAESD in diffusers' format; the zoo's
``tiny``). The original ``.pth`` files of TAESD load with the ``taesd`` family (``taesd.py``) instead.

* ``encode``: the encoder's latent, minus ``shift_factor``, times ``scaling_factor`` (1.0 for TAESD).
* ``decode``: undoes both, decodes, maps [-1, 1] to [0, 1].
* ``reconstruct``: its deterministic latent, decoded (``generators`` are ignored).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from latenttracer.autoencoders._diffusers import DiffusersAutoencoder
from latenttracer.autoencoders.base import FAMILIES


@FAMILIES.register
class DiffusersTiny(DiffusersAutoencoder):
    family = "diffusers-tiny"
    model_class = "AutoencoderTiny"
    looks_for = ("a diffusers pipeline folder or hub id with an AutoencoderTiny component, or a folder with an "
                 "AutoencoderTiny saved by save_pretrained (config.json)")
    tiny_config = dict(
        in_channels=3, out_channels=3, latent_channels=4, encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1),
        upsampling_scaling_factor=2, act_fn="relu",
    )

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, self.dtype) * 2 - 1
        return (self.model.encode(x).latents - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *, generators: Sequence[torch.Generator] | None = None,
                    quantize: bool = True) -> torch.Tensor:
        x = x.to(self.device, self.dtype)
        return self.model.decode(self.model.encode(x).latents).sample
