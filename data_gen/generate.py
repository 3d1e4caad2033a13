"""Generate image sets from source models: ``<output>/<model>/00000.png ...`` plus a manifest.

Two kinds of source go through the same :func:`generate_set`:

* ``zoo``: an unconditional diffusers pipeline directory (the project's zoo members, ``LDMPipeline``), called as
  ``pipe(batch_size=B, generator=[...], output_type="np", **pipeline_kwargs)``;
* ``hub``: a text-to-image pipeline by hub id or local directory (SD 1.5, SD 2-base, SD 2.1, SDXL, Kandinsky 2.1,
  VQ-Diffusion), called with one prompt per image, taken in turn from a prompt list;
* ``prior``: an autoencoder whose family has a prior (:meth:`~latenttracer.autoencoders.Autoencoder.sample_prior`,
  e.g. the ``disvae`` VAEs of ``models/disvae-celeba/``): image ``i`` decodes ``z_i`` drawn from the prior with a
  generator seeded ``seed + i``. Never ``auto``: a model config says ``pipeline: prior``.

Image ``i`` is made from its own ``torch.Generator`` seeded with ``seed + i`` (and prompt ``i mod len(prompts)``),
so it is the same whatever the batch size and whichever images already exist. A set directory holds:

* ``NNNNN.png``: 8-bit RGB, ``round(clip(x, 0, 1) * 255)``, each written atomically (:mod:`latenttracer.atomic`);
* ``manifest.csv``: one row per image (:data:`MANIFEST_COLUMNS`), rewritten atomically after every batch;
* ``set.json``: the generation config (model name, a fingerprint of a local source's weights, pipeline, seed, dtype,
  resolution, pipeline arguments, prompts). A later call with the same config resumes or extends the set (only
  missing images are made); one with a different config is refused, naming the differing keys, while the set holds
  images. ``overwrite=True`` starts the set afresh.

Suites call it through :mod:`data_gen.sets` (the one place where settings become arguments); the Hydra entry point
is ``python -m experiments.generate model=kl-a`` (``conf/generate.yaml``).
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import io
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latenttracer import atomic
from latenttracer.autoencoders import content_fingerprint, resolve_device, resolve_dtype

log = logging.getLogger(__name__)

SET_FILE = "set.json"
MANIFEST_FILE = "manifest.csv"
MANIFEST_COLUMNS = ("file", "model", "source", "seed", "prompt", "pipeline_args", "width", "height")
DEFAULT_PROMPTS_FILE = Path(__file__).with_name("prompts.txt")
PIPELINES = ("auto", "zoo", "hub", "prior")

_IMAGE_NAME = re.compile(r"^(\d{5,})\.png$")
_WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".txt", ".model")  # .pth: taesd
# model_index.json classes that are decoder halves; AutoPipelineForText2Image loads them with their prior.
_COMBINED = {"KandinskyPipeline": "KandinskyCombinedPipeline", "KandinskyV22Pipeline": "KandinskyV22CombinedPipeline"}
# Loading arguments that switch off post-processing which alters images (the safety checker blacks out flagged
# images; SDXL's invisible watermark perturbs pixels). Each is passed only where the pipeline's __init__ takes it.
_NO_POSTPROCESSING = {"safety_checker": None, "requires_safety_checker": False, "add_watermarker": False}
# Pipelines whose samplers take a single generator, so they are called one image at a time.
_ONE_IMAGE_PER_CALL = ("VQDiffusionPipeline",)


# ----------------------------------------------------------------------------------------------------------------
# Loading


def pipeline_class_name(source: str) -> str:
    """The ``_class_name`` in ``source``'s ``model_index.json`` (local directory or hub id; reads no weights)."""
    from diffusers import DiffusionPipeline

    try:
        config = DiffusionPipeline.load_config(str(source))
    except Exception as exc:  # missing file, unknown repo, offline without a cached copy
        raise ValueError(
            f"source {source!r}: cannot read its model_index.json ({exc}). Give a diffusers pipeline directory or "
            "a hub id whose files are cached (set `source` to a local directory when offline)."
        ) from exc
    if "_class_name" not in config:
        raise ValueError(f"source {source!r}: model_index.json has no `_class_name`")
    return str(config["_class_name"])


def pipeline_class(class_name: str) -> type:
    """The diffusers class that :func:`load_generation_pipeline` builds for a ``model_index.json`` class name."""
    import diffusers

    name = _COMBINED.get(class_name, class_name)
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ValueError(f"pipeline class {class_name!r} (model_index.json `_class_name`) is not in diffusers "
                         f"{diffusers.__version__}")
    return cls


def takes_prompt(cls: type) -> bool:
    """Whether the pipeline class is text-conditioned (its ``__call__`` has a ``prompt`` argument)."""
    return "prompt" in inspect.signature(cls.__call__).parameters


def resolve_pipeline(pipeline: str, cls: type, source: str) -> str:
    """``auto`` -> ``hub`` for text-conditioned pipelines, ``zoo`` for unconditional ones; checks explicit kinds."""
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline: unknown value {pipeline!r}; expected one of {list(PIPELINES)}")
    if pipeline == "prior":
        raise ValueError(f"pipeline='prior' but source {source!r} is a diffusers {cls.__name__}; 'prior' is for "
                         "an autoencoder folder whose family has a prior")
    actual = "hub" if takes_prompt(cls) else "zoo"
    if pipeline != "auto" and pipeline != actual:
        what = "text-conditioned" if actual == "hub" else "unconditional"
        raise ValueError(f"pipeline={pipeline!r} but source {source!r} is a {what} {cls.__name__} "
                         f"(pipeline {actual!r})")
    return actual


def generation_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``float32`` anywhere; half precision (``float16``/``bfloat16``) only on a CUDA device."""
    torch_dtype = resolve_dtype(dtype)
    if torch_dtype == torch.float32:
        return torch_dtype
    if torch_dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype={dtype!r}: generation runs in float32, or float16/bfloat16 on CUDA")
    if device.type != "cuda":
        raise ValueError(f"dtype={dtype!r} needs a CUDA device, but device is {device.type!r}; "
                         "use dtype=float32 on this device")
    return torch_dtype


def _load_vq_diffusion(source: str, torch_dtype: torch.dtype):
    """Assemble a VQ-Diffusion pipeline component by component.

    diffusers 0.42 still ships ``VQDiffusionPipeline`` (deprecated), but ``from_pretrained`` cannot resolve its
    ``learned_classifier_free_sampling_embeddings`` component (the class is no longer exported at the top level),
    so each component is loaded from its subfolder and the pipeline is built directly.
    """
    from diffusers import Transformer2DModel, VQDiffusionPipeline, VQDiffusionScheduler, VQModel
    from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import (
        LearnedClassifierFreeSamplingEmbeddings,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    def part(cls, folder, **kw):
        return cls.from_pretrained(source, subfolder=folder, **kw)

    return VQDiffusionPipeline(
        vqvae=part(VQModel, "vqvae", dtype=torch_dtype),
        text_encoder=part(CLIPTextModel, "text_encoder", dtype=torch_dtype),
        tokenizer=part(CLIPTokenizer, "tokenizer"),
        transformer=part(Transformer2DModel, "transformer", dtype=torch_dtype),
        learned_classifier_free_sampling_embeddings=part(
            LearnedClassifierFreeSamplingEmbeddings, "learned_classifier_free_sampling_embeddings",
            dtype=torch_dtype),
        scheduler=part(VQDiffusionScheduler, "scheduler"),
    )


def load_generation_pipeline(source: str, pipeline: str = "auto", dtype: str = "float32", device: str = "auto"):
    """Load the pipeline at ``source`` (local directory or hub id) ready to generate, on ``device``.

    The safety checker and SDXL's invisible watermarker are switched off at load time (where the pipeline has
    them); Kandinsky 2.1/2.2 decoders are loaded with their prior through ``AutoPipelineForText2Image``;
    VQ-Diffusion is assembled from its components (see :func:`_load_vq_diffusion`). Half precision needs CUDA.
    """
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    from data_gen.zoo.members import known_vqvae_type_quiet

    torch_device = resolve_device(device)
    torch_dtype = generation_dtype(dtype, torch_device)
    class_name = pipeline_class_name(source)
    cls = pipeline_class(class_name)
    resolve_pipeline(pipeline, cls, source)
    if class_name == "VQDiffusionPipeline":
        pipe = _load_vq_diffusion(source, torch_dtype)
    else:
        init = inspect.signature(cls.__init__).parameters
        switches = {k: v for k, v in _NO_POSTPROCESSING.items() if k in init}
        loader = AutoPipelineForText2Image if class_name in _COMBINED else DiffusionPipeline
        with known_vqvae_type_quiet():  # zoo members keep KL/Tiny autoencoders in LDMPipeline's `vqvae`
            pipe = loader.from_pretrained(str(source), dtype=torch_dtype, **switches)
    pipe = pipe.to(torch_device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------------------------------------------
# Prompts, files


def read_prompts(path: str | Path | None = None) -> list[str]:
    """Prompts from a text file, one a line; blank lines and ``#`` comments are skipped (default: prompts.txt)."""
    path = Path(path) if path else DEFAULT_PROMPTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"prompts_file {str(path)!r} does not exist")
    prompts = [s.strip() for s in path.read_text(encoding="utf-8").splitlines()]
    prompts = [s for s in prompts if s and not s.startswith("#")]
    if not prompts:
        raise ValueError(f"prompts_file {str(path)!r} holds no prompts")
    return prompts


def image_name(index: int) -> str:
    return f"{index:05d}.png"


def to_uint8(image: Any) -> np.ndarray:
    """An (H, W, 3) image in [0, 1] (float array/tensor) -> uint8 by ``round(clip(x, 0, 1) * 255)``."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array
    return np.round(np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def _png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return buf.getvalue()


def _existing_images(model_dir: Path) -> dict[int, Path]:
    found = {}
    for p in model_dir.iterdir() if model_dir.is_dir() else ():
        m = _IMAGE_NAME.match(p.name)
        if m and p.is_file():
            found[int(m.group(1))] = p
    return found


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        return im.size


def _write_manifest(model_dir: Path, rows: dict[int, dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for i in sorted(rows):
        writer.writerow(rows[i])
    atomic.write_text(model_dir / MANIFEST_FILE, buf.getvalue())


# ----------------------------------------------------------------------------------------------------------------
# The set


def _call_kwargs(cls: type, pipeline_kwargs: dict, resolution: int | None) -> dict:
    """``pipeline_kwargs`` checked against the pipeline's ``__call__``, plus height/width from ``resolution``."""
    params = inspect.signature(cls.__call__).parameters
    reserved = {"prompt", "generator", "batch_size", "output_type", "return_dict", "num_images_per_prompt"}
    for key in pipeline_kwargs:
        if key in reserved:
            raise ValueError(f"pipeline_kwargs: {key!r} is set by the generator itself; remove it")
        if key not in params:  # a **kwargs catch-all would silently ignore it
            raise ValueError(f"pipeline_kwargs: {key!r} is not an argument of {cls.__name__}.__call__ "
                             f"(known: {sorted(k for k in params if k != 'self')})")
    kwargs = dict(pipeline_kwargs)
    if resolution is not None and "height" in params and "width" in params:
        kwargs.setdefault("height", int(resolution))
        kwargs.setdefault("width", int(resolution))
    return kwargs


def connected_prior(source: str) -> str | None:
    """The prior pipeline a Kandinsky decoder directory names in its ``README.md`` (``prior:`` entry), as
    ``AutoPipelineForText2Image`` finds it; None for other sources or without such an entry."""
    root = Path(source)
    readme = root / "README.md"
    if not (root / "model_index.json").is_file() or not readme.is_file():
        return None
    if json.loads((root / "model_index.json").read_text()).get("_class_name") not in _COMBINED:
        return None
    from huggingface_hub import ModelCard

    priors = getattr(ModelCard.load(str(readme)).data, "prior", None) or [None]
    return None if priors[0] is None else str(priors[0])


def _directory_fingerprint(root: Path) -> str:
    return content_fingerprint([p for p in root.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES], root)


def weights_fingerprint(source: str) -> str | None:
    """sha256 (16 hex digits) over a local pipeline directory's weight, config and tokenizer files, by relative
    path and content; None for a hub id. Path-independent: a moved checkout keeps its sets, a retrained model
    at the same path does not.

    A Kandinsky decoder is generated with the prior its README names (:func:`connected_prior`), so the prior
    enters too: its files' fingerprint when it is a local directory, else its hub id.
    """
    root = Path(source)
    if not root.is_dir():
        return None
    own = _directory_fingerprint(root)
    prior = connected_prior(source)
    if prior is None:
        return own
    prior_part = _directory_fingerprint(Path(prior)) if Path(prior).is_dir() else f"hub:{prior}"
    return hashlib.sha256(f"{own}\0prior:{prior_part}".encode()).hexdigest()[:16]


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _config_diff(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k, "<absent>") != new.get(k, "<absent>"))


def _prepare_dir(model_dir: Path, config: dict, overwrite: bool) -> dict | None:
    """Check ``model_dir`` against ``config``; return the stored set record to resume, or None for a fresh set.

    A fresh set starts from an empty directory: with ``overwrite``, this module's files there are removed first.
    """
    set_path = model_dir / SET_FILE
    atomic.remove_stale(model_dir)
    images = _existing_images(model_dir)
    if not overwrite:
        if set_path.is_file():
            record = json.loads(set_path.read_text(encoding="utf-8"))
            old = record.get("config", {})
            differing = _config_diff(old, config)
            if not differing:
                return record
            if images:
                shown = "; ".join(f"{k}: {old.get(k, '<absent>')!r} -> {config.get(k, '<absent>')!r}"
                                  for k in differing if k != "prompts")
                if "prompts" in differing:
                    shown = "; ".join(s for s in (shown, "prompts: the list differs") if s)
                raise FileExistsError(
                    f"{model_dir} holds a set ({len(images)} images) made with a different config; differing keys: "
                    f"{differing} ({shown}). Pass overwrite=True to replace it, or choose another output directory.")
        elif images:
            raise FileExistsError(f"{model_dir} holds {len(images)} images but no {SET_FILE}, so their config is "
                                  "unknown; pass overwrite=True to replace them, or choose another output directory.")
    for p in images.values():  # only this module's files: NNNNN.png, manifest.csv, set.json
        p.unlink()
    for name in (MANIFEST_FILE, SET_FILE):
        (model_dir / name).unlink(missing_ok=True)
    return None


def _generate_batch(pipe, cls: type, indices: Sequence[int], seed: int, prompts: list[str] | None,
                    call_kwargs: dict) -> list[np.ndarray]:
    """Images for ``indices``; image i from its own generator seeded ``seed + i`` (and prompt i mod len)."""
    if cls.__name__ in _ONE_IMAGE_PER_CALL:  # its sampler draws from one generator on the pipeline's device
        out = []
        for i in indices:
            g = torch.Generator(device=pipe.device).manual_seed(seed + i)
            result = pipe(prompt=prompts[i % len(prompts)], generator=g, output_type="np", **call_kwargs)
            out.append(np.asarray(result.images)[0])
        return out
    # CPU generators: the initial noise does not depend on the device (diffusers moves it).
    generators = [torch.Generator(device="cpu").manual_seed(seed + i) for i in indices]
    if prompts is None:
        result = pipe(batch_size=len(indices), generator=generators, output_type="np", **call_kwargs)
    else:
        batch_prompts = [prompts[i % len(prompts)] for i in indices]
        result = pipe(prompt=batch_prompts, generator=generators, output_type="np", **call_kwargs)
    images = result.images
    return [np.asarray(images[k]) for k in range(len(indices))]


def load_prior_model(source: str, *, device: str = "auto", dtype: str = "float32", resolution: int | None = None):
    """The autoencoder at ``source`` for pipeline ``prior``: loaded by its family, which must have a prior."""
    from latenttracer.autoencoders import load_autoencoder

    ae = load_autoencoder(source, resolution=resolution, device=resolve_device(device),
                          dtype=generation_dtype(dtype, resolve_device(device)))
    if not ae.has_prior:
        raise ValueError(f"pipeline='prior' but source {source!r} is a {ae.family!r} autoencoder, whose family has "
                         "no prior (sample_prior) to generate from")
    return ae


@torch.no_grad()
def _sample_prior_batch(ae, indices: Sequence[int], seed: int) -> list[np.ndarray]:
    """Images for ``indices``: image i decodes the prior sample drawn from a CPU generator seeded ``seed + i``."""
    z = ae.sample_prior([torch.Generator(device="cpu").manual_seed(seed + i) for i in indices])
    images = ae.decode(z).permute(0, 2, 3, 1).float().cpu().numpy()
    return [images[k] for k in range(len(indices))]


def generate_set(
    source: str,
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    batch_size: int = 8,
    model_name: str | None = None,
    pipeline: str = "auto",
    prompts: Sequence[str] | None = None,
    pipeline_kwargs: dict | None = None,
    device: str = "auto",
    dtype: str = "float32",
    resolution: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Make (or resume, or extend) the set of ``n`` images from ``source`` in ``out_dir/<model_name>/``.

    Args:
        source: a diffusers pipeline directory or hub id, or (``pipeline="prior"``) an autoencoder folder whose
            family has a prior.
        out_dir: the parent of the set directory; the set goes to ``out_dir/<model_name>``.
        n: images wanted; existing images ``< n`` are kept, missing ones are generated.
        seed: base seed; image ``i`` uses ``seed + i``.
        batch_size: images per pipeline call (does not change the images).
        model_name: the set's name (default: the last part of ``source``).
        pipeline: ``zoo`` (unconditional), ``hub`` (text-to-image, needs ``prompts``), ``prior`` (an autoencoder
            with a prior: image i decodes a prior sample seeded ``seed + i``) or ``auto`` (from the pipeline
            class; with ``auto``, prompts are ignored for an unconditional pipeline).
        prompts: prompt list for text-to-image sources; image ``i`` gets ``prompts[i % len(prompts)]``.
        pipeline_kwargs: extra ``__call__`` arguments (e.g. ``num_inference_steps``, ``guidance_scale``).
        device: ``auto``, ``cpu``, ``cuda``, ...
        dtype: ``float32``; ``float16`` only on CUDA.
        resolution: image side to ask for (passed as height/width where the pipeline takes them) and to check;
            None: the pipeline's default.
        overwrite: start the set afresh (delete its images first), whatever it holds; without it, a set made with
            a different config (or of unknown config) is refused.
        progress: show a progress bar.

    Returns:
        The set directory.
    """
    if n < 0 or batch_size < 1:
        raise ValueError(f"n must be >= 0 and batch_size >= 1 (got n={n}, batch_size={batch_size})")
    source = str(source)
    name = model_name or Path(source.rstrip("/")).name
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"model_name {name!r} is not a usable directory name")
    generation_dtype(dtype, resolve_device(device))  # fail before touching anything
    prior_model = None
    if pipeline == "prior":
        prior_model = load_prior_model(source, device=device, dtype=dtype, resolution=resolution)
        if prompts is not None:
            raise ValueError(f"prompts given, but source {source!r} is sampled from its prior (pipeline 'prior')")
        if pipeline_kwargs:
            raise ValueError(f"pipeline_kwargs: {sorted(pipeline_kwargs)} given, but pipeline 'prior' takes none "
                             f"(source {source!r}); remove them")
        cls, resolved_pipeline = type(prior_model), "prior"
    else:
        cls = pipeline_class(pipeline_class_name(source))
        resolved_pipeline = resolve_pipeline(pipeline, cls, source)
    if resolved_pipeline == "zoo" and prompts is not None:
        if pipeline != "auto":
            raise ValueError(f"prompts given, but source {source!r} is unconditional (pipeline 'zoo')")
        prompts = None
    if resolved_pipeline == "hub":
        if not prompts:
            raise ValueError(f"source {source!r} is a text-to-image {cls.__name__}: give prompts (prompts_file)")
        prompts = [str(p) for p in prompts]
    call_kwargs = {} if prior_model is not None else _call_kwargs(cls, dict(pipeline_kwargs or {}), resolution)
    weights = prior_model.fingerprint if prior_model is not None else weights_fingerprint(source)

    config = {"model": name, "weights": weights, "kind": resolved_pipeline, "seed": int(seed),
              "dtype": str(dtype), "resolution": None if resolution is None else int(resolution),
              "pipeline_kwargs": call_kwargs, "prompts": prompts}
    config = json.loads(json.dumps(config))  # as set.json will hold it (tuples -> lists), so that equal compares equal
    model_dir = Path(out_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    record = _prepare_dir(model_dir, config, overwrite)
    record = {"config": config, "n": max(int(n), int((record or {}).get("n", 0))), "source": source,
              "pipeline_class": cls.__name__,
              "versions": {"diffusers": _diffusers_version(), "torch": torch.__version__}}
    atomic.write_text(model_dir / SET_FILE, json.dumps(record, indent=2) + "\n")

    args_json = json.dumps(call_kwargs, sort_keys=True)

    def row(i: int, width: int, height: int) -> dict:
        return {"file": image_name(i), "model": name, "source": source, "seed": seed + i,
                "prompt": "" if prompts is None else prompts[i % len(prompts)], "pipeline_args": args_json,
                "width": width, "height": height}

    rows = {i: row(i, *_image_size(p)) for i, p in _existing_images(model_dir).items()}
    missing = [i for i in range(n) if i not in rows]
    _write_manifest(model_dir, rows)
    if not missing:
        log.info("%s: all %d images present, nothing to generate", model_dir, n)
        return model_dir
    log.info("%s: generating %d of %d images (%d present)", model_dir, len(missing), n, n - len(missing))

    from tqdm.auto import tqdm

    want = (call_kwargs.get("height", resolution), call_kwargs.get("width", resolution))
    if prior_model is None:
        pipe = load_generation_pipeline(source, pipeline=resolved_pipeline, dtype=dtype, device=device)
    with tqdm(total=len(missing), desc=name, unit="img", disable=not progress) as bar:
        for start in range(0, len(missing), batch_size):
            indices = missing[start:start + batch_size]
            made = (_sample_prior_batch(prior_model, indices, seed) if prior_model is not None
                    else _generate_batch(pipe, cls, indices, seed, prompts, call_kwargs))
            images = [to_uint8(im) for im in made]
            for i, pixels in zip(indices, images):
                if pixels.ndim != 3 or pixels.shape[2] != 3:
                    raise ValueError(f"{cls.__name__} returned an image of shape {pixels.shape}; expected (H, W, 3)")
                height, width = pixels.shape[:2]
                if None not in want and (height, width) != tuple(want):
                    raise ValueError(f"{cls.__name__} made {height}x{width} images but resolution asks for "
                                     f"{want[0]}x{want[1]}; fix `resolution` (null: the model's own)")
                atomic.write_bytes(model_dir / image_name(i), _png_bytes(pixels))
                rows[i] = row(i, width, height)
            _write_manifest(model_dir, rows)
            bar.update(len(indices))
    return model_dir
