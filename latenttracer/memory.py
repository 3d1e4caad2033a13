"""How many images to put through an autoencoder at once, and recognising out-of-memory errors.

``batch_size="auto"`` (the default of :func:`latenttracer.tracing.score_images`) picks the batch from the
model's resolution and the device's free memory:

* on CUDA: ``floor(0.8 * free_bytes / bytes_per_image)``, between 1 and :data:`MAX_AUTO_BATCH`;
* elsewhere (CPU, MPS): :data:`MAX_AUTO_BATCH` (64, the previous fixed default), so results and timings on the
  zoo are unchanged. The batch size never changes a score: every method is batch-independent (tested).

``bytes_per_image`` is an estimate: a decoder's memory is dominated by its full-resolution activations, ``width x
resolution^2`` elements each (``width``: the channels of the decoder's last, full-size block, which the
autoencoder's family reports as ``decoder_width``: 128 for Stable Diffusion's VAE, 64 for TAESD). The functions take
the :class:`~latenttracer.autoencoders.Autoencoder` (or, as callers still pass it, its ``model``). A forward and
backward pass holds about :data:`SAVED_ACTIVATIONS_BACKWARD` of them, a forward pass under ``no_grad`` about
:data:`SAVED_ACTIVATIONS_FORWARD`. Both constants come from ``benchmarks/decoder_memory.py`` (peak resident memory
on CPU of a random-init decoder of SD's VAE architecture; one run: forward + backward 147 MB at 64 px and 496 MB at
128 px, i.e. 58 such activations; forward alone 39 and 115 MB, i.e. 13), rounded up. For SD's VAE at 512 px in
float32 that gives 64 x 128 x 512^2 x 4 B = 8.6 GB per image to invert, so about two images at once on a 24 GB GPU.
A GPU's allocator and convolution workspaces differ from the CPU's, so the estimate only sets the first try: on an
out-of-memory error the caller halves the batch and retries (see :func:`is_out_of_memory`), and a wrong guess costs
one failed batch, never a crash or a lost result.
"""

from __future__ import annotations

import torch

__all__ = ["MAX_AUTO_BATCH", "auto_batch_size", "bytes_per_image", "decoder_width", "is_out_of_memory"]

MAX_AUTO_BATCH = 64
SAVED_ACTIVATIONS_BACKWARD = 64
SAVED_ACTIVATIONS_FORWARD = 16
FREE_MEMORY_FRACTION = 0.8


def decoder_width(model) -> int:
    """Channels of the decoder's full-resolution activations: an :class:`Autoencoder`'s ``decoder_width``
    (its family knows it); for a bare module, its ``decoder_width`` attribute or its diffusers config
    (128 if unknown)."""
    from latenttracer.autoencoders import Autoencoder
    from latenttracer.autoencoders._diffusers import module_decoder_width

    if isinstance(model, Autoencoder):
        return int(model.decoder_width)
    width = getattr(model, "decoder_width", None)
    return int(width) if isinstance(width, int) else module_decoder_width(model)


def bytes_per_image(model, resolution: int, *, backward: bool,
                    dtype: torch.dtype = torch.float32) -> int:
    """Estimated peak bytes one image needs in the decoder (see the module docstring)."""
    saved = SAVED_ACTIVATIONS_BACKWARD if backward else SAVED_ACTIVATIONS_FORWARD
    element = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    return saved * decoder_width(model) * int(resolution) ** 2 * element


def auto_batch_size(model, resolution: int, device: torch.device, *, backward: bool,
                    dtype: torch.dtype = torch.float32) -> int:
    """The first batch size to try on ``device``; see the module docstring."""
    device = torch.device(device)
    if device.type != "cuda":
        return MAX_AUTO_BATCH
    free, _total = torch.cuda.mem_get_info(device)
    per_image = bytes_per_image(model, resolution, backward=backward, dtype=dtype)
    return max(1, min(MAX_AUTO_BATCH, int(FREE_MEMORY_FRACTION * free // per_image)))


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch's out-of-memory errors (CUDA, MPS, CPU allocator), whatever class they come as."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
