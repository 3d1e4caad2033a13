"""``latenttracer attack``: red-team a threshold with the adaptive attacks of :mod:`latenttracer.attacks`.

    latenttracer attack --model zoo/kl-a --images own/ --kind evade --budget 40 --out attacked/ --calibrate own_cal/
    latenttracer attack --model zoo/kl-a --images photos/ --kind forge --budget 25 --out framed/ --threshold 2e-5

``--kind evade`` perturbs each image (meant: the model's own) to be judged NOT belonging; ``--kind forge`` perturbs
each (meant: not the model's) to be judged belonging. Per image the weakest attack found that flips the verdict
with a PSNR to the (resized) original of at least ``--budget`` dB is kept; where none does, the attack at the budget
itself (evasion, ``pgd``/``noise``) or the projection (forgery) is written all the same, marked unsuccessful.
Writes ``<out>/<image stem>.png`` (at the model's resolution, 8-bit) and ``<out>/attack.csv``: ``path,attacked,
score_before,score_after,belonging_before,belonging_after,success,psnr,linf,threshold,method,kind,attack``.
White-box: the decoder (and encoder) are public, as for every open model (``docs/attacks.md``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

KINDS = ("evade", "forge")
BUDGET_RANGE = (10.0, 80.0)  # PSNR, dB


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``attack`` on the ``latenttracer`` subparsers (shared flags: :mod:`latenttracer.cli_shared`)."""
    from latenttracer.cli_shared import add_common_args as _add_common_args

    a = sub.add_parser("attack", help="perturb images to evade or frame an inspected model (red-team a threshold)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--model", required=True, help="pipeline dir, hub id, or a dir with one saved autoencoder")
    a.add_argument("--images", required=True, type=Path, help="folder of images to attack")
    a.add_argument("--kind", required=True, help="evade (own images judged not belonging) or forge (foreign images "
                                                 "judged belonging)")
    a.add_argument("--attack", default=None,
                   help="evade: noise, pgd (default), pgd_linf, jpeg; forge: projection, projection_iter (default), "
                        "pgd, noise")
    a.add_argument("--budget", required=True, type=float, metavar="PSNR",
                   help=f"the largest change allowed, as PSNR to the original in dB ({BUDGET_RANGE[0]:g} to "
                        f"{BUDGET_RANGE[1]:g}; higher = smaller)")
    a.add_argument("--out", required=True, type=Path, help="folder for the attacked images and attack.csv")
    g = a.add_mutually_exclusive_group(required=True)
    g.add_argument("--threshold", type=float, help="belonging iff score <= threshold")
    g.add_argument("--calibrate", type=Path, metavar="DIR", help="images known to come from the model")
    a.add_argument("--calibrate-perturb", metavar="FAMILY",
                   help="with --calibrate: threshold on clean and perturbed copies pooled (as trace)")
    a.add_argument("--search-steps", type=int, default=4, help="halvings of the budget search (default 4)")
    a.add_argument("--noise-seed", type=int, default=0, help="seed of the noise directions (noise attacks)")
    _add_common_args(a)
    return a


def check_args(args: argparse.Namespace) -> tuple[str, tuple]:
    """One-line errors before any work: the kind, the attack, the budget, the output folder; returns the attack and
    the ``--calibrate-perturb`` family."""
    from latenttracer.attacks import ATTACKS
    from latenttracer.reencoding import parse_family
    from latenttracer.writable import check_writable

    if args.kind not in KINDS:
        raise ValueError(f"--kind {args.kind!r}: unknown kind; expected one of {', '.join(KINDS)}")
    allowed = {"evade": ("noise", "pgd", "pgd_linf", "jpeg"), "forge": ("projection", "projection_iter", "pgd",
                                                                         "noise")}[args.kind]
    attack = args.attack or ("pgd" if args.kind == "evade" else "projection_iter")
    if attack not in allowed:
        raise ValueError(f"--attack {attack!r}: not an attack of --kind {args.kind}; expected one of "
                         f"{', '.join(allowed)}")
    assert set(allowed) >= set(ATTACKS[args.kind]) - {"pgd_linf", "jpeg"}
    lo, hi = BUDGET_RANGE
    if not (np.isfinite(args.budget) and lo <= args.budget <= hi):
        raise ValueError(f"--budget {args.budget:g}: a PSNR in dB must be between {lo:g} and {hi:g} (higher = a "
                         "smaller change)")
    if args.search_steps < 0:
        raise ValueError(f"--search-steps {args.search_steps}: must be >= 0")
    if not args.images.is_dir():
        raise NotADirectoryError(f"--images {args.images}: not a folder")
    check_writable(args.out, "--out", folder=True)
    if not args.no_cache:
        check_writable(args.cache, "--cache", folder=True)
    if args.calibrate_perturb is not None and args.calibrate is None:
        raise ValueError("--calibrate-perturb needs --calibrate DIR")
    return attack, (parse_family(args.calibrate_perturb) if args.calibrate_perturb else ())


def run(args: argparse.Namespace) -> int:
    from latenttracer import atomic
    from latenttracer import attacks as A
    from latenttracer.autoencoders import load_autoencoder
    from latenttracer.cli_shared import make_tracer as _tracer
    from latenttracer.cli_shared import setup as _setup
    from latenttracer.images import list_images, load_images
    from latenttracer.methods import LatentTracer, get_method
    from latenttracer.methods.flags import describe as _describe

    attack, family = check_args(args)
    method, options, store = _setup(args)
    paths = list_images(args.images, recursive=args.recursive)
    if not paths:
        raise ValueError(f"--images {args.images}: no image")
    ae = load_autoencoder(args.model, resolution=args.resolution, device=args.device, dtype=args.dtype)
    print(f"inspected model: {ae.name} ({ae.family}, {ae.resolution}px); {len(paths)} images; {_describe(method)}; "
          f"{args.kind} by {attack} within {args.budget:g} dB", file=sys.stderr)
    t0 = time.perf_counter()
    tracer = _tracer(args, ae, method, options, store)
    tracer.threshold = args.threshold
    if args.calibrate is not None:
        perturbed = (Path(tempfile.mkdtemp(prefix="latenttracer-perturbed-")) if args.no_cache
                     else args.cache.parent / "perturbed")
        tracer.calibrate(list_images(args.calibrate, recursive=args.recursive), args.target_tpr, family, perturbed,
                         where=f"--calibrate {args.calibrate}")
    threshold = float(tracer.threshold)
    method = tracer.method
    images, records, _ = load_images([str(p) for p in paths], ae.resolution, options)
    originals = A.to_uint8(images)
    work = (Path(tempfile.mkdtemp(prefix="latenttracer-attack-")) if args.no_cache
            else args.cache.parent / "attacks" / ae.name)

    def scorer_of(m):
        return A.file_scorer(work, lambda p: tracer.score(p, desc=f"attack {ae.name}", method=m)[0])

    scorer = scorer_of(method)
    projector = scorer if isinstance(method, LatentTracer) else scorer_of(get_method("latenttracer"))
    common = dict(psnr_range=(args.budget, max(args.budget + 24.0, 64.0)), steps=args.search_steps,
                  seed=args.noise_seed)
    if args.kind == "evade":
        result = A.evade(method, ae, originals, scorer, threshold, attack, linf_max=255, **common)
    else:
        result = A.forge(method, ae, originals, scorer, threshold, attack, projector=projector, **common)
    attacked = result.attacked.copy()
    failed = ~result.success
    if failed.any() and attack in ("noise", "pgd"):  # none found within the budget: the attack at the budget
        attacked[failed] = A.to_uint8(_at_budget(originals[failed], args.budget, ae, method, attack, args.kind,
                                                 args.noise_seed))
    after = scorer(attacked)
    belongs_after = A.verdicts(after, threshold)
    before = result.clean_scores
    p = A.psnr(A.mse(attacked, originals))
    within = p >= args.budget - 1e-9
    success = (~belongs_after if args.kind == "evade" else belongs_after) & within
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    for i, rec in enumerate(records):
        target = args.out / f"{Path(rec.path).stem}.png"
        atomic.write_bytes(target, A.png_bytes(attacked[i]))
        rows.append({"path": rec.path, "attacked": str(target), "score_before": before[i],
                     "score_after": float(pd.to_numeric(after["score"], errors="coerce").iloc[i]),
                     "belonging_before": bool(np.isfinite(before[i]) and before[i] <= threshold),
                     "belonging_after": bool(belongs_after[i]), "success": bool(success[i]), "psnr": float(p[i]),
                     "linf": int(A.linf_levels(attacked[i:i + 1], originals[i:i + 1])[0]), "threshold": threshold,
                     "method": method.label, "kind": args.kind, "attack": attack})
    frame = pd.DataFrame(rows)
    atomic.write_frame(frame, args.out / "attack.csv")
    k = int(success.sum())
    already = int((frame["belonging_before"] != (args.kind == "evade")).sum())  # on the wanted side unchanged
    print(f"{len(rows)} images: {k} {'evade' if args.kind == 'evade' else 'pass as belonging'} within "
          f"{args.budget:g} dB (threshold {threshold:.4g}; {already} of them "
          f"{'not belonging' if args.kind == 'evade' else 'belonging'} before any change); "
          f"median PSNR {np.median(p):.1f} dB; "
          f"{time.perf_counter() - t0:.1f}s\nwrote {args.out / 'attack.csv'} and {len(rows)} images in {args.out}")
    return 0


def _at_budget(originals: np.ndarray, budget: float, ae, method, attack: str, kind: str, seed: int):
    """The attack's direction scaled to exactly the budget (for images no weaker attack flipped)."""
    from latenttracer import attacks as A

    x = A.to_tensor(originals)
    if attack == "noise":
        d = A.noise_direction(originals, seed)
    else:
        d, _ = A.direction(method, ae, originals, 1.0 if kind == "evade" else -1.0, seed)
    return (x + float(np.sqrt(A.mse_of_psnr(budget))) * d).clamp(0, 1)
