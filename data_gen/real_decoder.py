"""The real-decoder suite's image sets: decodes of a real decoder (belonging) and real crops (non-belonging).

One pool of crops of the **evaluation** photos (:func:`data_gen.real_images.make_eval_crops`, at the decoders'
resolution) is cut into three disjoint parts by a seeded permutation:

* ``reconstruction`` crops: each is encoded by the base autoencoder's (frozen) encoder and decoded;
* ``interpolation`` pairs: two crops' latents mixed as ``(1 - t) z_a + t z_b`` with ``t`` drawn uniformly in
  ``t_range`` (a latent no photo maps to), then decoded;
* ``real`` crops: the non-belonging real images. A crop whose latent made a belonging image is never one of them.

Every decoder of ``decoders`` (the base and its fine-tuned siblings) decodes **the same latents**, so image i
of every model's set comes from the same latent (as kl-a and kl-a-ft share their prior noise in Table 1).
Images are saved as 8-bit RGB PNGs (``<dir>/<model>/NNNNN.png``, ``<dir>/real/NNNNN.png``); each set folder
has a ``manifest.csv`` describing every file: set, role, the crop(s) it came from (pool index, photo and box in
source pixels), ``t``, and the decoder's weights fingerprint. A folder already holding a complete set built with
the same settings and weights is reused as it is.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from data_gen import real_images
from latenttracer import atomic
from latenttracer.autoencoders import Autoencoder
from latenttracer.settings import from_mapping

__all__ = ["MANIFEST", "MANIFEST_COLUMNS", "REAL", "DecodedSetSettings", "build_sets", "plan", "read_manifest"]

MANIFEST = "manifest.csv"
META = "sets.json"
REAL = "real"
MANIFEST_COLUMNS = ("file", "set", "index", "role", "t", "crop_a", "photo_a", "box_a", "crop_b", "photo_b",
                    "box_b", "fingerprint")
SETS_VERSION = 1


@dataclass(frozen=True)
class DecodedSetSettings:
    """Sizes and draws of the sets (the one definition of these settings; configs override them by key)."""

    resolution: int = 64
    n: int = 16                           # belonging images per decoder (reconstructions + interpolations)
    n_real: int = 8                       # real crops (non-belonging)
    interpolation_fraction: float = 0.5   # share of the n belonging images that are interpolations
    t_range: tuple[float, float] = (0.25, 0.75)
    seed: int = 0                         # the crop pool, the role permutation and the t draws
    max_scale: float = 8.0                # crop boxes: up to max_scale x resolution source pixels

    def __post_init__(self) -> None:
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"sets.resolution: must be a positive multiple of 8, got {self.resolution}")
        if self.n < 2 or self.n_real < 1:
            raise ValueError(f"sets: need n >= 2 belonging and n_real >= 1 real images, got n={self.n}, "
                             f"n_real={self.n_real}")
        if not 0.0 <= self.interpolation_fraction <= 1.0:
            raise ValueError(f"sets.interpolation_fraction: must be in [0, 1], got {self.interpolation_fraction}")
        lo, hi = (float(v) for v in self.t_range)
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"sets.t_range: need 0 < low <= high < 1, got {list(self.t_range)}")
        object.__setattr__(self, "t_range", (lo, hi))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> DecodedSetSettings:
        values = dict(values or {})
        converted = {"t_range": tuple(values["t_range"])} if "t_range" in values else {}
        return from_mapping(cls, values, "sets", **converted)

    @property
    def n_interpolations(self) -> int:
        return int(round(self.n * self.interpolation_fraction))

    @property
    def n_reconstructions(self) -> int:
        return self.n - self.n_interpolations

    @property
    def pool_size(self) -> int:
        return self.n_reconstructions + 2 * self.n_interpolations + self.n_real


def plan(settings: DecodedSetSettings) -> tuple[np.ndarray, list[dict], list[dict]]:
    """The crop pool and what each belonging / real image is made of.

    Returns ``(crops (P, S, S, 3) uint8, belonging, real)``: ``belonging[i]`` = ``{"role", "crops": [pool
    indices], "t"}`` for image i of every decoder's set (reconstructions first, then interpolations);
    ``real[j]`` = ``{"crops": [pool index]}``. The three parts of the pool are disjoint.
    """
    crops, rows = real_images.make_eval_crops(settings.resolution, settings.pool_size, settings.seed,
                                              settings.max_scale)
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(len(crops)).tolist()
    n_rec, n_int = settings.n_reconstructions, settings.n_interpolations
    rec, pairs, real = order[:n_rec], order[n_rec:n_rec + 2 * n_int], order[n_rec + 2 * n_int:]
    ts = rng.uniform(*settings.t_range, size=n_int)
    belonging = [{"role": "reconstruction", "crops": [i], "t": 0.0} for i in rec]
    belonging += [{"role": "interpolation", "crops": [pairs[2 * k], pairs[2 * k + 1]], "t": float(ts[k])}
                  for k in range(n_int)]
    for item in [*belonging, *({"crops": [i]} for i in real)]:
        item["rows"] = [rows[i] for i in item["crops"]]
    return crops, belonging, [{"crops": [i], "rows": [rows[i]]} for i in real]


def _latents(encoder: Autoencoder, crops01: torch.Tensor, belonging: list[dict]) -> torch.Tensor:
    with torch.no_grad():
        z = torch.cat([encoder.encode(crops01[i:i + 32]) for i in range(0, len(crops01), 32)]).float()
    out = []
    for item in belonging:
        if item["role"] == "reconstruction":
            out.append(z[item["crops"][0]])
        else:
            a, b = item["crops"]
            out.append((1 - item["t"]) * z[a] + item["t"] * z[b])
    return torch.stack(out)


def _to_uint8(images01: torch.Tensor) -> np.ndarray:
    return (images01.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _box(row: dict) -> str:
    return f"{row['left']},{row['top']},{row['right']},{row['bottom']}"


def _manifest_row(file: str, set_name: str, index: int, role: str, t: float, crops: list[int], rows: list[dict],
                  fingerprint: str) -> dict:
    b = len(crops) > 1
    return {"file": file, "set": set_name, "index": index, "role": role, "t": round(float(t), 6),
            "crop_a": crops[0], "photo_a": rows[0]["photo"], "box_a": _box(rows[0]),
            "crop_b": crops[1] if b else "", "photo_b": rows[1]["photo"] if b else "",
            "box_b": _box(rows[1]) if b else "", "fingerprint": fingerprint}


def _complete(folder: Path, meta: dict, n: int) -> bool:
    try:
        if json.loads((folder / META).read_text()) != meta:
            return False
        rows = read_manifest(folder)
    except (OSError, ValueError):
        return False
    return len(rows) == n and all((folder.parent / r["file"]).is_file() for r in rows)


def read_manifest(set_dir: str | Path) -> list[dict]:
    """The rows of one set folder's ``manifest.csv`` (strings, in file order; ``file`` is relative to the
    folder's parent, e.g. ``taef2/00003.png``)."""
    path = Path(set_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; build the sets with data_gen.real_decoder.build_sets")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def build_sets(out_dir: str | Path, encoder: Autoencoder, decoders: Mapping[str, Autoencoder],
               settings: DecodedSetSettings = DecodedSetSettings()) -> dict[str, list[Path]]:
    """Write every decoder's belonging set and the real set under ``out_dir``; return ``{name: [paths]}``
    (the decoders' names, then ``"real"``). ``encoder`` makes the latents (the base autoencoder; siblings
    share its frozen encoder). Each set folder holds its ``manifest.csv`` and a ``sets.json`` (settings and
    weights fingerprints); a complete folder with the same record is reused, so adding a decoder later only
    writes its own set."""
    out = Path(out_dir)
    if REAL in decoders:
        raise ValueError(f"decoders: {REAL!r} is the real set's name; name the decoders otherwise")
    common = {"version": SETS_VERSION, "settings": asdict(settings), "encoder": encoder.fingerprint}
    metas = {name: json.loads(json.dumps({**common, "decoder": ae.fingerprint})) for name, ae in decoders.items()}
    metas[REAL] = json.loads(json.dumps(common))
    sizes = {**{name: settings.n for name in decoders}, REAL: settings.n_real}
    paths = {name: [out / name / f"{i:05d}.png" for i in range(sizes[name])] for name in metas}
    todo = [name for name in metas if not _complete(out / name, metas[name], sizes[name])]
    if not todo:
        return paths
    crops, belonging, real = plan(settings)
    z = None
    for name in todo:
        if name == REAL:
            arrays = [crops[item["crops"][0]] for item in real]
            rows = [_manifest_row(f"{REAL}/{paths[REAL][j].name}", REAL, j, REAL, 0.0, item["crops"], item["rows"],
                                  "") for j, item in enumerate(real)]
        else:
            if z is None:
                crops01 = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255.0)
                z = _latents(encoder, crops01, belonging)
            ae = decoders[name]
            with torch.no_grad():
                images = torch.cat([ae.decode(z[i:i + 16].to(ae.device, ae.dtype)).float()
                                    for i in range(0, len(z), 16)])
            arrays = list(_to_uint8(images))
            rows = [_manifest_row(f"{name}/{paths[name][i].name}", name, i, item["role"], item["t"], item["crops"],
                                  item["rows"], ae.fingerprint) for i, item in enumerate(belonging)]
        for path, array in zip(paths[name], arrays):
            _write_png(path, array)
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        atomic.write_text(out / name / META, json.dumps(metas[name], indent=1))
        atomic.write_text(out / name / MANIFEST, text.getvalue())
    return paths


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
