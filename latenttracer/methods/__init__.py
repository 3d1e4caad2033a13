"""Scoring methods, all through the one scoring path (:func:`latenttracer.tracing.score_images`).

:data:`METHODS` is the registry (:mod:`latenttracer.registry`): every method registers itself where it is
defined, and every module of this package is imported on the first lookup, so a new method is one new module
(``docs/extending_methods.md``). ``get_method(name, options)`` builds one by name; ``options`` are the fields
of the method's settings dataclass (unknown keys are an error). Every method reuses the one autoencoder adapter
(:mod:`latenttracer.autoencoders`); the optimisation-based ones reuse the one inversion loop
(:mod:`latenttracer.inversion`). Lower score = more likely belonging, for every method.

=================  =========================================================================================
``latenttracer``   LatentTracer (ICML 2024): min reconstruction loss of latent inversion from the encoder
                   latent; options: the :class:`~latenttracer.inversion.InversionConfig` fields.
``ronan``          RONAN (NeurIPS 2023): the same loop from a random latent, lr 0.1, 1500 steps, constant lr.
``aedr``           AEDR (AAAI 2026): loss ratio of two successive reconstructions x GLCM homogeneity; KDE
                   threshold. Options: ``posterior`` (sample|mean), ``seed``.
``aeroblade``      AEROBLADE (CVPR 2024): distance to one reconstruction; ``distance`` lpips_vgg_2 (needs
                   ``vgg_weights``, ``lpips_weights``), l2 or ssim.
=================  =========================================================================================
"""

from __future__ import annotations

from latenttracer.methods.base import METHODS, Method
from latenttracer.methods.inversion_methods import LatentTracer

__all__ = ["METHODS", "LatentTracer", "Method", "get_method"]


def get_method(name: str, options: dict | None = None) -> Method:
    """The method ``name`` with ``options`` (its settings; unknown keys are an error naming them)."""
    return METHODS.get(name).from_dict(dict(options or {}))
