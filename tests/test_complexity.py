"""Complexity measures: JPEG bytes per pixel (AEROBLADE) and brightness."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from latenttracer.complexity import brightness, jpeg_bytes_per_pixel


def _noise_image(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_jpeg_bytes_per_pixel_is_the_pil_jpeg_size(tmp_path):
    rgb = _noise_image()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=50)
    assert jpeg_bytes_per_pixel(rgb) == len(buf.getvalue()) / (32 * 32)
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    assert jpeg_bytes_per_pixel(path) == jpeg_bytes_per_pixel(rgb)
    assert jpeg_bytes_per_pixel(rgb, quality=90) > jpeg_bytes_per_pixel(rgb)


def test_jpeg_bytes_per_pixel_orders_flat_below_textured():
    flat = np.full((128, 128, 3), 120, np.uint8)
    y, x = np.mgrid[0:128, 0:128]
    gradient = np.stack([x * 2, y * 2, x + y], axis=-1).astype(np.uint8)
    noisy = _noise_image(size=128)
    values = [jpeg_bytes_per_pixel(a) for a in (flat, gradient, noisy)]
    assert values[0] < values[1] < values[2] and values[0] < values[2] / 4


def test_brightness():
    assert brightness(np.zeros((4, 4, 3), np.uint8)) == 0.0
    assert brightness(np.full((4, 4, 3), 255, np.uint8)) == pytest.approx(1.0)
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    assert brightness(red) == pytest.approx(0.299)
    half = np.zeros((4, 4, 3), np.uint8)
    half[:2] = 255  # half white, half black
    assert brightness(half) == pytest.approx(0.5)
    assert brightness(np.full((4, 4), 51, np.uint8)) == pytest.approx(0.2)  # grayscale array


def test_grayscale_file_equals_rgb_array(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    path = tmp_path / "g.png"
    Image.fromarray(gray).save(path)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    assert brightness(path) == pytest.approx(brightness(rgb))
    assert jpeg_bytes_per_pixel(path) == jpeg_bytes_per_pixel(rgb)


def test_bad_inputs():
    with pytest.raises(ValueError, match="uint8 array"):
        brightness(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8 array"):
        jpeg_bytes_per_pixel(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="quality must be an integer from 1 to 100"):
        jpeg_bytes_per_pixel(_noise_image(), quality=0)
