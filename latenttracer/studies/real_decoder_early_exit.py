"""Early exit and faster schedules on the real decoder (taef2) -> rows `taef2` of results/early_exit.*

    python -m experiments.real_decoder_early_exit                        # the authors' schedule (inversion=paper)
    python -m experiments.real_decoder_early_exit inversion=fast_rms     # a faster schedule: its rows are added

The early-exit study (:class:`~latenttracer.studies.early_exit.EarlyExit`: the same rows, columns and rules) on
the real-decoder suite's sets (:mod:`latenttracer.studies.real_decoder`: the base's own decodes, its fine-tuned
sibling's decodes and real crops; the sibling and the sets are the ones ``make real-decoder`` builds and caches, so
nothing is rebuilt). The base is the inspected model: its calibration half gives the threshold and the exit rule
(and the latent RMS of ``lr_scale=latent_rms``); its evaluation half, the sibling's and the real crops are scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from latenttracer.studies import real_decoder
from latenttracer.studies.base import STUDIES, Context
from latenttracer.studies.early_exit import EarlyExit


@dataclass
class RealDecoderEarlyExitConfig(real_decoder.DecodedSuiteConfig):
    timing_images: int = 12              # evaluation images timed live (one batch per config, one process)
    timing_seed: int = 0
    risks: list[float] = field(default_factory=lambda: [0.02, 0.03, 0.05, 0.1])  # a `conformal` row per risk
    out: str = MISSING                   # publishes <out>.{md,csv}


@STUDIES.register
class RealDecoderEarlyExit(EarlyExit):
    name = "real_decoder_early_exit"
    config = RealDecoderEarlyExitConfig
    command = "python -m experiments.real_decoder_early_exit inversion=<schedule>"
    section = None  # its rows are in results/early_exit.csv (sets `taef2`): the early-exit study's section

    def targets(self, cfg: Any, ctx: Context) -> tuple[dict, dict[str, Any]]:
        """The suite's decoded sets; the base, loaded with its sibling."""
        aes = real_decoder.decoders(cfg, ctx, [int(cfg.sibling_steps)])
        sets = real_decoder.image_sets(cfg, ctx, aes, real_decoder.set_settings(cfg, ctx))
        return sets, {str(cfg.base): aes[str(cfg.base)]}

    def sets_record(self, cfg: Any, ctx: Context) -> dict[str, Any]:
        """The suite's protocol plus what builds the decoded sets and the sibling."""
        return real_decoder.sets_record(cfg, ctx)
