"""Autoencoders LatentTracer inverts: the interface and registry (``base.py``), one module per family.

Families: ``diffusers-kl``, ``diffusers-vq``, ``diffusers-tiny`` (diffusers ``AutoencoderKL`` / ``VQModel`` /
``AutoencoderTiny``) and ``taesd`` (TAESD's own ``.pth`` files: taesd, taesdxl, taesd3, taef1, taef2). A new
family is one module here or one plugin file (``docs/extending_autoencoders.md``).
"""

from latenttracer.autoencoders.base import (
    FAMILIES,
    Autoencoder,
    AutoencoderLoadError,
    content_fingerprint,
    load_autoencoder,
    resolve_device,
    resolve_dtype,
)

__all__ = ["FAMILIES", "Autoencoder", "AutoencoderLoadError", "content_fingerprint", "load_autoencoder",
           "resolve_device", "resolve_dtype"]
