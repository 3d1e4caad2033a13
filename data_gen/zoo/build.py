"""Train members and the whole zoo, optionally several members at once in worker processes."""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from data_gen import real_images
from data_gen.zoo import training
from data_gen.zoo.architectures import (
    MEMBERS,
    RESOLUTION,
    Member,
    build_autoencoder,
    build_prior,
    latent_size,
)
from data_gen.zoo.members import add_speed_to_card, load_member, make_pipeline, save_member
from data_gen.zoo.training import (
    Budget,
    deterministic,
    finetune_decoder,
    latents_for_prior,
    psnr,
    train_autoencoder,
    train_prior,
    whiten_latent_channels,
)
from data_gen.zoo.training import threads as set_threads


def train_member(member: Member, out_root: str | Path, budget: Budget = Budget(),
                 crops01: torch.Tensor | None = None, heldout01: torch.Tensor | None = None,
                 resolution: int = RESOLUTION, measure_speed: bool = True) -> dict:
    """Train one member and save it to ``out_root/<name>``; return its card.

    ``measure_speed=False`` leaves the decoder speed out of the card (add it later with
    :func:`add_speed_to_card`, e.g. once parallel training has finished and the cores are quiet).

    A member with ``base`` loads ``out_root/<base>`` (train that first), fine-tunes its decoder and reuses its
    prior and scaling factor. ``crops01`` / ``heldout01`` default to the shared training crops and the held-out
    real crops; pass them to avoid recomputing across members.
    """
    import diffusers

    out_root = Path(out_root)
    if crops01 is None:
        crops01 = real_images.training_crops(resolution, budget.n_crops, seed=0)
    if heldout01 is None:
        heldout01 = _heldout(resolution, budget.n_heldout)
    budget = member_budget(member, budget)
    t_start = time.perf_counter()
    torch.manual_seed(member.seed)
    with deterministic():
        if member.base is None:
            ae = build_autoencoder(member.autoencoder, resolution, member.latent_channels, member.widths,
                                   member.norm_groups)
            ae_stats = train_autoencoder(ae, member.autoencoder, crops01, budget, member.seed,
                                         f"{member.name} autoencoder")
            lat = latents_for_prior(ae, crops01)
            if member.whiten_latents:
                ae_stats["latent_channel_std_before_whitening"] = whiten_latent_channels(ae, lat)
                lat = latents_for_prior(ae, crops01)
            scaling = float(1.0 / lat.std())
            ae.register_to_config(scaling_factor=scaling)
            t_ae = time.perf_counter()
            torch.manual_seed(member.seed + 1000)
            unet = build_prior(lat.shape[-1], lat.shape[1])
            unet, prior_stats = train_prior(unet, lat * scaling, budget, member.seed, f"{member.name} prior",
                                            member.prediction)
            ae_steps, prior_steps = budget.ae_steps, budget.prior_steps
        else:
            base_dir = out_root / member.base
            if not (base_dir / "model_index.json").is_file():
                raise FileNotFoundError(f"{base_dir}: member {member.name!r} fine-tunes {member.base!r}; "
                                        f"train {member.base!r} into {out_root} first")
            base = load_member(base_dir)
            ae, unet = base.vqvae, base.unet
            scaling = float(ae.config.scaling_factor)
            ae_stats = finetune_decoder(ae, crops01, budget, member.seed, f"{member.name} decoder fine-tune")
            base_card = json.loads((base_dir / "card.json").read_text())
            t_ae = time.perf_counter()
            prior_stats = {"prior_reused_from": member.base}
            ae_steps, prior_steps = base_card["autoencoder_steps"], base_card["prior_steps"]
    t_end = time.perf_counter()
    latent = latent_size(ae, resolution)
    card = {
        "name": member.name, "stands_in_for": member.stands_in_for, "kind": member.autoencoder,
        "autoencoder_class": ae.__class__.__name__, "seed": member.seed, "base": member.base,
        "resolution": resolution, "latent_shape": [int(ae.config.latent_channels), latent, latent],
        "scaling_factor": scaling,
        "autoencoder_steps": ae_steps, "prior_steps": prior_steps,
        "finetune_steps": budget.finetune_steps if member.base else 0,
        "seconds": {"autoencoder": t_ae - t_start, "prior": t_end - t_ae, "total": t_end - t_start},
        "psnr_heldout_real_db": psnr(ae, heldout01), "n_heldout": len(heldout01),
        "psnr_train_db": psnr(ae, crops01[:len(heldout01)]),
        "stats": {**ae_stats, **prior_stats}, "budget": asdict(budget),
        "training_data": {"photos": [p.name for p in real_images.photos("train")], "n_crops": len(crops01),
                          "data_seed": 0},
        "autoencoder_config": dict(ae.config), "unet_config": dict(unet.config),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
    }
    prediction = MEMBERS[member.base].prediction if member.base else member.prediction
    save_member(out_root / member.name, make_pipeline(ae, unet, prediction), card)
    if measure_speed:
        card = add_speed_to_card(out_root / member.name, budget.speed_batch, budget.speed_threads)
    return card


def member_budget(member: Member, budget: Budget) -> Budget:
    """``budget`` with ``member``'s own training scale applied (steps factors, learning rate)."""
    changes = {}
    if member.ae_steps_factor != 1.0:
        changes["ae_steps"] = max(1, round(budget.ae_steps * member.ae_steps_factor))
    if member.ae_lr is not None:
        changes["ae_lr"] = member.ae_lr
    if member.prior_steps_factor != 1.0:
        changes["prior_steps"] = max(1, round(budget.prior_steps * member.prior_steps_factor))
    return replace(budget, **changes) if changes else budget


def _heldout(resolution: int, n: int) -> torch.Tensor:
    return torch.from_numpy(real_images.make_eval_crops(resolution, n, seed=0)[0]).permute(0, 3, 1, 2).float() / 255


def _worker_init(threads: int, counter) -> None:
    torch.set_num_threads(threads)
    with counter.get_lock():
        training.BAR["position"] = 1 + counter.value
        counter.value += 1


def _worker_train(name: str, out_root: str, budget: Budget, resolution: int) -> dict:
    return train_member(MEMBERS[name], out_root, budget, resolution=resolution, measure_speed=False)


def _report(card: dict) -> None:
    tqdm.write(f"{card['name']}: {card['seconds']['total']:.0f}s, PSNR held-out {card['psnr_heldout_real_db']:.2f} dB")


def train_zoo(out_root: str | Path, names: list[str] | None = None, budget: Budget = Budget(),
              resolution: int = RESOLUTION, jobs: int = 1, threads: int = 1) -> list[dict]:
    """Train the named members (default: all) into ``out_root``; return their cards.

    ``jobs > 1`` trains that many members at once in worker processes of ``threads`` intra-op threads each
    (single-threaded processes use the cores better than multi-threaded ones on a shared machine, and keep
    each member bit-reproducible); a fine-tuned member starts when its base is done.
    """
    names = list(MEMBERS) if not names else names
    unknown = [n for n in names if n not in MEMBERS]
    if unknown:
        raise ValueError(f"--members: unknown member(s) {unknown}; known: {list(MEMBERS)}")
    names = [n for n in MEMBERS if n in names]  # bases before the members that fine-tune them
    bar = tqdm(total=len(names), desc="zoo", position=0)
    cards = []
    if jobs <= 1:
        with set_threads(threads):
            crops01 = real_images.training_crops(resolution, budget.n_crops, seed=0)
            heldout01 = _heldout(resolution, budget.n_heldout)
            for name in names:
                cards.append(train_member(MEMBERS[name], out_root, budget, crops01, heldout01, resolution))
                _report(cards[-1])
                bar.update()
        bar.close()
        return cards
    ctx = multiprocessing.get_context("spawn")
    later = [n for n in names if MEMBERS[n].base in names]
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads, ctx.Value("i", 0))) as pool:
        def submit(name: str):
            return pool.submit(_worker_train, name, str(out_root), budget, resolution)

        # the longest training first (kl16: twice the autoencoder steps and a larger prior), so it does not run
        # alone at the end
        first = sorted((n for n in names if n not in later), key=lambda n: -MEMBERS[n].ae_steps_factor)
        pending = {submit(n): n for n in first}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                name = pending.pop(fut)
                cards.append(fut.result())
                _report(cards[-1])
                bar.update()
                for n in [n for n in later if MEMBERS[n].base == name]:
                    later.remove(n)
                    pending[submit(n)] = n
    bar.close()
    cards = [add_speed_to_card(Path(out_root) / c["name"], budget.speed_batch, budget.speed_threads)
             for c in sorted(cards, key=lambda c: list(MEMBERS).index(c["name"]))]
    return cards
