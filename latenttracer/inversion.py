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

Deployment options (off by default; ``docs/deployment.md``):

* ``lr_scale="latent_rms"``: ``lr`` is in units of the inspected model's latent scale, the RMS of its encoder
  latents over its own calibration images (:func:`latent_rms`). Adam's step is about ``lr`` per latent element
  whatever the gradient's size, so one absolute rate is too large for a model with small latents (the zoo's vq:
  RMS 0.2) and too small for one with large latents (kl-a: 0.95). :func:`resolve_lr_scale` turns such a config
  into an absolute one (``lr * RMS``, the RMS rounded to 4 significant digits so that cache keys are stable);
  :func:`invert` refuses an unresolved config. The harness resolves it with the inspected model's calibration
  half, ``trace`` with ``--calibrate``.
* ``halve_every``: the authors' schedule halves the rate after step 0 and after every 50th step; a shorter run may
  halve more often (``halve_every=h``: after step 0 and after every ``h``-th step).
* ``schedule="cosine"``: the rate of the update at iteration ``i`` is ``lr * (1 + cos(pi * i / (steps - 1))) / 2``
  (full at iteration 0, falling towards 0 at the last update). Unlike the authors' and the constant schedules it
  depends on ``steps``, so a longer run's first iterations are not a shorter cosine run
  (:attr:`InversionConfig.cuttable` is false; :func:`latenttracer.protocol.invert_paths` refuses to cut one).
* ``early_exit`` with a threshold ``exit_threshold`` (belonging iff score <= t): an image leaves the loop as soon
  as its running minimum is ``<= t`` (its verdict is then final and equal to the full run's: the minimum only
  falls; its score is the minimum reached, an upper bound of the full run's), or, with ``exit_ratios`` (the
  per-step bound learnt from calibration trajectories by :mod:`latenttracer.early_exit`, in units of ``t``), when
  its running minimum at step ``k`` is above ``exit_ratios[k] * t``: not belonging, wrongly for at most a chosen
  share of the model's own images (the risk; :mod:`latenttracer.early_exit` states the guarantee).
  Images that leave are removed from the batch (the latent and Adam's per-element state are compacted), so they
  stop costing; every other image's trajectory is unchanged, because
  the rows are independent. An exited image's result says so (``exit``, ``exit_step``, ``steps_run``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from latenttracer.autoencoders import Autoencoder, resolve_device, resolve_dtype
from latenttracer.settings import from_mapping

Init = Literal["encoder", "random", "zeros"]
Schedule = Literal["authors", "constant", "cosine"]
LrScale = Literal["absolute", "latent_rms"]
Distance = Literal["l2", "l1"]
Strategy = Literal["min", "last"]
Exit = Literal["", "threshold", "bound"]
DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (decoded, target) -> one loss per image

_CHOICES = {"init": ("encoder", "random", "zeros"), "schedule": ("authors", "constant", "cosine"),
            "lr_scale": ("absolute", "latent_rms"),
            "distance": ("l2", "l1"), "strategy": ("min", "last")}
# Fields that change how fast results come, not what they are (batch independence is tested).
_NOT_IN_HASH = ("batch_size", "device", "record_trajectory", "record_latent")
# Early-exit settings decide the scores only when early exit is on (an early-exited score is not a full-run score).
_EXIT_FIELDS = ("early_exit", "exit_threshold", "exit_ratios")
AUTHORS_HALVE_EVERY = 50


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
    halve_every: int = AUTHORS_HALVE_EVERY  # schedule="authors": halve after step 0 and every this many steps
    lr_scale: LrScale = "absolute"  # "latent_rms": lr in units of the model's latent RMS (module docstring)
    early_exit: bool = False  # stop an image once its verdict is known (module docstring); needs exit_threshold
    exit_threshold: float | None = None  # t: belonging iff score <= t (e.g. calibrated at 95% TPR)
    exit_ratios: tuple[float, ...] | None = None  # the bound at step k is exit_ratios[k] * t; None: the exact exit only

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
        if isinstance(self.halve_every, bool) or not isinstance(self.halve_every, int) or self.halve_every < 1:
            raise ValueError(f"inversion.halve_every: must be an integer >= 1, got {self.halve_every!r}")
        self._check_early_exit()

    def _check_early_exit(self) -> None:
        if not isinstance(self.early_exit, bool):
            raise ValueError(f"inversion.early_exit: must be true or false, got {self.early_exit!r}")
        if self.exit_ratios is not None:
            if not isinstance(self.exit_ratios, tuple):  # lists (YAML, JSON) become tuples: hashable, frozen
                object.__setattr__(self, "exit_ratios", tuple(self.exit_ratios))
            # > 0; infinite allowed (no exit from above at that step)
            bad = [r for r in self.exit_ratios if isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0]
            if bad:
                raise ValueError(f"inversion.exit_ratios: every ratio must be a number > 0 (the bound over the "
                                 f"threshold), got {bad[:3]}")
        if not self.early_exit:
            return
        if self.exit_threshold is None:
            raise ValueError("inversion.early_exit: needs inversion.exit_threshold (calibrate one, e.g. "
                             "latenttracer.early_exit.learn_exit_policy)")
        if not (isinstance(self.exit_threshold, (int, float)) and math.isfinite(self.exit_threshold)):
            raise ValueError(f"inversion.exit_threshold: must be a finite number, got {self.exit_threshold!r}")
        if self.strategy != "min":
            raise ValueError(f"inversion.early_exit: needs strategy 'min' (the running minimum), got "
                             f"{self.strategy!r}")
        if self.exit_ratios is not None and len(self.exit_ratios) != self.scored_steps:
            raise ValueError(f"inversion.exit_ratios: {len(self.exit_ratios)} ratios for {self.scored_steps} scored "
                             "steps; learn them from trajectories of this very schedule (lr, steps, halve_every)")

    @classmethod
    def from_dict(cls, values: dict) -> InversionConfig:
        """Build from a mapping (e.g. a Hydra node); unknown keys are an error naming them."""
        return from_mapping(cls, values, "inversion")

    def identity(self) -> dict:
        """The fields that decide the scores (used in cache keys)."""
        skip = set(_NOT_IN_HASH) | ({"seed"} if self.init != "random" else set())
        if not self.early_exit:
            skip |= set(_EXIT_FIELDS)
        if self.schedule != "authors" or self.halve_every == AUTHORS_HALVE_EVERY:
            skip.add("halve_every")  # the authors' rule: keys made before the option existed stay valid
        if self.lr_scale == "absolute":
            skip.add("lr_scale")  # resolved or absolute: the key holds the rate itself, as before the option
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def hash(self, *extra: object) -> str:
        payload = json.dumps([self.identity(), *extra], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def cuttable(self) -> bool:
        """Whether a longer run's first iterations are this run (the rate depends on the step index only)."""
        return self.schedule != "cosine"

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
    # Early exit (InversionConfig.early_exit): "threshold" (running minimum <= t: belonging, exact), "bound" (above
    # the learnt bound: not belonging) or "" (ran every step); exit_step is the last scored iteration.
    exit: Exit = ""
    exit_step: int | None = None
    steps_run: int = 0  # scored iterations this image ran (forward passes)


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


def latent_rms(ae: Autoencoder, images: torch.Tensor, batch_size: int = 64) -> float:
    """The RMS of ``ae``'s encoder latents over ``images`` ((N, 3, H, W) in [0, 1]), to 4 significant digits."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"latent_rms: needs a non-empty (N, 3, H, W) batch of images, got {tuple(images.shape)}")
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            z = ae.encode(images[start:start + batch_size].to(ae.device, ae.dtype)).double()
            total, count = total + float(z.square().sum()), count + z.numel()
    return float(f"{math.sqrt(total / count):.4g}")


def resolve_lr_scale(config: InversionConfig, ae: Autoencoder, calibration: torch.Tensor) -> InversionConfig:
    """``config`` with an absolute rate: unchanged when ``lr_scale="absolute"``, else ``lr * latent_rms(ae,
    calibration)`` (the inspected model's own calibration images)."""
    if config.lr_scale == "absolute":
        return config
    return replace(config, lr=config.lr * latent_rms(ae, calibration), lr_scale="absolute")


def authors_lr(base_lr: float, step: int, schedule: Schedule = "authors",
               halve_every: int = AUTHORS_HALVE_EVERY, steps: int | None = None) -> float:
    """The learning rate the update of iteration ``step`` uses (``authors``: halved after step 0 and every
    ``halve_every``-th; ``cosine``: cosine decay over the ``steps`` iterations of the run)."""
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        if steps is None:
            raise ValueError("the cosine schedule needs the run's step count")
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / max(steps - 1, 1)))
    return base_lr * 0.5 ** (0 if step == 0 else 1 + (step - 1) // halve_every)


EXIT_CODES = ("", "threshold", "bound")


def exit_codes(running_min: torch.Tensor, step: int, threshold: float, bounds: torch.Tensor | None) -> torch.Tensor:
    """The early-exit rule at scored iteration ``step``, per image: 0 stay, 1 exit belonging (running minimum
    ``<= threshold``: exact), 2 exit not belonging (running minimum above ``bounds[step]``). The one place the rule
    is written: the loop applies it, :mod:`latenttracer.early_exit` replays it on recorded trajectories."""
    codes = torch.zeros(running_min.shape, dtype=torch.int8, device=running_min.device)
    if bounds is not None:
        codes[running_min > bounds[step]] = 2
    codes[running_min <= threshold] = 1
    return codes


def exit_bounds(cfg: InversionConfig, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """``exit_ratios[k] * exit_threshold`` per scored step (None without ratios)."""
    if not cfg.early_exit or cfg.exit_ratios is None:
        return None
    ratios = torch.tensor(cfg.exit_ratios, dtype=torch.float64)
    return (ratios * float(cfg.exit_threshold)).to(device, torch.float32)


def _compact(optimiser: torch.optim.Optimizer, z: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """A new leaf latent holding the rows ``keep`` of ``z`` (with their gradient), and Adam's per-element state
    (``exp_avg``, ``exp_avg_sq``) cut to the same rows; shared scalars (``step``) are kept as they are."""
    new = z.detach()[keep].clone().requires_grad_(True)
    if z.grad is not None:
        new.grad = z.grad[keep].clone()
    state = optimiser.state.pop(z, {})
    optimiser.state[new] = {k: (v[keep].clone() if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == z.shape[0]
                                else v) for k, v in state.items()}
    optimiser.param_groups[0]["params"] = [new]
    return new


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


def _invert_batch(ae: Autoencoder, x: torch.Tensor, cfg: InversionConfig, seeds: Sequence[int],
                  distance: DistanceFn | None = None) -> list[InversionResult]:
    n = x.shape[0]
    z = _initial_latents(ae, x, cfg, seeds).detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=cfg.lr)
    dev = z.device
    # Per-image state is indexed by the image's position in the batch; ``rows`` maps the rows of ``z`` (and of the
    # compacted ``x``) to those positions. Without early exit nothing leaves and ``rows`` is every position.
    rows = torch.arange(n, device=dev)
    best = torch.full((n,), math.inf, device=dev)
    best_step = torch.zeros(n, dtype=torch.long, device=dev)
    failed = torch.zeros(n, dtype=torch.bool, device=dev)
    reasons = [""] * n
    n_scored = cfg.scored_steps
    init_loss = torch.full((n,), math.nan, device=dev)
    last = torch.full((n,), math.nan, device=dev)
    trajectory = torch.full((n, n_scored), math.nan) if cfg.record_trajectory else None
    best_z = z.detach().clone() if cfg.record_latent else None
    exits = torch.zeros(n, dtype=torch.int8, device=dev)
    steps_run = torch.full((n,), n_scored, dtype=torch.long, device=dev)
    bounds = exit_bounds(cfg, dev)

    for i in range(n_scored):
        recon = ae.decode(z)
        per_image = _distance(cfg.distance, recon, x) if distance is None else distance(recon, x)
        with torch.no_grad():
            values = per_image.detach()
            was_failed = failed[rows]
            bad = ~torch.isfinite(values) & ~was_failed
            if bad.any():
                for j in rows[bad].tolist():
                    reasons[j] = f"non-finite loss ({values[rows == j].item()}) at step {i}"
            row_failed = was_failed | bad
            failed[rows] = row_failed
            if i == 0:
                init_loss[rows] = values
            improved = (values < best[rows]) & ~row_failed
            best[rows] = torch.where(improved, values, best[rows])
            best_step[rows] = torch.where(improved, torch.full_like(rows, i), best_step[rows])
            last[rows] = values
            if best_z is not None:
                keep = improved if cfg.strategy == "min" else ~row_failed
                best_z[rows[keep]] = z.detach()[keep]
            if trajectory is not None:
                trajectory[rows.cpu(), i] = values.float().cpu()
        if i == n_scored - 1:
            break  # the authors' last update is never scored: skip it
        stay = None
        if cfg.early_exit:
            with torch.no_grad():
                codes = exit_codes(best[rows], i, float(cfg.exit_threshold), bounds)
                leave = (codes > 0) | row_failed  # a failed image's result is final too
                if leave.any():
                    gone = rows[leave]
                    exits[gone] = torch.where(row_failed[leave], torch.zeros_like(codes[leave]), codes[leave])
                    steps_run[gone] = i + 1
                    stay = ~leave
                    if not stay.any():
                        break
        torch.where(row_failed, torch.zeros_like(per_image), per_image).sum().backward()
        if row_failed.any():
            z.grad[row_failed] = 0
        if stay is not None:  # images that left stop costing: compact the batch before the update
            z = _compact(optimiser, z, stay)
            x, rows = x[stay], rows[stay]
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        for group in optimiser.param_groups:  # the rate of the next update (one definition: authors_lr)
            group["lr"] = authors_lr(cfg.lr, i + 1, cfg.schedule, cfg.halve_every, n_scored)

    score = best if cfg.strategy == "min" else last
    out = []
    for j in range(n):
        ok = not failed[j].item()
        ran = int(steps_run[j])
        code = EXIT_CODES[int(exits[j])]
        out.append(InversionResult(
            score=float(score[j]) if ok else math.nan,
            init_loss=float(init_loss[j]),
            best_step=int(best_step[j]) if cfg.strategy == "min" else n_scored - 1,
            status="ok" if ok else "failed",
            reason=reasons[j],
            trajectory=trajectory[j, :ran].tolist() if trajectory is not None else None,
            best_latent=best_z[j].float().cpu() if best_z is not None else None,
            exit=code,
            exit_step=ran - 1 if code else None,
            steps_run=ran,
        ))
    return out


def invert(
    ae: Autoencoder,
    images: torch.Tensor,
    config: InversionConfig = InversionConfig(),
    *,
    seeds: Sequence[int] | None = None,
    on_batch: Callable[[int], None] | None = None,
    distance: DistanceFn | None = None,
) -> list[InversionResult]:
    """Invert each image in ``images`` ((N, 3, H, W) in [0, 1]) through ``ae``'s decoder.

    ``seeds`` (one per image) seed ``init="random"``; by default ``config.seed + index``. ``on_batch`` is
    called with the number of images finished after every batch (for progress bars). ``distance`` replaces
    ``config.distance``: a function of (decoded batch, target batch), both (n, 3, H, W) in [0, 1], returning one
    differentiable loss per image with no arithmetic across images (e.g. a low-pass distance,
    :mod:`latenttracer.methods.lowpass`); the caller puts what it computes into its cache key.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected shape (N, 3, H, W), got {tuple(images.shape)}")
    if config.lr_scale != "absolute":
        raise ValueError(f"inversion.lr_scale={config.lr_scale!r}: the rate is in units of the model's latent RMS on "
                         "its calibration images; resolve it first (latenttracer.inversion.resolve_lr_scale; the "
                         "harness does it with the model's calibration half, `trace` with --calibrate)")
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
            results.extend(_invert_batch(ae, x, config, seeds[start:stop], distance))
        if on_batch is not None:
            on_batch(len(results))
    return results
