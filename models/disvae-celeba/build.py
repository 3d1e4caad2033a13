"""Write each model's card.json and samples.png from the shipped files (run from the repository root):

    .venv/bin/python models/disvae-celeba/build.py

card.json: objective and its weights (from specs.json), parameter counts, sha256 of every shipped file, source
and commit. samples.png: an 8x8 grid of prior samples, image i decoded from z_i ~ N(0, I) drawn from a generator
seeded i (the same draw as the model's generated set at seed 0: ``data_gen.generate``'s ``prior`` pipeline).
Nothing here is downloaded; the weights are the files beside this script.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from latenttracer import atomic  # noqa: E402
from latenttracer.autoencoders import load_autoencoder  # noqa: E402

SOURCE = "https://github.com/YannDubs/disentangling-vae"
COMMIT = "f0452191bab6d94eba0b4e6a065f74dcfd54ac52"
LICENCE = ("MIT: Original work Copyright (c) 2018 Schlumberger; (Heavily) Modified work Copyright 2019 Yann Dubois, "
           "Aleco Kastanos, Dave Lines, Bart Melman (LICENSE in the parent folder)")
# folder -> (short name used in conf/model/, objective in words)
MODELS = {
    "VAE_celeba": ("vae", "plain VAE (ELBO)"),
    "betaH_celeba": ("betaH", "beta-VAE (Higgins et al.): ELBO with the KL term weighted by beta"),
    "betaB_celeba": ("betaB", "beta-VAE (Burgess et al.): gamma * |KL - C|, capacity C annealed to its final value"),
    "factor_celeba": ("factor", "FactorVAE: ELBO plus gamma * total correlation (estimated by a discriminator)"),
    "btcvae_celeba": ("btcvae", "beta-TCVAE: alpha * mutual information + beta * total correlation + gamma * "
                                "dimension-wise KL"),
    "btcvae_celeba_a-5": ("btcvae-a-5", "beta-TCVAE with alpha = -5 (mutual-information weight)"),
    "btcvae_celeba_a0": ("btcvae-a0", "beta-TCVAE with alpha = 0 (mutual-information weight)"),
    "btcvae_celeba_a5": ("btcvae-a5", "beta-TCVAE with alpha = 5 (mutual-information weight)"),
}
# the specs.json keys that weigh each objective
WEIGHT_KEYS = {"VAE": (), "betaH": ("betaH_B",), "betaB": ("betaB_G", "betaB_initC", "betaB_finC", "reg_anneal"),
               "factor": ("factor_G", "lr_disc"), "btcvae": ("btcvae_A", "btcvae_B", "btcvae_G")}
GRID = 8


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def card(folder: Path) -> dict:
    short, objective = MODELS[folder.name]
    specs = json.loads((folder / "specs.json").read_text())
    ae = load_autoencoder(folder)
    count = {part: sum(p.numel() for p in getattr(ae.model, part).parameters()) for part in ("encoder", "decoder")}
    return {
        "family": "disvae", "name": short, "folder": folder.name, "resolution": ae.resolution,
        "latent_dim": specs["latent_dim"], "prior": "N(0, I)",
        "objective": objective, "loss": specs["loss"],
        "objective_weights": {k: specs[k] for k in WEIGHT_KEYS[specs["loss"]]},
        "training": {k: specs[k] for k in ("dataset", "epochs", "lr", "batch_size", "seed", "rec_dist")},
        "parameters": count,
        "sha256": {f: sha256(folder / f) for f in ("model.pt", "specs.json")},
        "source": SOURCE, "commit": COMMIT, "source_path": f"results/{folder.name}/", "licence": LICENCE,
        "samples": {"file": "samples.png", "grid": f"{GRID}x{GRID}", "seeds": f"0..{GRID * GRID - 1}"},
    }


def samples(folder: Path) -> bytes:
    ae = load_autoencoder(folder)
    with torch.no_grad():
        z = ae.sample_prior([torch.Generator().manual_seed(i) for i in range(GRID * GRID)])
        x = ae.decode(z)
    pixels = np.round(x.permute(0, 2, 3, 1).numpy().astype(np.float64) * 255).clip(0, 255).astype(np.uint8)
    s = ae.resolution
    grid = pixels.reshape(GRID, GRID, s, s, 3).transpose(0, 2, 1, 3, 4).reshape(GRID * s, GRID * s, 3)
    import io

    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    return buf.getvalue()


def main() -> None:
    for name in MODELS:
        folder = HERE / name
        atomic.write_text(folder / "card.json", json.dumps(card(folder), indent=2) + "\n")
        atomic.write_bytes(folder / "samples.png", samples(folder))
        print(f"{name}: card.json, samples.png")


if __name__ == "__main__":
    main()
