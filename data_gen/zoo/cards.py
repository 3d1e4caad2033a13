"""Member cards: ``card.json`` (the full record) and ``README.md`` (a model card with a table of the main facts)."""

from __future__ import annotations

import json
from pathlib import Path

from latenttracer import atomic
from latenttracer.tables import markdown_table


def card_readme(card: dict) -> str:
    """The model card ``README.md`` of a member, from its ``card.json`` record."""
    rows = [["seed", card["seed"]]]
    if card["base"]:
        rows.append(["based on", f"`{card['base']}` (decoder fine-tuned {card['budget']['finetune_steps']} steps; "
                                 "prior reused)"])
    rows += [
        ["resolution", f"{card['resolution']}x{card['resolution']}, latents {card['latent_shape']}"],
        ["autoencoder steps", card["autoencoder_steps"]],
        ["prior steps", card["prior_steps"]],
        ["training seconds", f"{card['seconds']['total']:.0f} (autoencoder {card['seconds']['autoencoder']:.0f}, "
                             f"prior {card['seconds']['prior']:.0f})"],
        ["scaling factor", f"{card['scaling_factor']:.4f}"],
        ["PSNR, held-out real crops", f"{card['psnr_heldout_real_db']:.2f} dB ({card['n_heldout']} crops)"],
    ]
    s = card.get("speed")
    if s:
        rows += [["decoder", f"{s['decoder_params']} params, {s['decoder_mflop_per_image']:.1f} MFLOP/image"],
                 ["decoder fwd+bwd", f"{s['image_steps_per_s']:.0f} image-steps/s (batch {s['batch']}, "
                                     f"{s['threads']} threads, fp32, w.r.t. the latent)"]]
    return (
        f"# Zoo member `{card['name']}`\n\n"
        f"A small latent generative model trained by `data_gen/zoo` (stands in for {card['stands_in_for']}).\n"
        f"Load it with `diffusers.DiffusionPipeline.from_pretrained(\"zoo/{card['name']}\")` (an `LDMPipeline`: "
        f"`vqvae` = `{card['autoencoder_class']}`, `unet` = latent diffusion prior, `scheduler` = DDIM).\n\n"
        + markdown_table(rows, ["field", "value"]) + "\n\n"
        "Training data: crops of the photos marked `train` in `data_gen/real_images.py` (licences there); the "
        "`eval` photos are never seen in training. Full configuration in `card.json`.\n")


def write_card(member_dir: str | Path, card: dict) -> None:
    """Write ``card.json`` and the ``README.md`` made from it into ``member_dir`` (each atomically)."""
    member_dir = Path(member_dir)
    atomic.write_text(member_dir / "card.json", json.dumps(card, indent=1, default=str) + "\n")
    atomic.write_text(member_dir / "README.md", card_readme(card))
