"""Fine-tuned siblings of a TAESD-family decoder: the decoder trained further for N steps, the encoder frozen.

A real decoder's sibling, as SD's ft-MSE VAE is SD's: the same encoder and latent space, a decoder trained on for
N Adam steps with a pixel MSE on crops of the **training** photos (:func:`data_gen.real_images.training_crops`;
the evaluation photos, whose crops the real-decoder suite uses, are never seen). Each ``ft-N`` is written as a
TAESD folder (the base's encoder file copied, the fine-tuned decoder in the published state-dict layout, and a
``card.json`` recording the recipe), so :func:`latenttracer.autoencoders.load_autoencoder` loads it like the base.

One run of ``max(N)`` steps makes every member: a seeded batch stream and a constant learning rate make the first
N steps of a longer run the N-step run. A member whose card records the same recipe (base weights, steps and
:class:`FinetuneRecipe`) is not rebuilt.

The latents of the training crops are computed once by the frozen encoder; fine-tuning runs at
``recipe.resolution`` (32 px by default: the decoder is convolutional, and 32 px steps cost a quarter of 64 px
ones on a CPU).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from data_gen import real_images
from latenttracer import atomic
from latenttracer.autoencoders import load_autoencoder
from latenttracer.settings import from_mapping

__all__ = ["FINETUNE_VERSION", "FinetuneRecipe", "build_series", "decoder_distance", "member_name"]

log = logging.getLogger(__name__)

#: Bump when the way a member is made changes (part of its recipe).
FINETUNE_VERSION = 1
CARD = "card.json"


@dataclass(frozen=True)
class FinetuneRecipe:
    """How a sibling is trained (the one definition of these settings; configs override them by key)."""

    lr: float = 1e-4          # Adam, constant
    batch: int = 4
    resolution: int = 32      # side of the training crops (a multiple of 8)
    n_crops: int = 512        # training crops of the training photos (data seed 0, flips and scale jitter)
    seed: int = 0             # the batch stream

    def __post_init__(self) -> None:
        if not (self.lr > 0 and self.batch >= 1 and self.n_crops >= self.batch):
            raise ValueError(f"finetune: need lr > 0, batch >= 1 and n_crops >= batch, got {self}")
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"finetune.resolution: must be a positive multiple of 8, got {self.resolution}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> FinetuneRecipe:
        return from_mapping(cls, values, "finetune")


def member_name(base: str, steps: int) -> str:
    """``<base>-ft<N>``: how a sibling is named in tables and in the results store."""
    return f"{base}-ft{int(steps)}"


def _weights_hash(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(folder.glob("*.pth")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _recipe(base_dir: Path, steps: int, recipe: FinetuneRecipe) -> dict:
    return {"version": FINETUNE_VERSION, "base": _weights_hash(base_dir), "steps": int(steps), **asdict(recipe)}


def _cached(folder: Path, want: dict) -> bool:
    card = folder / CARD
    try:
        return card.is_file() and json.loads(card.read_text()).get("finetune_recipe") == want
    except (OSError, json.JSONDecodeError):
        return False


def decoder_distance(decoder: torch.nn.Module, reference: torch.nn.Module) -> float:
    """Relative L2 distance ``||W - W_base|| / ||W_base||`` over every decoder parameter."""
    w = torch.cat([p.detach().flatten().float() for p in decoder.parameters()])
    w0 = torch.cat([p.detach().flatten().float() for p in reference.parameters()])
    return float(torch.linalg.vector_norm(w - w0) / torch.linalg.vector_norm(w0))


def build_series(base_dir: str | Path, steps: Sequence[int], out_root: str | Path,
                 recipe: FinetuneRecipe = FinetuneRecipe(), *, progress: bool = True) -> dict[int, Path]:
    """``{N: out_root/ft-N}`` for every N of ``steps`` (may be empty), building the missing members in one run."""
    base_dir, out_root = Path(base_dir).resolve(), Path(out_root)
    wanted = sorted({int(n) for n in steps})
    if wanted and wanted[0] < 1:
        raise ValueError(f"fine-tuning steps: need integers >= 1, got {list(steps)}")
    base = load_autoencoder(str(base_dir), device="cpu")
    if getattr(base, "family", None) != "taesd":
        raise ValueError(f"{base_dir}: a TAESD-family folder is needed to fine-tune its decoder "
                         f"(found family {getattr(base, 'family', '?')!r})")
    dirs = {n: out_root / f"ft-{n}" for n in wanted}
    recipes = {n: _recipe(base_dir, n, recipe) for n in wanted}
    todo = [n for n in wanted if not _cached(dirs[n], recipes[n])]
    if not todo:
        return dirs
    variant = base.model.variant
    crops = real_images.training_crops(recipe.resolution, recipe.n_crops, seed=0)
    with torch.no_grad():
        latents = torch.cat([base.encode(crops[i:i + 64]) for i in range(0, len(crops), 64)])
    reference = base.model.decoder
    decoder = _copy(reference)
    decoder.train().requires_grad_(True)
    opt = torch.optim.Adam(decoder.parameters(), lr=recipe.lr)
    gen = torch.Generator().manual_seed(recipe.seed)
    t0 = time.perf_counter()
    loss = torch.tensor(float("nan"))
    for step in tqdm(range(1, max(todo) + 1), desc=f"fine-tune {base_dir.name} decoder", disable=not progress,
                     leave=False):
        idx = torch.randint(len(crops), (recipe.batch,), generator=gen)
        loss = F.mse_loss(decoder(latents[idx]), crops[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in todo:
            card = {"family": "taesd", "variant": variant.name, "resolution": base.resolution,
                    "name": f"ft-{step}", "base": base_dir.name, "finetune_steps": step,
                    "final_batch_mse": float(loss.detach()), "seconds": round(time.perf_counter() - t0, 2),
                    "relative_l2": decoder_distance(decoder, reference), "finetune_recipe": recipes[step],
                    "note": "derived here by data_gen.taesd_finetune; never shipped"}
            _save(dirs[step], base_dir, variant.file("encoder"), variant.file("decoder"), decoder, card)
            log.info("saved %s (relative L2 %.4g, batch MSE %.3g)", dirs[step], card["relative_l2"],
                     card["final_batch_mse"])
    return dirs


def _copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module)


def _save(out: Path, base_dir: Path, encoder_file: str, decoder_file: str, decoder: torch.nn.Module,
          card: dict) -> Path:
    state = {k: v.detach().clone().contiguous() for k, v in decoder.state_dict().items()}

    def write(tmp: Path) -> None:
        shutil.copyfile(base_dir / encoder_file, tmp / encoder_file)
        torch.save(state, tmp / decoder_file)
        atomic.write_text(tmp / CARD, json.dumps(card, indent=1) + "\n")

    return atomic.replace_dir(out, write)
