"""Decoder drift series: a KL member's decoder fine-tuned for N steps with the kl-a-ft recipe, for several N.

Each ``ft-N`` is saved as a member directory (a diffusers pipeline and a ``card.json``) holding the base's prior
and encoder and the fine-tuned decoder, as SD users swap a fine-tuned VAE into a pipeline. The recipe is
:func:`~data_gen.zoo.training.finetune_decoder` with the shipped kl-a-ft's settings (:class:`Budget` defaults,
seed 2, the shared training crops, deterministic algorithms). One run of ``max(N)`` steps makes every member:
the first N steps of a longer run are the N-step run (constant lr, one seeded stream), so ``ft-300`` is the
shipped ``kl-a-ft`` up to floating-point reduction order.

Cached: a member whose card records the same recipe (base weights, seed, budget, N) is not rebuilt.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch

from data_gen import real_images
from data_gen.zoo.build import _heldout as heldout_crops
from data_gen.zoo.members import clean_configs, load_member, make_pipeline
from data_gen.zoo.training import Budget, deterministic, finetune_decoder, psnr, threads
from latenttracer import atomic

__all__ = ["DRIFT_VERSION", "build_series", "decoder_distance", "decoder_parameters", "recipe"]

log = logging.getLogger(__name__)

#: Bump when the way a drift member is made changes (part of its recipe).
DRIFT_VERSION = 1


def _weights_hash(member_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(member_dir.glob("*/*.safetensors")):
        h.update(f.relative_to(member_dir).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def recipe(base_dir: str | Path, steps: int, seed: int, budget: Budget) -> dict:
    """What decides the ``ft-<steps>`` member (compared with its card to reuse it)."""
    b = asdict(budget)
    return {"version": DRIFT_VERSION, "base": _weights_hash(Path(base_dir)), "steps": int(steps), "seed": int(seed),
            **{k: b[k] for k in ("n_crops", "ae_batch", "finetune_lr")}}


def _cached(member_dir: Path, want: dict) -> bool:
    card = member_dir / "card.json"
    return card.is_file() and json.loads(card.read_text()).get("drift_recipe") == want


def _save(out: Path, pipe, card: dict) -> Path:
    """A drift member directory: the pipeline and its ``card.json`` (derived, never shipped: no README)."""
    def write(tmp: Path) -> None:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        clean_configs(tmp)
        atomic.write_text(tmp / "card.json", json.dumps(card, indent=1) + "\n")

    return atomic.replace_dir(out, write)


def decoder_parameters(ae) -> torch.Tensor:
    """The fine-tuned parameters (decoder and post-quant conv) of a KL autoencoder, flattened."""
    params = list(ae.decoder.parameters()) + list(ae.post_quant_conv.parameters())
    return torch.cat([p.detach().flatten().float() for p in params])


def decoder_distance(ae, base) -> float:
    """Relative L2 distance ``||W - W_base|| / ||W_base||`` of the decoder weights."""
    w, w0 = decoder_parameters(ae), decoder_parameters(base)
    return float(torch.linalg.vector_norm(w - w0) / torch.linalg.vector_norm(w0))


def build_series(base_dir: str | Path, steps: Sequence[int], out_root: str | Path, *, seed: int = 2,
                 budget: Budget = Budget(), n_threads: int | None = 1, progress: bool = True) -> dict[int, Path]:
    """``{N: out_root/ft-N}`` for every N of ``steps``, building the missing ones in one fine-tuning run."""
    base_dir, out_root = Path(base_dir), Path(out_root)
    if not (base_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"{base_dir}: no member here (model_index.json missing); build the zoo first")
    wanted = sorted({int(n) for n in steps})
    if not wanted or wanted[0] < 1:
        raise ValueError(f"drift steps: need integers >= 1, got {list(steps)}")
    dirs = {n: out_root / f"ft-{n}" for n in wanted}
    recipes = {n: recipe(base_dir, n, seed, budget) for n in wanted}
    todo = [n for n in wanted if not _cached(dirs[n], recipes[n])]
    if not todo:
        return dirs
    base = load_member(base_dir)
    ae, unet = base.vqvae, base.unet
    reference = copy.deepcopy(ae)
    base_name, resolution = base_dir.name, int(ae.config.sample_size)
    crops01 = real_images.training_crops(resolution, budget.n_crops, seed=0)
    heldout01 = heldout_crops(resolution, budget.n_heldout)

    def snapshot(k: int) -> None:
        if k not in todo:
            return
        ft = copy.deepcopy(ae).eval().requires_grad_(False)
        card = {"name": f"ft-{k}", "base": base_name, "kind": "kl", "seed": seed, "resolution": resolution,
                "finetune_steps": k, "seconds": time.perf_counter() - t_start,
                "relative_l2": decoder_distance(ft, reference),
                "psnr_heldout_real_db": psnr(ft, heldout01), "n_heldout": len(heldout01),
                "drift_recipe": recipes[k], "budget": asdict(replace(budget, finetune_steps=k))}
        _save(dirs[k], make_pipeline(ft, unet), card)
        log.info("saved %s (relative L2 %.4f)", dirs[k], card["relative_l2"])

    t_start = time.perf_counter()
    with threads(n_threads):
        torch.manual_seed(seed)
        with deterministic():
            finetune_decoder(ae, crops01, replace(budget, finetune_steps=max(todo)), seed,
                             f"drift {base_name} decoder" if progress else "", on_step=snapshot)
    return dirs
