"""A member on disk: a diffusers ``LDMPipeline`` directory plus ``card.json`` and ``README.md``.

:func:`save_member` builds the directory beside its final place and swaps it in
(:func:`latenttracer.atomic.replace_dir`), so ``zoo/<name>`` is always a complete member, old or new.
:func:`clean_configs` leaves out config keys the component classes do not take, which diffusers would warn about
(and ignore) on every load.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from data_gen.zoo.architectures import build_scheduler
from data_gen.zoo.cards import write_card
from data_gen.zoo.speed import decoder_speed
from latenttracer import atomic


def make_pipeline(ae, unet, prediction_type: str = "epsilon"):
    """The member as a diffusers ``LDMPipeline`` (components ``vqvae``, ``unet``, ``scheduler``; the DDIM
    scheduler's ``prediction_type`` is what the prior was trained to predict)."""
    from diffusers import LDMPipeline

    pipe = LDMPipeline(vqvae=ae, unet=unet, scheduler=build_scheduler("ddim", prediction_type))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _KnownVqvaeType(logging.Filter):
    """Drops diffusers' "Expected types for vqvae: VQModel, got AutoencoderKL/AutoencoderTiny" record, nothing else.

    ``LDMPipeline`` annotates ``vqvae`` as ``VQModel`` but runs any autoencoder with ``encode``/``decode``; the zoo
    stores KL and Tiny autoencoders there on purpose (so that a generic ``DiffusionPipeline.from_pretrained``
    loads every member). No diffusers pipeline class with an unconditional ``__call__`` takes them without this
    message, and a custom pipeline class would need ``custom_pipeline=`` code to load.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Expected types for vqvae:") and ("AutoencoderKL" in text
                                                                      or "AutoencoderTiny" in text))


@contextlib.contextmanager
def known_vqvae_type_quiet() -> Iterator[None]:
    """Within the block, diffusers does not log the (expected) vqvae type message; see :class:`_KnownVqvaeType`."""
    logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    quiet = _KnownVqvaeType()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def load_member(member_dir: str | Path):
    """Load a member directory with the generic ``DiffusionPipeline.from_pretrained`` (no extra arguments).

    Loads without warnings: configs hold only keys their classes take (:func:`clean_configs`), and diffusers'
    message that ``vqvae`` is not a ``VQModel`` (true for KL and Tiny members, by design) is held back.
    """
    from diffusers import DiffusionPipeline

    with known_vqvae_type_quiet():
        pipe = DiffusionPipeline.from_pretrained(str(member_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def clean_configs(member_dir: str | Path) -> list[str]:
    """Drop the keys of each component's ``config.json`` that its class's ``__init__`` does not take.

    diffusers' ``AutoencoderTiny`` registers ``block_out_channels`` (a copy of ``decoder_block_out_channels``)
    that its own ``__init__`` refuses, so every load warned and ignored it. Private keys (``_class_name``,
    ``_diffusers_version``, ...) stay. Rewrites only configs that change (atomically); returns
    ``"component: key"`` for each key removed. Weight files are never touched.
    """
    import diffusers

    removed = []
    for config in sorted(Path(member_dir).glob("*/config.json")):
        data = json.loads(config.read_text())
        cls = getattr(diffusers, str(data.get("_class_name")), None)
        if cls is None:
            continue
        takes = set(inspect.signature(cls.__init__).parameters) - {"self"}
        extra = [k for k in data if not k.startswith("_") and k not in takes]
        if extra:
            removed += [f"{config.parent.name}: {k}" for k in extra]
            atomic.write_text(config, json.dumps({k: v for k, v in data.items() if k not in extra}, indent=2,
                                                 sort_keys=True) + "\n")
    return removed


def save_member(out: str | Path, pipe, card: dict) -> Path:
    """Save ``pipe`` and its card as the member directory ``out``, replacing an existing one in one swap."""
    def write(tmp: Path) -> None:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        clean_configs(tmp)
        write_card(tmp, card)

    return atomic.replace_dir(out, write)


def add_speed_to_card(member_dir: str | Path, batch: int = 256, threads: int = 2) -> dict:
    """Measure a saved member's decoder with :func:`decoder_speed` and record it in its card; return the card."""
    member_dir = Path(member_dir)
    card = json.loads((member_dir / "card.json").read_text())
    card["speed"] = decoder_speed(load_member(member_dir).vqvae, batch=batch, threads=threads,
                                  resolution=card["resolution"])
    write_card(member_dir, card)
    return card
