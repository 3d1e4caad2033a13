"""Early exit and faster schedules on the real decoder (taef2) -> results/real_decoder_early_exit.*

    python -m experiments.real_decoder_early_exit                        # the authors' schedule (inversion=paper)
    python -m experiments.real_decoder_early_exit inversion=fast_rms     # a faster schedule: its rows are added

The early-exit study (:mod:`latenttracer.studies.early_exit`: the same rows, columns and rules) on the real-decoder
suite's sets (:mod:`latenttracer.studies.real_decoder`: the base's own decodes, its fine-tuned sibling's decodes
and real crops; the sibling and the sets are the ones ``make real-decoder`` builds and caches, so nothing is
rebuilt). The base is the inspected model: its calibration half gives the threshold and the bounds, its evaluation
half, the sibling's and the real crops are scored. Rows are merged into ``<out>.csv`` like the zoo's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import MISSING

from data_gen.zoo.speed import machine_speed
from latenttracer.studies import early_exit, real_decoder
from latenttracer.studies.base import STUDIES, Context, Merge, ReportSection, Study, StudyResult

TITLE = "Early exit and faster schedules on a real decoder (taef2)"
COMMAND = "python -m experiments.real_decoder_early_exit inversion=<schedule>"


@dataclass
class RealDecoderEarlyExitConfig:
    base: str = "taef2"                  # the suite's model whose decoder is inspected
    sibling_steps: int = 100             # its fine-tuned sibling (non-belonging decodes), as in real_decoder.yaml
    finetune: dict[str, Any] = field(default_factory=dict)  # data_gen.taesd_finetune.FinetuneRecipe overrides
    sets: dict[str, Any] = field(default_factory=dict)      # data_gen.real_decoder.DecodedSetSettings overrides
    dir: str = MISSING                   # where make real-decoder caches members and sets
    timing_images: int = 12              # evaluation images timed live (one batch per config, one process)
    timing_seed: int = 0
    out: str = MISSING                   # publishes <out>.{md,csv}


@STUDIES.register
class RealDecoderEarlyExit(Study):
    name = "real_decoder_early_exit"
    config = RealDecoderEarlyExitConfig
    section = ReportSection("Early exit on the real decoder", ("real_decoder_early_exit.csv",), (), COMMAND,
                            order=61)

    def run(self, cfg: Any, ctx: Context) -> StudyResult:
        """Returns this job's rows (the published table is every row of ``<out>.csv``, these merged in)."""
        started = time.time()
        speed_text = machine_speed(1)
        aes = real_decoder.decoders(cfg, ctx, [int(cfg.sibling_steps)])
        sets = real_decoder.image_sets(cfg, ctx, aes, real_decoder.set_settings(cfg, ctx))
        base = str(cfg.base)
        rows = early_exit.measure(cfg, ctx, base, sets, ctx.inversion_preset(), int(speed_text.split()[0]),
                                  ae=aes[base])
        new = pd.DataFrame(rows)[early_exit.COLUMNS]
        told = early_exit.notes(ctx.protocol(), time.time() - started, speed_text, COMMAND)
        return StudyResult(new, stem=Path(cfg.out), tables={"": new},
                           merge=Merge(early_exit.KEY, lambda table: early_exit.markdown(table, told, TITLE)))
