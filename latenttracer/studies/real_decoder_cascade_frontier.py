"""The cascade frontier on the real decoder (taef2) -> results/real_decoder_cascade_frontier.*

    python -m experiments.real_decoder_cascade_frontier            # the screen: fast_rms (the default)

The cascade-frontier study (:class:`~latenttracer.studies.cascade_frontier.CascadeFrontier`: the same grid, rows
and rules) on the real-decoder suite's sets (:mod:`latenttracer.studies.real_decoder`, the ones ``make
real-decoder`` builds and caches): the base inspects its own decodes, its fine-tuned sibling's and real crops; the
sibling's calibration half is the selection set's known negatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latenttracer.studies import real_decoder
from latenttracer.studies.base import STUDIES, Context, ReportSection
from latenttracer.studies.cascade_frontier import CascadeFrontier, CascadeFrontierConfig


@dataclass
class RealDecoderCascadeFrontierConfig(CascadeFrontierConfig, real_decoder.DecodedSuiteConfig):
    pass


@STUDIES.register
class RealDecoderCascadeFrontier(CascadeFrontier):
    name = "real_decoder_cascade_frontier"
    config = RealDecoderCascadeFrontierConfig
    title = "Cascade settings on a real decoder (taef2): the measured frontier"
    command = "python -m experiments.real_decoder_cascade_frontier [inversion=<screen schedule>]"
    section = ReportSection("Cascade settings on the real decoder", ("real_decoder_cascade_frontier.csv",),
                            ("real_decoder_cascade_frontier.png",), command, order=61.5)

    def targets(self, cfg: Any, ctx: Context) -> tuple[dict, dict[str, Any]]:
        """The suite's decoded sets; the base, loaded with its sibling."""
        aes = real_decoder.decoders(cfg, ctx, [int(cfg.sibling_steps)])
        sets = real_decoder.image_sets(cfg, ctx, aes, real_decoder.set_settings(cfg, ctx))
        return sets, {str(cfg.base): aes[str(cfg.base)]}

    def sets_record(self, cfg: Any, ctx: Context) -> dict[str, Any]:
        """The suite's protocol plus what builds the decoded sets and the sibling."""
        return real_decoder.sets_record(cfg, ctx)
