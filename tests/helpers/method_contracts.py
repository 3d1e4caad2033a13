"""Contracts every registered method passes (tests/test_methods.py and tests/test_cli.py run them for each name
in :data:`latenttracer.methods.METHODS`, so a new method is covered without editing a list).

Each contract builds the method with its cheap :meth:`~latenttracer.methods.Method.contract_options` and takes
an inspected autoencoder and a few image files (tiny random-init models, as tests/conftest.py makes them).
"""

from __future__ import annotations

import re
import typing
from dataclasses import Field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
import torch

from latenttracer.autoencoders import load_autoencoder
from latenttracer.images import ImageOptions, load_images
from latenttracer.methods import METHODS, Method, get_method
from latenttracer.methods.base import SHARED_OPTIONS
from latenttracer.tracing import score_images

__all__ = ["build", "check_bad_input", "check_batch_independence", "check_cache_identity", "check_cli_round_trip",
           "check_determinism", "scores"]


def build(name: str, **overrides: Any) -> Method:
    """The method ``name`` with its contract options (and ``overrides``)."""
    cls = METHODS.get(name)
    return get_method(name, {**cls.contract_options(), **overrides})


def scores(method: Method, ae, paths, **kwargs) -> pd.DataFrame:
    """``score_images`` without a store; every image must score."""
    frame, skipped = score_images(ae, paths, method=method, progress=False, **kwargs)
    assert not skipped
    assert (frame["status"] == "ok").all(), frame[["path", "status", "reason"]]
    return frame


def _values(frame: pd.DataFrame, method: Method) -> np.ndarray:
    return frame[["score", *method.components]].to_numpy(dtype=float)


def check_batch_independence(name: str, ae, paths: list) -> None:
    """An image scores the same alone as in a batch with others."""
    method = build(name)
    together = _values(scores(method, ae, paths, batch_size=len(paths)), method)
    for k, path in enumerate(paths):
        alone = _values(scores(method, ae, [path], batch_size=1), method)
        # 1e-4 relative, as the autoencoder contract: convolution kernels round differently at another batch size,
        # by up to a few 1e-5 on some CPUs for the distances that run a network (aeroblade) or filter (lowpass);
        # an image mixed up with its batch mates differs by far more
        np.testing.assert_allclose(alone[0], together[k], rtol=1e-4, atol=1e-8,
                                   err_msg=f"{name}: image {k} alone vs in a batch of {len(paths)}")


def check_determinism(name: str, ae, paths: list) -> None:
    """Two runs (two method objects) give identical rows."""
    first, second = build(name), build(name)
    a, b = _values(scores(first, ae, paths), first), _values(scores(second, ae, paths), second)
    assert np.array_equal(a, b), f"{name}: two runs differ: {a[:, 0]} vs {b[:, 0]}"


def check_bad_input(name: str, ae, paths: list) -> None:
    """A batch of the wrong shape, type or size is a ValueError naming the method and what is wrong."""
    method = build(name)
    method.prepare(ae)
    images, records, _ = load_images(paths[:2], ae.resolution, ImageOptions())
    r = ae.resolution
    cases = {"shape": torch.rand(2, 1, r, r), "(2, 3, ": torch.rand(2, 3, r + 8, r), "shape (N": torch.rand(3, r, r),
             "torch.Tensor": images.numpy(), "dtype": (images * 255).to(torch.uint8), "records": images[:1]}
    for words, bad in cases.items():
        with pytest.raises(ValueError, match=rf"method {name}: images.*{re.escape(words)}"):
            method.score_batch(ae, bad, records)


def _alternatives(f: Field, value: Any, tp: Any) -> list[Any]:
    """Other values of one option, for the cache-identity contract (none for free-form strings)."""
    origin = typing.get_origin(tp)
    if tp is bool:
        return [not value]
    if origin is Literal:
        return [v for v in typing.get_args(tp) if v != value]
    if tp is int and isinstance(value, int):
        return [value + 1]
    if tp is float and isinstance(value, (int, float)):
        return [value * 2 if value else 0.5]
    return []


def _resolved(method: Method, ae, paths: list) -> Method:
    """``method`` with an inversion rate in latent-RMS units (``lr_scale``) made absolute on ``paths``, which stand
    in for the model's calibration images here (the harness and ``trace --calibrate`` use the real ones)."""
    from latenttracer.inversion import InversionConfig, resolve_lr_scale

    config = getattr(method, "config", None)
    if not isinstance(config, InversionConfig) or config.lr_scale == "absolute":
        return method
    images, _, _ = load_images([str(p) for p in paths], ae.resolution)
    return type(method).from_settings(resolve_lr_scale(config, ae, images))


def check_cache_identity(name: str, ae, paths: list) -> None:
    """``run_hash`` changes with every option change that changes the scores, and not with batch size or device;
    two settings with the same key give the same scores."""
    cls = METHODS.get(name)
    options = {**cls.option_defaults(), **cls.contract_options()}
    method = build(name)
    key = method.run_hash(ae, ImageOptions())
    takes = {f.name for f in cls.option_fields()}
    for opt, value in (("batch_size", 1), ("batch_size", 5), ("batch_size", "auto"), ("device", "cpu")):
        if opt in takes:
            assert build(name, **{opt: value}).run_hash(ae, ImageOptions()) == key, f"{name}: {opt}={value!r}"
    assert method.run_hash(ae, ImageOptions(resize="authors")) != key, f"{name}: image preparation not in the key"
    baseline = _values(scores(method, ae, paths), method)
    hints = typing.get_type_hints(cls.settings_type())
    tried = changed = 0
    for f in cls.option_fields():
        if f.name in SHARED_OPTIONS:
            continue
        for alt in _alternatives(f, options[f.name], hints[f.name]):
            try:
                other = _resolved(build(name, **{f.name: alt}), ae, paths)
            except (ValueError, FileNotFoundError):  # e.g. a distance that needs weight files
                continue
            tried += 1
            other_key = other.run_hash(ae, ImageOptions())
            values = _values(scores(other, ae, paths), other)
            same = values.shape == baseline.shape and np.allclose(values, baseline, rtol=1e-6, atol=0)
            assert same or other_key != key, f"{name}: {f.name}={alt!r} changes the scores but not the cache key"
            changed += other_key != key
    if tried:
        assert changed, f"{name}: no option changes the cache key"


def check_cli_round_trip(name: str, model_dir: Path, folder: Path, out_dir: Path, resolution: int = 32) -> None:
    """``latenttracer trace --method NAME`` with the contract options as flags writes the library's scores."""
    from latenttracer.cli import main
    from latenttracer.methods.flags import method_flags

    cls = METHODS.get(name)
    flags = method_flags()
    for f in cls.option_fields():  # every option has its flag (shared ones come from --device, --dtype, ...)
        assert f.name in SHARED_OPTIONS or name in flags[f.name].defaults, f"{name}: no flag for option {f.name}"
    words = [w for key, value in cls.contract_options().items() for w in flags[key].tokens(value)]
    out = out_dir / f"{name}.csv"
    argv = ["trace", "--method", name, "--model", str(model_dir), "--images", str(folder), "--out", str(out),
            "--no-cache", "--resolution", str(resolution), "--batch-size", "2", "--quiet", *words]
    assert main(argv) == 0, argv
    written = pd.read_csv(out).set_index("path")
    ae = load_autoencoder(model_dir, resolution=resolution)
    library = scores(build(name), ae, sorted(folder.iterdir())).set_index("path")
    assert sorted(written.index) == sorted(library.index)
    for col in ("score", *cls.components):
        np.testing.assert_allclose(written.loc[library.index, col].to_numpy(dtype=float),
                                   library[col].to_numpy(dtype=float), rtol=1e-9, err_msg=f"{name}: {col}")
