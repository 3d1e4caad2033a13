"""The best latent: recorded by the engine on request, stored by score_images, decodes back to the score."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import decoded_images, natural_crops, save_png

from latenttracer.autoencoders import load_autoencoder
from latenttracer.images import ImageOptions, load_images
from latenttracer.inversion import InversionConfig, invert
from latenttracer.store import ResultStore
from latenttracer.tracing import latent_from_bytes, run_hash, score_images


def _mse(ae, latent: torch.Tensor, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((ae.decode(latent[None]).float() - x[None].float()).square().mean())


@pytest.mark.parametrize("strategy", ["min", "last"])
def test_engine_best_latent_decodes_to_the_score(tiny_dirs, strategy):
    ae = load_autoencoder(tiny_dirs["AutoencoderKL-0"], resolution=32)
    x = torch.cat([natural_crops(3, seed=5), decoded_images(ae, 2, 7)])
    cfg = InversionConfig(steps=12, lr=0.1, strategy=strategy, record_latent=True)
    results = invert(ae, x, cfg)
    plain = invert(ae, x, InversionConfig(steps=12, lr=0.1, strategy=strategy))
    assert [r.score for r in results] == [r.score for r in plain]  # recording changes nothing
    assert all(r.best_latent is None for r in plain)
    assert any(r.best_step > 0 for r in results)
    for res, image in zip(results, x):
        assert res.best_latent.dtype == torch.float32 and res.best_latent.ndim == 3
        assert _mse(ae, res.best_latent, image) == pytest.approx(res.score, rel=1e-4, abs=1e-9)
    # iteration 0 is the initial (encoder) latent
    zero = invert(ae, x[:1], InversionConfig(steps=0, record_latent=True))[0]
    assert torch.allclose(zero.best_latent, ae.encode(x[:1])[0].float())
    assert cfg.hash() == InversionConfig(steps=12, lr=0.1, strategy=strategy).hash()


def test_stored_latent_decodes_to_the_stored_score(tmp_path, tiny_dirs):
    ae = load_autoencoder(tiny_dirs["AutoencoderTiny-0"], resolution=32)
    paths = [save_png(img, tmp_path / f"{i}.png") for i, img in enumerate(natural_crops(4, seed=2))]
    store = ResultStore(tmp_path / "store")
    cfg = InversionConfig(steps=8)
    score_images(ae, paths, cfg, store=store, progress=False)
    stored = store.load(ae.name, run_hash(ae, cfg, ImageOptions()))
    assert len(stored) == 4 and "best_latent" in stored
    images, records, _ = load_images([str(p) for p in paths], ae.resolution, ImageOptions())
    by_path = {r.path: img for r, img in zip(records, images)}
    for _, row in stored.iterrows():
        latent = latent_from_bytes(row["best_latent"])
        assert _mse(ae, latent, by_path[row["path"]]) == pytest.approx(row["score"], rel=1e-4, abs=1e-9)
    # a rerun reads the latent back from the cache
    again, _ = score_images(ae, paths, cfg, store=store, progress=False)
    assert again["cached"].all() and again["best_latent"].map(lambda v: isinstance(v, bytes)).all()


def test_rows_cached_before_latents_still_load(tmp_path, tiny_dirs):
    """A store with old rows (no best_latent column) and new ones reads as one table, old rows without latent."""
    ae = load_autoencoder(tiny_dirs["AutoencoderTiny-0"], resolution=32)
    paths = [save_png(img, tmp_path / f"{i}.png") for i, img in enumerate(natural_crops(3, seed=4))]
    store = ResultStore(tmp_path / "store")
    cfg = InversionConfig(steps=3)
    first, _ = score_images(ae, paths[:1], cfg, store=store, progress=False)
    old = first.drop(columns=["best_latent", "cached"]).assign(model=ae.name, config_hash=run_hash(ae, cfg,
                                                                                                     ImageOptions()))
    store.append(old.to_dict("records"))  # as written before this column existed
    frame, _ = score_images(ae, paths, cfg, store=store, progress=False)
    has = frame.set_index("path")["best_latent"].map(lambda v: isinstance(v, bytes))
    assert not has[str(paths[0])] and has[str(paths[1])] and has[str(paths[2])]
    frame.to_parquet(tmp_path / "scores.parquet")  # mixed bytes / missing values write and read back
    assert pd.read_parquet(tmp_path / "scores.parquet")["best_latent"].isna().sum() == 1
