"""The image sets of a suite, as path lists: each model's generated set and the real set, made if missing.

This is the one place where generation settings become :func:`data_gen.generate.generate_set` arguments; the
generation entry point (``experiments/generate.py``), ``invert``, ``table1`` and ``ablations`` all go through
:func:`generated_set` / :func:`generate`, so a set is always made the same way whichever command makes it.

Where a set lives: ``<dir>/<model>/`` for the default seed 0 and ``<dir>/seed<k>/<model>/`` for seed ``k`` != 0
(:meth:`GenerationSettings.set_root`), so sets of different seeds sit side by side.
Other settings (prompts, pipeline arguments, dtype, resolution, weights)
are recorded in the set's ``set.json``; a different value there is refused by ``generate_set``, naming the key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_gen.generate import generate_set, image_name, read_prompts
from latenttracer.images import list_images
from latenttracer.locks import locked
from latenttracer.protocol import subset
from latenttracer.settings import from_mapping

__all__ = ["CropSettings", "GenerationSettings", "ModelSpec", "RealSettings", "generate", "generated_set",
           "real_set"]

log = logging.getLogger(__name__)
DEFAULT_SEED = 0


@dataclass(frozen=True)
class ModelSpec:
    """One model of a suite (``conf/model/*.yaml``): where it is and how it generates."""

    name: str
    weights: str
    pipeline: str = "auto"                 # zoo (unconditional) | hub (text-to-image) | prior | auto
    resolution: int | None = None        # None: the model's own
    dtype: str = "float32"
    generation: Mapping[str, Any] = field(default_factory=dict)   # extra pipeline __call__ arguments

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelSpec:
        values = dict(values)
        values["generation"] = dict(values.get("generation") or {})
        return from_mapping(cls, values, f"model {values.get('name')!r}")


@dataclass(frozen=True)
class GenerationSettings:
    """How each model's own set is made (``suite.generated``): image i of a set uses seed ``seed + i``."""

    dir: str | Path
    n: int
    seed: int = DEFAULT_SEED
    batch_size: int = 8                  # images per pipeline call; does not change the images
    prompts_file: str | None = None      # text-to-image models only; None: data_gen/prompts.txt

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GenerationSettings:
        return from_mapping(cls, values, "suite.generated")

    @property
    def set_root(self) -> Path:
        """The parent of every model's set: ``dir`` for seed 0, ``dir/seed<k>`` for another seed."""
        return Path(self.dir) if int(self.seed) == DEFAULT_SEED else Path(self.dir) / f"seed{int(self.seed)}"

    def set_dir(self, model: str) -> Path:
        return self.set_root / model


@dataclass(frozen=True)
class CropSettings:
    n: int = 600
    size: int = 32
    seed: int = 0


@dataclass(frozen=True)
class RealSettings:
    """The real (non-belonging) images (``suite.real``): a seeded subset of ``n`` of them."""

    origin: str                            # crops (of the shipped evaluation photos) | folder (any photos)
    dir: str | Path
    n: int
    seed: int = 0
    crops: CropSettings = CropSettings()  # origin=crops only: how the crop set is built

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RealSettings:
        values = dict(values)
        values["crops"] = from_mapping(CropSettings, values.get("crops") or {}, "suite.real.crops")
        return from_mapping(cls, values, "suite.real")


def generate(model: ModelSpec, gen: GenerationSettings, *, device: str = "auto", overwrite: bool = False,
             progress: bool = True) -> Path:
    """Make (resume, extend) ``model``'s set as ``gen`` says, under a lock; returns the set directory."""
    pipeline = str(model.pipeline)
    with locked(gen.set_root / f".{model.name}.lock"):
        return generate_set(
            source=str(model.weights), out_dir=gen.set_root, n=int(gen.n), seed=int(gen.seed),
            batch_size=int(gen.batch_size), model_name=model.name, pipeline=pipeline,
            prompts=None if pipeline in ("zoo", "prior") else read_prompts(gen.prompts_file),
            pipeline_kwargs=dict(model.generation), device=str(device), dtype=str(model.dtype),
            resolution=model.resolution, overwrite=overwrite, progress=progress)


def generated_set(model: ModelSpec, gen: GenerationSettings, *, device: str = "auto",
                  progress: bool = True) -> list[Path]:
    """The first ``gen.n`` images of ``model``'s set, generating what is missing.

    Local weights are always checked by :func:`data_gen.generate.generate_set` (it refuses a set made from other
    weights or settings); a hub model whose images are all present is used as is (no hub access needed).
    """
    set_dir = gen.set_dir(model.name)
    files = [set_dir / image_name(i) for i in range(int(gen.n))]
    if Path(str(model.weights)).is_dir() or not all(f.is_file() for f in files):
        generate(model, gen, device=device, progress=progress)
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{set_dir}: {len(missing)} of {int(gen.n)} images missing after generation (first: {missing[0]})")
    return files


def real_set(real: RealSettings) -> list[Path]:
    """The real (non-belonging) images: ``real.n`` of them, a seeded subset (built first for ``origin=crops``)."""
    folder = Path(real.dir)
    if real.origin == "crops":
        from data_gen.real_images import build_eval_set, read_manifest

        with locked(folder.with_name(f".{folder.name}.lock")):
            build_eval_set(folder, size=int(real.crops.size), n=int(real.crops.n), seed=int(real.crops.seed))
            paths = [folder / row["file"] for row in read_manifest(folder)]
    elif real.origin == "folder":
        if not folder.is_dir():
            raise FileNotFoundError(f"suite.real.dir: {folder} does not exist; put real photos there "
                                    f"(at least suite.real.n={int(real.n)}) or point suite.real.dir elsewhere")
        paths = list_images(folder, recursive=True)
    else:
        raise ValueError(f"suite.real.origin: {real.origin!r} is not one of ['crops', 'folder']")
    if len(paths) < int(real.n):
        log.warning("real set %s holds %d images, fewer than suite.real.n=%d", folder, len(paths), int(real.n))
    return subset(paths, int(real.n), int(real.seed))
