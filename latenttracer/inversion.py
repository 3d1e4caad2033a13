"""Latent inversion, written once: batched gradient descent on the decoder input.

The defaults are the authors' settings (``docs/method.md``, "Authors' settings" and "Code quirks"):

* encoder initialisation (``init="encoder"``), Adam with default betas, ``lr=0.05``, ``steps=100``;
* the ``authors`` schedule: the learning rate is halved *after* step 0 and after every 50th step
  (``if i % 50 == 0: lr *= 0.5`` after ``optimizer.step()``), so 100 steps run 1 step at 0.05, 50 at 0.025
  and 49 at 0.0125;
* squared error (``l2``) on [0, 1] pixels, averaged per image;
* ``strategy="min"``: the score is the smallest loss over iterations 0 .. steps-1, each measured *before* that
  iteration's update. Iteration 0 is the plain encode/decode error; the latent produced by the last update is
  never scored, exactly as in the authors' loop. The engine therefore skips that last, unscored update.
  ``steps=0`` and ``steps=1`` both score iteration 0 alone (the plain reconstruction error).

Per-image losses are **summed** over the batch, so with Adam (an element-wise optimiser) every image's
trajectory is independent of its batch mates: an image scores the same alone or in a batch. A loss that turns
NaN or Inf marks that image failed (with the step and reason); its gradient is zeroed and the rest carry on.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch

from latenttracer.autoencoders import Autoencoder, resolve_device, resolve_dtype

Init = Literal["encoder", "random", "zeros"]
Schedule = Literal["authors", "constant"]
Distance = Literal["l2", "l1"]
Strategy = Literal["min", "last"]

_CHOICES = {"init": ("encoder", "random", "zeros"), "schedule": ("authors", "constant"),
            "distance": ("l2", "l1"), "strategy": ("min", "last")}
# Fields that change how fast results come, not what they are (batch independence is tested).
_NOT_IN_HASH = ("batch_size", "device", "record_trajectory", "record_latent")


@dataclass(frozen=True)
class InversionConfig:
    """How to invert. Defaults are the authors' (see the module docstring)."""

    init: Init = "encoder"
    lr: float = 0.05
    steps: int = 100
    schedule: Schedule = "authors"
    distance: Distance = "l2"
    strategy: Strategy = "min"
    batch_size: int | Literal["auto"] = "auto"  # "auto": from free device memory (latenttracer.memory)
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0  # only used by init="random"
    record_trajectory: bool = False
    record_latent: bool = False  # keep each image's best latent (InversionResult.best_latent), e.g. for reports

    def __post_init__(self) -> None:
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"inversion.{key}: {getattr(self, key)!r} is not one of {list(allowed)}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"inversion.lr: must be a positive number, got {self.lr!r}")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"inversion.steps: must be an integer >= 0, got {self.steps!r}")
        if self.batch_size != "auto" and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                          or self.batch_size < 1):
            raise ValueError(f"inversion.batch_size: must be an integer >= 1 or 'auto', got {self.batch_size!r}")
        resolve_dtype(self.dtype)

    @classmethod
    def from_dict(cls, values: dict) -> InversionConfig:
        """Build from a mapping (e.g. a Hydra node); unknown keys are an error naming them."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"inversion: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    def identity(self) -> dict:
        """The fields that decide the scores (used in cache keys)."""
        skip = set(_NOT_IN_HASH) | ({"seed"} if self.init != "random" else set())
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def hash(self, *extra: object) -> str:
        payload = json.dumps([self.identity(), *extra], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def scored_steps(self) -> int:
        """How many iterations are scored (0 .. n-1)."""
        return max(self.steps, 1)


@dataclass
class InversionResult:
    score: float
    init_loss: float
    best_step: int
    status: Literal["ok", "failed"] = "ok"
    reason: str = ""
    trajectory: list[float] | None = field(default=None, repr=False)
    # The latent of the scored iteration (``best_step``; iteration 0 is the initial latent), float32 on the CPU;
    # ``decode(best_latent)`` reproduces the score. Only with ``record_latent``.
    best_latent: torch.Tensor | None = field(default=None, repr=False)


def ronan_config(**overrides) -> InversionConfig:
    """RONAN's settings (NeurIPS 2023, README commands) as a preset of this one loop: random N(0, 1) initial
    latent, Adam lr 0.1, 1500 iterations, min over iterations, squared error, and a **constant** learning rate
    (RONAN's ``main.py`` has no schedule). ``overrides`` change any field (e.g. ``steps`` for a quick run)."""
    return InversionConfig(**{"init": "random", "lr": 0.1, "steps": 1500, "schedule": "constant",
                              "distance": "l2", "strategy": "min", **overrides})


def image_seed(sha256: str, seed: int) -> int:
    """Random-init seed of one image: fixed by its content, independent of batch and position."""
    return (int(sha256[:12], 16) + int(seed)) % (2**63)


def latent_to_bytes(latent: torch.Tensor) -> bytes:
    """A latent as the ``best_latent`` store value: ``.npy`` bytes (float32, shape included)."""
    buf = io.BytesIO()
    np.save(buf, latent.detach().float().cpu().numpy(), allow_pickle=False)
    return buf.getvalue()


def latent_from_bytes(value: bytes) -> torch.Tensor:
    """The latent stored by :func:`latent_to_bytes` (one image, no batch dimension)."""
    return torch.from_numpy(np.load(io.BytesIO(bytes(value)), allow_pickle=False))


def authors_lr(base_lr: float, step: int, schedule: Schedule = "authors") -> float:
    """The learning rate the update of iteration ``step`` uses (halved after step 0 and every 50th step)."""
    if schedule == "constant":
        return base_lr
    return base_lr * 0.5 ** (0 if step == 0 else 1 + (step - 1) // 50)


def _distance(kind: str, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    diff = recon.float() - target.float()
    per_pixel = diff.square() if kind == "l2" else diff.abs()
    return per_pixel.flatten(1).mean(1)


def _initial_latents(ae: Autoencoder, x: torch.Tensor, cfg: InversionConfig, seeds: Sequence[int]) -> torch.Tensor:
    z0 = ae.encode(x)
    if cfg.init == "encoder":
        return z0
    if cfg.init == "zeros":
        return torch.zeros_like(z0)
    # N(0, 1) in the (scaled) latent space, one generator per image: independent of batch mates.
    noise = [torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(int(s)), dtype=torch.float32)
             for s in seeds]
    return torch.stack(noise).to(z0.device, z0.dtype)


def _invert_batch(ae: Autoencoder, x: torch.Tensor, cfg: InversionConfig,
                  seeds: Sequence[int]) -> list[InversionResult]:
    n = x.shape[0]
    z = _initial_latents(ae, x, cfg, seeds).detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=cfg.lr)
    dev = z.device
    best = torch.full((n,), math.inf, device=dev)
    best_step = torch.zeros(n, dtype=torch.long, device=dev)
    failed = torch.zeros(n, dtype=torch.bool, device=dev)
    reasons = [""] * n
    trajectory: list[torch.Tensor] = []
    init_loss = last = best
    n_scored = cfg.scored_steps
    best_z = z.detach().clone() if cfg.record_latent else None

    for i in range(n_scored):
        per_image = _distance(cfg.distance, ae.decode(z), x)
        with torch.no_grad():
            values = per_image.detach()
            bad = ~torch.isfinite(values) & ~failed
            if bad.any():
                for j in bad.nonzero().flatten().tolist():
                    reasons[j] = f"non-finite loss ({values[j].item()}) at step {i}"
                failed |= bad
            if i == 0:
                init_loss = values.clone()
            improved = (values < best) & ~failed
            best = torch.where(improved, values, best)
            best_step = torch.where(improved, torch.full_like(best_step, i), best_step)
            last = values
            if best_z is not None:
                keep = improved if cfg.strategy == "min" else ~failed
                best_z[keep] = z.detach()[keep]
            if cfg.record_trajectory:
                trajectory.append(values.float().cpu())
        if i == n_scored - 1:
            break  # the authors' last update is never scored: skip it
        torch.where(failed, torch.zeros_like(per_image), per_image).sum().backward()
        if failed.any():
            z.grad[failed] = 0
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        for group in optimiser.param_groups:  # the rate of the next update (one definition: authors_lr)
            group["lr"] = authors_lr(cfg.lr, i + 1, cfg.schedule)

    score = best if cfg.strategy == "min" else last
    traj = torch.stack(trajectory, 1).tolist() if cfg.record_trajectory else None
    out = []
    for j in range(n):
        ok = not failed[j].item()
        out.append(InversionResult(
            score=float(score[j]) if ok else math.nan,
            init_loss=float(init_loss[j]),
            best_step=int(best_step[j]) if cfg.strategy == "min" else n_scored - 1,
            status="ok" if ok else "failed",
            reason=reasons[j],
            trajectory=traj[j] if traj is not None else None,
            best_latent=best_z[j].float().cpu() if best_z is not None else None,
        ))
    return out


def invert(
    ae: Autoencoder,
    images: torch.Tensor,
    config: InversionConfig = InversionConfig(),
    *,
    seeds: Sequence[int] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[InversionResult]:
    """Invert each image in ``images`` ((N, 3, H, W) in [0, 1]) through ``ae``'s decoder.

    ``seeds`` (one per image) seed ``init="random"``; by default ``config.seed + index``. ``on_batch`` is
    called with the number of images finished after every batch (for progress bars).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected shape (N, 3, H, W), got {tuple(images.shape)}")
    if seeds is None:
        seeds = [config.seed + i for i in range(images.shape[0])]
    elif len(seeds) != images.shape[0]:
        raise ValueError(f"seeds: {len(seeds)} given for {images.shape[0]} images")
    device = resolve_device(config.device)
    ae.to(device, config.dtype)
    batch_size = config.batch_size
    if batch_size == "auto":
        from latenttracer.memory import auto_batch_size

        batch_size = auto_batch_size(ae, images.shape[-1], device, backward=True, dtype=ae.dtype)
    results: list[InversionResult] = []
    for start in range(0, images.shape[0], batch_size):
        stop = start + batch_size
        x = images[start:stop].to(device, resolve_dtype(config.dtype))
        with torch.enable_grad():
            results.extend(_invert_batch(ae, x, config, seeds[start:stop]))
        if on_batch is not None:
            on_batch(len(results))
    return results
