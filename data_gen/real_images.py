"""The real-image set: crops of photographs that installed packages ship, with no download.

scikit-image (``skimage/data/*.png|jpg``, files inside the wheel; never the pooch-fetched extras) and
scikit-learn (``sklearn/datasets/images/*.jpg``) ship a few photographs with their wheels. They are read
straight from the installed package directories, so nothing is fetched, at build time or at test time.

The split is **by source photo**: a photo feeds either the zoo's training crops or the evaluation crops,
never both (``PHOTOS[i].split``). Evaluation crops are written once as 8-bit RGB PNGs with a manifest
(``manifest.csv``: file, photo, box in source pixels, scale) by :func:`build_eval_set`; training crops are
made in memory by :func:`training_crops`, with horizontal flips and scale jitter.

A crop is a square box of side ``round(size * scale)`` source pixels, resized to ``size x size`` with PIL's
BOX filter (area averaging, the analogue of the authors' ``cv2.INTER_AREA``); at scale 1 it is copied as is.
``scale`` is drawn log-uniformly in ``[1, min(max_scale, shorter side / size)]``.

Licences are quoted from the packages themselves: the docstrings of the ``skimage.data`` loaders and
``sklearn/datasets/images/README.txt``. Grayscale photos are copied to three channels (R = G = B).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latenttracer import atomic

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("file", "photo", "left", "top", "right", "bottom", "scale")
_META = "eval_set.json"


@dataclass(frozen=True)
class Photo:
    """One shipped photograph. ``package`` is the Python package whose data directory holds ``file``."""

    name: str
    package: str  # "skimage.data" or "sklearn.datasets.images"
    file: str
    licence: str
    credit: str
    split: str  # "train" or "eval"


_CC0 = "CC0 1.0 (public-domain dedication)"
_PD = "public domain"
_CC_BY_2 = "CC BY 2.0"
PHOTOS: tuple[Photo, ...] = (
    # -- training photos (the zoo's autoencoders and priors learn from these only) --
    Photo("astronaut", "skimage.data", "astronaut.png", _PD + " (NASA; 'no known copyright restrictions')",
          "NASA Great Images: Eileen Collins", "train"),
    Photo("rocket", "skimage.data", "rocket.jpg", _PD + " (released by SpaceX)",
          "SpaceX: DSCOVR launch on Falcon 9", "train"),
    Photo("hubble_deep_field", "skimage.data", "hubble_deep_field.jpg", _PD + " (NASA media guidelines)",
          "NASA/HubbleSite: Hubble eXtreme Deep Field", "train"),
    Photo("retina", "skimage.data", "retina.jpg", _CC0, "Mikael Haggstrom, Wikimedia Commons", "train"),
    Photo("immunohistochemistry", "skimage.data", "ihc.png", "no known copyright restrictions",
          "Center for Microscopy And Molecular Imaging (CMMI)", "train"),
    Photo("china", "sklearn.datasets.images", "china.jpg", _CC_BY_2,
          "danielbuechele (Flickr), via scikit-learn", "train"),
    Photo("camera", "skimage.data", "camera.png", _CC0, "Lav Varshney (grayscale)", "train"),
    Photo("grass", "skimage.data", "grass.png", _CC0, "linolafett, DeviantArt (grayscale)", "train"),
    Photo("gravel", "skimage.data", "gravel.png", _CC0, "CC0Textures Gravel04 (grayscale)", "train"),
    Photo("brick", "skimage.data", "brick.png", _CC0, "CC0Textures Bricks25 (grayscale)", "train"),
    Photo("coins", "skimage.data", "coins.png", "no known copyright restrictions",
          "Brooklyn Museum collection (grayscale)", "train"),
    # -- evaluation photos (the real, non-belonging images; never seen in training) --
    Photo("chelsea", "skimage.data", "chelsea.png", _CC0, "Stefan van der Walt", "eval"),
    Photo("coffee", "skimage.data", "coffee.png", _CC0, "Rachel Michetti (Pikolo Espresso Bar)", "eval"),
    Photo("flower", "sklearn.datasets.images", "flower.jpg", _CC_BY_2,
          "vultilion (Flickr), via scikit-learn (its README credits danielbuechele but links vultilion)",
          "eval"),
)


def photos(split: str) -> tuple[Photo, ...]:
    """The photos of one split, ``"train"`` or ``"eval"``."""
    if split not in ("train", "eval"):
        raise ValueError(f"split: expected 'train' or 'eval', got {split!r}")
    return tuple(p for p in PHOTOS if p.split == split)


def load_photo(photo: Photo) -> np.ndarray:
    """The photo as an ``(H, W, 3)`` uint8 array, read from the installed package's own data directory."""
    path = resources.files(photo.package) / photo.file
    if not path.is_file():
        raise FileNotFoundError(f"{photo.package}/{photo.file}: not in the installed package; the real-image set "
                                "needs the files shipped inside the scikit-image and scikit-learn wheels")
    with path.open("rb") as fh, Image.open(fh) as img:
        return np.asarray(img.convert("RGB"))


def _boxes(rng: np.random.Generator, hw: tuple[int, int], size: int, n: int, max_scale: float) -> np.ndarray:
    """``n`` square boxes ``(left, top, side)`` with log-uniform side in ``[size, size * max_scale]``."""
    h, w = hw
    hi = min(max_scale, min(h, w) / size)
    scales = np.exp(rng.uniform(0.0, np.log(hi), n))
    sides = np.clip(np.round(size * scales).astype(int), size, min(h, w))
    lefts = rng.integers(0, w - sides + 1)
    tops = rng.integers(0, h - sides + 1)
    return np.stack([lefts, tops, sides], axis=1)


def _cut(img: np.ndarray, left: int, top: int, side: int, size: int) -> np.ndarray:
    patch = img[top:top + side, left:left + side]
    if side == size:
        return patch.copy()
    return np.asarray(Image.fromarray(patch).resize((size, size), Image.Resampling.BOX))


def _per_photo_counts(n: int, k: int) -> list[int]:
    """Split ``n`` crops over ``k`` photos as evenly as possible (earlier photos take the remainder)."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def training_crops(size: int = 32, n: int = 20000, seed: int = 0, max_scale: float = 8.0) -> torch.Tensor:
    """``n`` random crops of the training photos, ``(n, 3, size, size)`` float32 in [0, 1].

    Crops are spread evenly over the training photos, with scale jitter (see the module docstring) and a
    horizontal flip with probability 1/2, then shuffled. Deterministic in ``seed``.
    """
    if size < 1 or n < 1:
        raise ValueError(f"training_crops: size and n must be positive, got size={size}, n={n}")
    rng = np.random.default_rng(seed)
    train = photos("train")
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    i = 0
    for photo, count in zip(train, _per_photo_counts(n, len(train))):
        img = load_photo(photo)
        for left, top, side in _boxes(rng, img.shape[:2], size, count, max_scale):
            crop = _cut(img, left, top, side, size)
            out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
            i += 1
    out = out[rng.permutation(n)]
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)


def _is_complete(out: Path, meta: dict) -> bool:
    try:
        if json.loads((out / _META).read_text()) != meta:
            return False
        with open(out / MANIFEST, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, ValueError):
        return False
    return len(rows) == meta["n"] and all((out / r["file"]).is_file() for r in rows)


def make_eval_crops(size: int = 32, n: int = 600, seed: int = 0,
                    max_scale: float = 8.0) -> tuple[np.ndarray, list[dict]]:
    """``n`` crops of the eval photos in memory: ``(n, size, size, 3)`` uint8 and one manifest row per crop."""
    if size < 1 or n < 1:
        raise ValueError(f"eval crops: size and n must be positive, got size={size}, n={n}")
    rng = np.random.default_rng(seed)
    crops, rows = [], []
    for photo, count in zip(photos("eval"), _per_photo_counts(n, len(photos("eval")))):
        img = load_photo(photo)
        for left, top, side in _boxes(rng, img.shape[:2], size, count, max_scale):
            crops.append(_cut(img, left, top, side, size))
            rows.append({"file": f"real_{len(rows):05d}_{photo.name}.png", "photo": photo.name,
                         "left": int(left), "top": int(top), "right": int(left + side),
                         "bottom": int(top + side), "scale": round(side / size, 4)})
    return np.stack(crops), rows


def build_eval_set(out_dir: str | os.PathLike, size: int = 32, n: int = 600, seed: int = 0,
                   max_scale: float = 8.0) -> Path:
    """Write ``n`` evaluation crops (8-bit RGB PNG) of the eval photos and ``manifest.csv``; return the folder.

    Idempotent: a folder that already holds a complete set made with the same arguments is left untouched.
    The manifest is written last (atomically), so an interrupted build is detected and redone.
    """
    out = Path(out_dir)
    meta = {"size": size, "n": n, "seed": seed, "max_scale": max_scale,
            "photos": [p.name for p in photos("eval")]}
    if _is_complete(out, meta):
        return out
    crops, rows = make_eval_crops(size, n, seed, max_scale)
    out.mkdir(parents=True, exist_ok=True)
    for crop, row in zip(crops, rows):
        atomic.write(out / row["file"], lambda tmp, crop=crop: Image.fromarray(crop).save(tmp, format="PNG"))
    manifest = io.StringIO(newline="")
    writer = csv.DictWriter(manifest, fieldnames=MANIFEST_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(out / _META, json.dumps(meta, indent=1))
    atomic.write_text(out / MANIFEST, manifest.getvalue())
    return out


def read_manifest(eval_dir: str | os.PathLike) -> list[dict]:
    """The rows of an evaluation set's ``manifest.csv`` (as strings, in file order)."""
    path = Path(eval_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; build the set with data_gen.real_images.build_eval_set")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def eval_crops(eval_dir: str | os.PathLike) -> torch.Tensor:
    """All crops of a built evaluation set, ``(N, 3, size, size)`` float32 in [0, 1], in manifest order."""
    rows = read_manifest(eval_dir)
    arrays = [np.asarray(Image.open(Path(eval_dir) / r["file"]).convert("RGB")) for r in rows]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)


def licence_table() -> str:
    """The photo table as Markdown (name, package, file, licence, credit, split)."""
    from latenttracer.tables import markdown_table

    return markdown_table([[p.name, p.package, p.file, p.licence, p.credit, p.split] for p in PHOTOS],
                          ["photo", "package", "file", "licence", "credit", "split"])


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m data_gen.real_images",
                                     description="Write the real evaluation crops (PNG + manifest.csv).")
    parser.add_argument("--out", default="data/real", help="output folder (default data/real)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--licences", action="store_true", help="print the photo table (Markdown) and exit")
    args = parser.parse_args(argv)
    if args.licences:
        print(licence_table())
        return 0
    out = build_eval_set(args.out, size=args.size, n=args.n, seed=args.seed)
    print(f"{out}: {len(read_manifest(out))} crops of {', '.join(p.name for p in photos('eval'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
