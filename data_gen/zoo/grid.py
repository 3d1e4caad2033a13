"""The sample grid of the zoo (``make zoo-grid``): a row of samples per member beside real evaluation crops."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from data_gen import real_images
from data_gen.zoo.architectures import MEMBERS
from data_gen.zoo.members import load_member


def sample(pipe, n: int, seed: int = 0, steps: int = 50) -> torch.Tensor:
    """``n`` samples from a member pipeline, ``(n, 3, H, W)`` in [0, 1], deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    out = pipe(batch_size=n, generator=gen, num_inference_steps=steps, output_type="np").images
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def draw_grid(zoo_dir: str | Path, out_png: str | Path, n: int = 10, seed: int = 0,
              names: list[str] | None = None) -> Path:
    """One PNG: a row of samples per member, beside a row of real evaluation crops, labelled."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    zoo_dir = Path(zoo_dir)
    names = names or [m for m in MEMBERS if (zoo_dir / m / "model_index.json").is_file()]
    if not names:
        raise FileNotFoundError(f"{zoo_dir}: no zoo members found (train them with python -m data_gen.zoo)")
    rows = []
    for name in names:
        card = json.loads((zoo_dir / name / "card.json").read_text())
        rows.append((f"{name}\n({card['autoencoder_class']})", sample(load_member(zoo_dir / name), n, seed)))
        resolution = card["resolution"]
    real = real_images.make_eval_crops(resolution, 600, seed=0)[0]
    pick = np.linspace(0, len(real) - 1, n).round().astype(int)  # spread over the eval photos
    rows.append(("real\n(eval photos)", torch.from_numpy(real[pick]).permute(0, 3, 1, 2).float() / 255))
    fig = Figure(figsize=(n * 0.9 + 1.2, len(rows) * 0.95 + 0.4))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(imgs[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"Zoo samples ({resolution}x{resolution}, DDIM 50 steps, seed {seed}) and real crops", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png
