"""Adaptive attacks on a detection method: evasion (an own image judged not belonging) and forgery (a foreign image
judged belonging), each as the smallest perturbation that flips the verdict (``docs/attacks.md``).

Every attack is a plain function of an :class:`~latenttracer.autoencoders.Autoencoder`, a
:class:`~latenttracer.methods.Method` and a :data:`Scorer` (8-bit images -> the method's rows, through the one scoring
path :func:`latenttracer.tracing.score_images`: :func:`file_scorer`). Images are ``(N, H, W, 3)`` uint8 arrays at the
model's resolution; an attacked image is always 8-bit (what a file carries), and every budget is measured on the
8-bit result: L2 as PSNR (``10 log10(1 / MSE)`` on [0, 1] pixels) and L-infinity in 8-bit levels.

Directions (one per image):

* ``noise``: seeded Gaussian noise (black box; the noise stream of :mod:`latenttracer.perturbations.noise`).
* ``pgd``: the gradient of a differentiable stand-in of the method's score (:func:`surrogate`), white box. For the
  inversion methods (LatentTracer, RONAN, relative, lowpass) the stand-in is the method's own distance between
  ``x`` and ``D(z*)``, where ``z*`` is the best latent of the ONE inversion loop (:func:`latenttracer.inversion.invert`,
  the method's own settings) held fixed: by Danskin's theorem that is the gradient of ``min_z d(D(z), x)``. For the
  one-pass methods it is their distance through the family's own reconstruction, differentiated (AEDR's homogeneity,
  a statistic of the file, held fixed; AEROBLADE's SSIM attacked through its L2 distance: ``transfer``). A method
  with no stand-in is attacked with the noise direction (``gradient`` says ``none``).
* ``jpeg``: PIL JPEG at a grid of qualities (:mod:`latenttracer.perturbations.jpeg`); its budget is what it costs.
* ``projection``: ``D(z*)`` rounded to 8 bits, ``z*`` the inversion's best latent; ``rounds > 1`` projects the
  projection again (the iterated form).

The smallest budget of each image is found by bisection on the PSNR (:func:`min_budget`, and over integer levels for
L-infinity): ``steps`` halvings of ``psnr_range``, one scoring of the whole batch per halving. An image's budget is
the weakest attack that flipped it (PSNR measured on the 8-bit image). Success rates at any budget follow
(:func:`success_curve`), with Wilson intervals (:func:`latenttracer.intervals.wilson`).

Analytic anchors (LatentTracer, ``score = min_z MSE(D(z), x)``, the squared distance to the decoder's range):

* evasion: a perturbation orthogonal to the decoder's range at ``D(z*)`` raises the score by its own MSE
  (:func:`orthogonal_to_range`); an own image of score ``s`` flips once the perturbation's MSE reaches about
  ``t - s`` (``t`` the threshold);
* forgery: an image accepted at ``t`` lies within ``sqrt(t)`` (RMS) of the range, so moving an image of score
  ``s > t`` there costs at least ``(sqrt(s) - sqrt(t))**2`` in MSE (:func:`forgery_bound_mse`): the score is a
  certificate of what framing costs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from latenttracer import atomic
from latenttracer.autoencoders import Autoencoder
from latenttracer.intervals import wilson
from latenttracer.inversion import _distance, image_seed, invert, latent_from_bytes
from latenttracer.methods import LatentTracer, Method
from latenttracer.perturbations import kind_of
from latenttracer.perturbations.base import round8
from latenttracer.perturbations.noise import noise_generator

__all__ = ["ATTACKS", "AttackResult", "Scorer", "direction", "evade", "file_scorer", "forge", "forgery_bound_mse",
           "linf_levels", "min_budget", "mse", "mse_of_psnr", "orthogonal_to_range", "project", "psnr",
           "success_curve", "surrogate", "to_tensor", "to_uint8", "verdicts"]

Scorer = Callable[[np.ndarray], pd.DataFrame]
"""8-bit images ``(N, H, W, 3)`` -> one row per image, in order (``score``, ``status``; inversion methods also
``init_loss`` and ``best_latent``)."""

#: attack name -> (norm, what it needs): evasion and forgery both take ``noise`` and ``pgd``; ``jpeg`` is an evasion
#: baseline, ``projection`` / ``projection_iter`` are forgeries.
ATTACKS = {"evade": ("noise", "pgd", "pgd_linf", "jpeg"), "forge": ("projection", "projection_iter", "pgd")}
PSNR_RANGE = (16.0, 64.0)
MAX_PSNR = 99.0  # the PSNR written for identical images (MSE 0)


# -- pixels and budgets ---------------------------------------------------------------------------------------------
def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` in [0, 1] -> ``(N, H, W, 3)`` uint8, rounded half to even (as every perturbation)."""
    return round8(x.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0)


def mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image MSE between two 8-bit batches, on [0, 1] pixels."""
    d = a.astype(np.float64) / 255.0 - b.astype(np.float64) / 255.0
    return (d ** 2).reshape(len(a), -1).mean(1)


def psnr(m: np.ndarray | float) -> np.ndarray:
    """PSNR in dB of an MSE on [0, 1] pixels (:data:`MAX_PSNR` for 0)."""
    m = np.asarray(m, dtype=np.float64)
    with np.errstate(divide="ignore"):
        out = -10.0 * np.log10(m)
    return np.where(m > 0, out, MAX_PSNR)


def mse_of_psnr(p: np.ndarray | float) -> np.ndarray:
    return 10.0 ** (-np.asarray(p, dtype=np.float64) / 10.0)


def linf_levels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image largest absolute difference, in 8-bit levels."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1).max(1)


def forgery_bound_mse(score: np.ndarray | float, threshold: float) -> np.ndarray:
    """LatentTracer: the least MSE that moves an image of score ``score`` within ``threshold`` of the decoder's range,
    ``(sqrt(score) - sqrt(threshold))**2`` (0 where the image is accepted already)."""
    s = np.asarray(score, dtype=np.float64)
    return np.where(s > threshold, (np.sqrt(np.maximum(s, 0)) - math.sqrt(max(threshold, 0))) ** 2, 0.0)


def verdicts(frame: pd.DataFrame, threshold: float) -> np.ndarray:
    """Belonging (``score <= threshold``) per row; a failed row is not belonging."""
    s = pd.to_numeric(frame["score"], errors="coerce").to_numpy(dtype=float)
    ok = (frame["status"] == "ok").to_numpy() if "status" in frame else np.isfinite(s)
    return ok & np.isfinite(s) & (s <= threshold)


# -- scoring through the one path --------------------------------------------------------------------------------
def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def write_images(images: np.ndarray, folder: Path) -> list[Path]:
    """Each image as ``<folder>/<sha256 of its PNG>[:24].png`` (written once, atomically); the paths in order."""
    import hashlib

    folder = Path(folder)
    out = []
    for rgb in images:
        data = png_bytes(rgb)
        path = folder / f"{hashlib.sha256(data).hexdigest()[:24]}.png"
        if not path.is_file():
            atomic.write_bytes(path, data)
        out.append(path)
    return out


def file_scorer(folder: str | Path, score_paths: Callable[[list[str]], pd.DataFrame]) -> Scorer:
    """A :data:`Scorer` that writes the images under ``folder`` (content-addressed PNGs) and scores the files with
    ``score_paths`` (e.g. ``lambda p: score_images(ae, p, method=m, store=s)[0]`` or a study's
    ``ctx.score_paths``): attacked images are files like any other, scored (and cached) by the one path."""

    def score(images: np.ndarray) -> pd.DataFrame:
        paths = [str(p) for p in write_images(images, Path(folder))]
        frame = score_paths(list(dict.fromkeys(paths)))
        by_path = frame.drop_duplicates("path").set_index("path")
        missing = [p for p in paths if p not in by_path.index]
        if missing:
            raise RuntimeError(f"attack scorer: no score for {missing[0]} ({len(missing)} images)")
        return by_path.loc[paths].reset_index()

    return score


# -- directions ---------------------------------------------------------------------------------------------------
def _seeds(images: np.ndarray, seed: int) -> list[str]:
    import hashlib

    return [hashlib.sha256(png_bytes(rgb)).hexdigest() for rgb in images]


def noise_direction(images: np.ndarray, seed: int) -> torch.Tensor:
    """Per image, N(0, 1) pixels (RMS about 1) from the noise stream of :mod:`latenttracer.perturbations.noise`
    (seeded by the image's PNG SHA-256 and ``seed``: independent of batch and order)."""
    shas = _seeds(images, seed)
    out = [noise_generator(sha, seed).normal(0.0, 1.0, size=images.shape[1:]) for sha in shas]
    return to_tensor_float(np.stack(out))


def to_tensor_float(hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(hwc)).permute(0, 3, 1, 2).float()


def _differentiable_reconstruct(ae: Autoencoder, x11: torch.Tensor, generators, quantize: bool) -> tuple[torch.Tensor,
                                                                                                          bool]:
    """The family's own one-pass reconstruction with gradients to ``x11`` (its no-grad wrapper undone), or the plain
    reconstruction held fixed (False) where the family's method cannot be unwrapped."""
    raw = getattr(type(ae).reconstruct, "__wrapped__", None)
    if raw is None:
        return ae.reconstruct(x11, generators=generators, quantize=quantize).detach(), False
    with torch.enable_grad():
        return raw(ae, x11, generators=generators, quantize=quantize), True


def inverted(method: LatentTracer, ae: Autoencoder, x: torch.Tensor, images: np.ndarray) -> torch.Tensor:
    """``D(z*)`` per image (no gradient), ``z*`` the best latent of the one inversion loop with ``method``'s own
    settings and distance."""
    cfg = replace(method.config, batch_size=max(1, x.shape[0]), record_latent=True, record_trajectory=False,
                  early_exit=False)
    seeds = [image_seed(s, cfg.seed) for s in _seeds(images, 0)]
    results = invert(ae, x.detach(), cfg, seeds=seeds, distance=method.distance())
    z = torch.stack([r.best_latent if r.best_latent is not None else torch.zeros_like(results[0].best_latent)
                     for r in results]).to(ae.device, ae.dtype)
    with torch.no_grad():
        return ae.decode(z).detach().to(x.device, x.dtype)


def surrogate(method: Method, ae: Autoencoder, x: torch.Tensor, images: np.ndarray) -> tuple[torch.Tensor | None, str]:
    """A differentiable stand-in of ``method``'s score at ``x`` (``(N, 3, H, W)`` in [0, 1], ``requires_grad``), one
    value per image, and how it relates to the score (module docstring); ``(None, "none")`` if the method has none."""
    from latenttracer.methods.aedr import AEDR
    from latenttracer.methods.aeroblade import Aeroblade
    from latenttracer.methods.relative import Relative

    n = x.shape[0]
    if isinstance(method, LatentTracer):
        dist = method.distance() or (lambda r, t: _distance(method.config.distance, r, t))
        with torch.enable_grad():
            best = dist(inverted(method, ae, x, images), x)
            if isinstance(method, Relative):
                with torch.no_grad():
                    start = ae.decode(ae.encode(x.detach()))
                return best / dist(start, x).clamp_min(1e-12), "danskin"
        return best, "danskin"
    if isinstance(method, (Aeroblade, AEDR)):
        gens = lambda: ([torch.Generator().manual_seed(method.seed) for _ in range(n)]  # noqa: E731
                        if method.posterior == "sample" else None)
        x11 = x * 2 - 1
        if isinstance(method, Aeroblade):
            recon, exact = _differentiable_reconstruct(ae, x11, gens(), False)
            r01 = (recon.float() / 2 + 0.5).clamp(0, 1)
            loss = (r01 - x).square().flatten(1).mean(1)
            kind = ("exact" if method.distance == "l2" else "transfer") if exact else "fixed-reconstruction"
            return loss, kind
        g = gens()
        first, exact = _differentiable_reconstruct(ae, x11, g, True)
        second, _ = _differentiable_reconstruct(ae, first, g, True)
        a = (first.float() - x11.float()).square().flatten(1).mean(1)
        b = (second.float() - first.float()).square().flatten(1).mean(1)
        return a / b.clamp_min(1e-12), "exact" if exact else "fixed-reconstruction"
    return None, "none"


def _rms_normalised(d: torch.Tensor) -> torch.Tensor:
    rms = d.flatten(1).square().mean(1).sqrt().clamp_min(1e-20)
    return d / rms.view(-1, 1, 1, 1)


def direction(method: Method, ae: Autoencoder, images: np.ndarray, sign: float, seed: int = 0) -> tuple[torch.Tensor,
                                                                                                         str]:
    """The white-box direction (RMS 1 per image) that raises (``sign=+1``, evasion) or lowers (``-1``, forgery) the
    score, and the kind of gradient (:func:`surrogate`); the seeded noise direction where the method has none."""
    x = to_tensor(images).to(ae.device).requires_grad_(True)
    loss, kind = surrogate(method, ae, x, images)
    if loss is None:
        return noise_direction(images, seed), kind
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss.sum(), x)
    grad = torch.nan_to_num(grad.detach().float().cpu())
    flat = grad.flatten(1).abs().sum(1) == 0  # no gradient (e.g. a saturated pixel set): fall back to noise
    if flat.any():
        grad[flat] = noise_direction(images[flat.numpy()], seed)
    return _rms_normalised(sign * grad), kind


def orthogonal_to_range(ae: Autoencoder, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``v`` (one image, ``(3, H, W)``) minus its projection on the decoder's tangent space at latent ``z`` (one
    latent, no batch dimension): the column space of the Jacobian of ``decode`` (least squares). For small models."""
    jac = torch.autograd.functional.jacobian(lambda q: ae.decode(q.unsqueeze(0))[0].flatten(), z.float())
    j = jac.reshape(jac.shape[0], -1).double()
    coef = torch.linalg.lstsq(j, v.flatten().double().unsqueeze(1)).solution
    return (v.flatten().double() - (j @ coef).squeeze(1)).reshape(v.shape).float()


def project(images: np.ndarray, projector: Scorer, ae: Autoencoder, rounds: int = 1,
            method: LatentTracer | None = None) -> list[np.ndarray]:
    """``rounds`` projections: each ``round8(D(z*))`` of the previous one, ``z*`` the best latent of the projector's
    rows (an inversion method scoring through the one path); the list of 8-bit batches, one per round. A row without
    its latent (cached before latents were stored) is inverted again with ``method``, the projector's method."""
    out, current = [], images
    for _ in range(int(rounds)):
        rows = projector(current)
        has = rows["best_latent"].notna().to_numpy() if "best_latent" in rows else np.zeros(len(rows), bool)
        if not has.all() and method is None:
            raise ValueError("projection: the projector's rows carry no best latent (use an inversion method)")
        decoded = torch.zeros(to_tensor(current).shape)
        if has.any():
            z = torch.stack([latent_from_bytes(b) for b in rows.loc[has, "best_latent"]]).to(ae.device, ae.dtype)
            with torch.no_grad():
                decoded[torch.tensor(has)] = ae.decode(z).float().cpu()
        if not has.all():
            again = inverted(method, ae, to_tensor(current[~has]), current[~has])
            decoded[torch.tensor(~has)] = again.float().cpu()
        current = to_uint8(decoded)
        out.append(current)
    return out


# -- bisection on the budget -------------------------------------------------------------------------------------------
@dataclass
class AttackResult:
    """Per image: the weakest successful attack found. ``budget_psnr``: its PSNR to the original (NaN: no success in
    range; :data:`MAX_PSNR`: flipped without any change), ``linf``: its L-infinity in levels, ``budget``: the nominal
    budget it was made at (MSE for L2 attacks, levels for L-infinity, quality for JPEG), ``scores`` its score (NaN when
    none), ``attacked`` the images (the original where none succeeded), ``clean_scores`` the original's score, and
    the probes (``probes``: one dict of arrays per scoring) for the record."""

    attack: str
    norm: str
    gradient: str
    budget_psnr: np.ndarray
    linf: np.ndarray
    budget: np.ndarray
    scores: np.ndarray
    attacked: np.ndarray
    clean_scores: np.ndarray
    success: np.ndarray
    probes: list[dict] = field(default_factory=list)


def _success(rows: pd.DataFrame, threshold: float, goal: str) -> np.ndarray:
    belongs = verdicts(rows, threshold)
    return ~belongs if goal == "evade" else belongs


def min_budget(images: np.ndarray, make: Callable[[np.ndarray], np.ndarray], scorer: Scorer, threshold: float,
               goal: str, *, low: float, high: float, steps: int, integer: bool = False, rungs: int = 4) -> dict:
    """The weakest successful value, per image, of a parameter from ``high`` (weakest) to ``low`` (strongest) (PSNR
    for L2, levels negated for L-infinity); ``make(values) -> 8-bit images`` attacks each image at its own value.
    L2: ``rungs`` equally spaced values from the strongest are tried (a too strong step may overshoot a forgery),
    then ``steps`` halvings between each image's weakest successful rung and the next weaker one. Integer
    (L-infinity): ``steps`` halvings from the strongest. An image never flipped has no budget in range (NaN).
    Returns the weakest successful value, its images, scores and every probe."""
    n = len(images)
    best_val = np.full(n, np.nan)
    best_img = images.copy()
    best_score = np.full(n, np.nan)
    probes = []

    def probe(values: np.ndarray) -> np.ndarray:
        attacked = make(values)
        rows = scorer(attacked)
        ok = _success(rows, threshold, goal)
        scores = pd.to_numeric(rows["score"], errors="coerce").to_numpy(dtype=float)
        probes.append({"value": values.copy(), "success": ok.copy(), "score": scores})
        better = ok & (np.isnan(best_val) | (values > best_val))  # the first success, or a weaker one
        best_val[better] = values[better]
        best_img[better] = attacked[better]
        best_score[better] = scores[better]
        return ok

    if integer:  # L-infinity levels: plain bisection from the strongest
        lo, hi = np.full(n, float(low)), np.full(n, float(high))
        reach = probe(lo.copy())
        for _ in range(int(steps)):
            mid = np.floor((lo + hi) / 2)
            if np.all(~reach | (mid <= lo)):
                break
            ok = probe(np.where(reach & (mid > lo), mid, lo))
            lo = np.where(reach & ok & (mid > lo), mid, lo)
            hi = np.where(reach & ~ok & (mid > lo), mid, hi)
    else:  # a ladder from the strongest, then bisection between the weakest success and the next rung
        ladder = np.linspace(float(low), float(high), int(rungs) + 1)[:-1]
        ok_at = np.stack([probe(np.full(n, v)) for v in ladder])  # (rungs, n)
        reach = ok_at.any(0)
        last = np.where(reach, (len(ladder) - 1) - np.argmax(ok_at[::-1], axis=0), 0)
        lo = ladder[last]
        hi = np.where(last + 1 < len(ladder), ladder[np.minimum(last + 1, len(ladder) - 1)], float(high))
        for _ in range(int(steps)):
            mid = (lo + hi) / 2
            ok = probe(np.where(reach, mid, lo))
            lo = np.where(reach & ok, mid, lo)
            hi = np.where(reach & ~ok, mid, hi)
    return {"value": best_val, "attacked": best_img, "score": best_score, "probes": probes}


def _scaled(x: torch.Tensor, d: torch.Tensor, mse_target: np.ndarray) -> np.ndarray:
    scale = torch.from_numpy(np.sqrt(mse_target)).float().view(-1, 1, 1, 1)
    return to_uint8(x + scale * d)


def _signed(images: np.ndarray, d: torch.Tensor, levels: np.ndarray) -> np.ndarray:
    step = np.sign(d.permute(0, 2, 3, 1).numpy()) * levels.reshape(-1, 1, 1, 1)
    return round8(images.astype(np.float64) + step)


def _pgd_l2(method: Method, ae: Autoencoder, images: np.ndarray, mse_target: np.ndarray, sign: float, iters: int,
            first: torch.Tensor, seed: int) -> np.ndarray:
    """``iters`` projected steps in the L2 ball of ``mse_target`` per image, from the first step along ``first``."""
    x0 = to_tensor(images)
    radius = torch.from_numpy(np.sqrt(mse_target)).float().view(-1, 1, 1, 1)
    delta = radius * first
    for _ in range(int(iters) - 1):
        current = to_uint8(x0 + delta)
        d, _ = direction(method, ae, current, sign, seed)
        delta = delta + 0.5 * radius * d
        rms = delta.flatten(1).square().mean(1).sqrt().view(-1, 1, 1, 1).clamp_min(1e-20)
        delta = delta * torch.clamp(radius / rms, max=1.0)
    return to_uint8(x0 + delta)


def _first_success(images: np.ndarray, candidates, scorer, threshold: float, goal: str) -> dict:
    """Score each ``(value, attacked images)`` of ``candidates`` in turn (weakest first); per image keep the first
    that succeeds (its value, image and score), and every probe."""
    n = len(images)
    found = {"value": np.full(n, np.nan), "attacked": images.copy(), "score": np.full(n, np.nan), "probes": []}
    for value, attacked in candidates:
        rows = scorer(attacked)
        ok = _success(rows, threshold, goal)
        scores = pd.to_numeric(rows["score"], errors="coerce").to_numpy(float)
        found["probes"].append({"value": np.full(n, float(value)), "success": ok, "score": scores})
        new = ok & np.isnan(found["value"])
        found["value"][new] = value
        found["attacked"][new] = attacked[new]
        found["score"][new] = scores[new]
    return found


def _result(attack: str, norm: str, gradient: str, images: np.ndarray, clean: pd.DataFrame, found: dict,
            threshold: float, goal: str, budget_of: Callable[[np.ndarray], np.ndarray]) -> AttackResult:
    attacked = found["attacked"]
    success = ~np.isnan(found["value"])
    p = np.where(success, psnr(mse(attacked, images)), np.nan)
    budget = np.where(success, budget_of(found["value"]), np.nan)
    return AttackResult(attack, norm, gradient, p, np.where(success, linf_levels(attacked, images), np.nan), budget,
                        found["score"], attacked, pd.to_numeric(clean["score"], errors="coerce").to_numpy(float),
                        success, found["probes"])


def evade(method: Method, ae: Autoencoder, images: np.ndarray, scorer: Scorer, threshold: float, attack: str, *,
          clean: pd.DataFrame | None = None, psnr_range: tuple[float, float] = PSNR_RANGE, steps: int = 4,
          linf_max: int = 64, jpeg_qualities: Sequence[int] = (95, 85, 70, 50), pgd_iters: int = 1,
          rungs: int = 4, seed: int = 0) -> AttackResult:
    """The weakest ``attack`` (``noise``, ``pgd``, ``pgd_linf``, ``jpeg``) that makes each image judged not belonging
    (``score > threshold``); see the module docstring. ``clean``: the images' rows (scored here when missing)."""
    return _attack("evade", method, ae, images, scorer, threshold, attack, clean=clean, psnr_range=psnr_range,
                   steps=steps, linf_max=linf_max, jpeg_qualities=jpeg_qualities, pgd_iters=pgd_iters, rungs=rungs,
                   seed=seed)


def forge(method: Method, ae: Autoencoder, images: np.ndarray, scorer: Scorer, threshold: float, attack: str, *,
          projector: Scorer | None = None, projector_method: LatentTracer | None = None,
          clean: pd.DataFrame | None = None, rounds: int = 3,
          psnr_range: tuple[float, float] = PSNR_RANGE, steps: int = 4, pgd_iters: int = 1, rungs: int = 4,
          seed: int = 0) -> AttackResult:
    """The weakest ``attack`` (``projection``, ``projection_iter``: ``rounds`` projections, the best accepted one
    kept, ``pgd``, ``noise``) that makes each image judged belonging (``score <= threshold``). ``projector``: an
    inversion method's scorer on the same model (default: ``scorer``, which must then be one)."""
    return _attack("forge", method, ae, images, scorer, threshold, attack, clean=clean, psnr_range=psnr_range,
                   steps=steps, projector=projector, rounds=rounds, pgd_iters=pgd_iters, rungs=rungs, seed=seed,
                   projector_method=projector_method or (method if isinstance(method, LatentTracer) else None))


def _attack(goal: str, method: Method, ae: Autoencoder, images: np.ndarray, scorer: Scorer, threshold: float,
            attack: str, *, clean: pd.DataFrame | None, psnr_range: tuple[float, float], steps: int, seed: int,
            linf_max: int = 64, jpeg_qualities: Sequence[int] = (), projector: Scorer | None = None,
            rounds: int = 1, pgd_iters: int = 1, rungs: int = 4,
            projector_method: LatentTracer | None = None) -> AttackResult:
    allowed = {"evade": ("noise", "pgd", "pgd_linf", "jpeg"), "forge": ("noise", "pgd", "projection",
                                                                       "projection_iter")}[goal]
    if attack not in allowed:
        raise ValueError(f"attack {attack!r} is not one of {list(allowed)} for {goal}")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: expected (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    low, high = sorted(float(v) for v in psnr_range)
    if not (0 < low < high):
        raise ValueError(f"psnr_range: expected two PSNRs 0 < low < high, got {psnr_range}")
    clean = scorer(images) if clean is None else clean.reset_index(drop=True)
    sign = 1.0 if goal == "evade" else -1.0
    x = to_tensor(images)
    l2 = lambda v: mse_of_psnr(v)  # noqa: E731  (bisection value: PSNR; budget: MSE)

    if attack in ("noise", "pgd"):
        line = None
        if attack == "noise":
            d, kind = noise_direction(images, seed), "none"
        elif goal == "forge" and isinstance(method, LatentTracer):
            # descent on the Danskin stand-in is the line to the method's own projection D(z*): capped there
            line = inverted(method, ae, to_tensor(images), images).cpu() - x
            d, kind = _rms_normalised(line), "danskin-line"
        else:
            d, kind = direction(method, ae, images, sign, seed)

        def make(values: np.ndarray) -> np.ndarray:
            target = mse_of_psnr(values)
            if line is not None:
                reach_mse = line.flatten(1).square().mean(1).numpy().astype(np.float64)
                return _scaled(x, d, np.minimum(target, reach_mse))
            if attack == "pgd" and pgd_iters > 1:
                return _pgd_l2(method, ae, images, target, sign, pgd_iters, d, seed)
            return _scaled(x, d, target)

        found = min_budget(images, make, scorer, threshold, goal, low=low, high=high, steps=steps, rungs=rungs)
        return _result(attack, "l2", kind, images, clean, found, threshold, goal, l2)
    if attack == "pgd_linf":
        d, kind = direction(method, ae, images, sign, seed)
        found = min_budget(images, lambda v: _signed(images, d, -v), scorer, threshold, goal, low=-float(linf_max),
                           high=0.0, steps=int(math.ceil(math.log2(linf_max))) + 1, integer=True)
        return _result(attack, "linf", kind, images, clean, found, threshold, goal, lambda v: -v)
    if attack == "jpeg":
        jpeg = kind_of("jpeg")
        qualities = sorted({int(q) for q in jpeg_qualities}, reverse=True)  # weakest first
        found = _first_success(images, ((q, np.stack([jpeg.apply(rgb, q, None, 0) for rgb in images]))
                                        for q in qualities), scorer, threshold, goal)
        return _result(attack, "l2", "none", images, clean, found, threshold, goal, lambda v: v)
    # projections: the rounds' images, the first accepted kept (forgery only)
    n_rounds = 1 if attack == "projection" else max(1, int(rounds))
    rounds_out = project(images, projector or scorer, ae, n_rounds, projector_method)
    found = _first_success(images, enumerate(rounds_out, start=1), scorer, threshold, goal)
    if attack == "projection":  # the projection itself, accepted or not, is the attack's image
        found["attacked"] = rounds_out[0]
    return _result(attack, "l2", "projection", images, clean, found, threshold, goal, lambda v: v)


# -- success rates ------------------------------------------------------------------------------------------------
def success_curve(result: AttackResult, budgets: Sequence[float], *, eligible: np.ndarray | None = None,
                  level: float = 0.95) -> pd.DataFrame:
    """Success rate at each budget (PSNR for L2, levels for L-infinity): the fraction of ``eligible`` images (default:
    every one) flipped by an attack within that budget, with its Wilson interval and n."""
    keep = np.ones(len(result.success), bool) if eligible is None else np.asarray(eligible, bool)
    n = int(keep.sum())
    rows = []
    for b in budgets:
        if result.norm == "linf":
            hit = result.success & (result.linf <= b)
        else:
            hit = result.success & (result.budget_psnr >= b)
        k = int((hit & keep).sum())
        lo, hi = wilson(k, n, level) if n else (math.nan, math.nan)
        rows.append({"budget_psnr" if result.norm != "linf" else "budget": float(b), "success_rate": k / n if n
                     else math.nan, "success_lo": lo, "success_hi": hi, "k": k, "n": n})
    return pd.DataFrame(rows)


def budget_quantile(result: AttackResult, q: float, *, eligible: np.ndarray | None = None,
                    level: float = 0.95) -> dict:
    """The smallest budget at which a fraction ``q`` of the eligible images flip, with an interval: the budgets at
    which the Wilson interval of the success rate still contains ``q``. L2: PSNR (higher = smaller budget);
    L-infinity: levels. NaN where fewer than ``q`` flip within the range."""
    keep = np.ones(len(result.success), bool) if eligible is None else np.asarray(eligible, bool)
    n = int(keep.sum())
    linf = result.norm == "linf"
    vals = (result.linf if linf else result.budget_psnr)[keep & result.success]
    # candidate budgets: every image's own budget, from the smallest perturbation up
    cand = np.sort(vals) if linf else np.sort(vals)[::-1]
    point = lo_b = hi_b = math.nan
    for b in cand:
        k = int((vals <= b).sum()) if linf else int((vals >= b).sum())
        w_lo, w_hi = wilson(k, n, level)
        if math.isnan(hi_b) and w_hi >= q:
            hi_b = b  # the smallest budget still consistent with a rate q
        if math.isnan(point) and k / n >= q:
            point = b
        if math.isnan(lo_b) and w_lo >= q:
            lo_b = b  # the budget from which a rate q is established
    return {"budget": point, "budget_small": hi_b, "budget_large": lo_b, "n": n}
