"""Perturbations: exact for known inputs, deterministic, cached; bad strengths raise clear errors."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from latenttracer import perturbations as P
from latenttracer.images import file_sha256
from latenttracer.perturbations import AEROBLADE_GRID, Perturbation, apply_perturbation, perturbed_set
from latenttracer.perturbations import base as B
from latenttracer.perturbations.blur import gaussian_kernel
from latenttracer.perturbations.crop import crop_box

SHA = "ab" * 32


def _smooth(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """A textured 8-bit RGB image (gradients plus noise) with values spread over 0..255."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), (x + y) * 255 / (h + w - 2)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).round().astype(np.uint8)


def _write(tmp_path, name: str, rgb: np.ndarray):
    path = tmp_path / name
    Image.fromarray(rgb).save(path)
    return path


# -- the grid and validation ----------------------------------------------------------------------------------------
def test_grid_is_aeroblades_21_conditions():
    assert len(AEROBLADE_GRID) == 21
    kinds = ("jpeg", "crop", "blur", "noise", "downscale")
    assert set(kinds) <= set(P.PERTURBATIONS.names())
    by_kind = {k: [p.strength for p in AEROBLADE_GRID if p.kind == k] for k in kinds}
    assert by_kind == {"jpeg": [90, 80, 70, 60, 50], "crop": [0.9, 0.8, 0.7, 0.6, 0.5],
                       "blur": [1.0, 2.0, 3.0, 4.0, 5.0], "noise": [0.05, 0.1, 0.15, 0.2, 0.25],
                       "downscale": [0.5]}
    assert len({p.key for p in AEROBLADE_GRID}) == 21


@pytest.mark.parametrize("kind,strength,match", [
    ("jpeg", 90.5, "quality must be an integer from 1 to 100"),
    ("jpeg", 0, "quality"), ("jpeg", 101, "quality"),
    ("crop", 0.0, "fraction must be a number in"), ("crop", 1.2, "fraction"),
    ("blur", -1.0, "sigma must be a number > 0"), ("blur", float("nan"), "sigma"),
    ("noise", 0.0, "std"), ("noise", 2.0, "std"),
    ("downscale", 1.0, "factor must be a number in"), ("downscale", "0.5", "factor"),
    ("jpeg", True, "quality"),
])
def test_bad_strength_names_kind_and_parameter(kind, strength, match):
    with pytest.raises(ValueError, match=match):
        Perturbation(kind, strength)


@pytest.mark.parametrize("kind,words,inside,outside", [
    ("jpeg", "an integer from 1 to 100", [1, 100, 50.0], [0, 101, 90.5]),
    ("crop", "a number in (0, 1]", [1, 1e-9], [0, 1 + 1e-9]),
    ("blur", "a number > 0", [1e-9, 1e9], [0, -1]),
    ("noise", "a number in (0, 1]", [1, 1e-9], [0, 1.5]),
    ("downscale", "a number in (0, 1)", [0.5, 1 - 1e-9], [0, 1]),
])
def test_each_kind_declares_its_range_and_the_base_checks_it(kind, words, inside, outside):
    """Every kind declares its strengths as a Range (no check of its own); the error says the range and the value."""
    assert str(P.kind_of(kind).valid) == words
    for s in inside:
        assert Perturbation(kind, s).strength == s
    for s in outside:
        with pytest.raises(ValueError) as err:
            Perturbation(kind, s)
        assert str(err.value) == f"perturbation {kind}: {P.kind_of(kind).parameter} must be {words}, got {s!r}"


def test_range_words_and_ends():
    assert str(P.Range()) == "a number" and 1e300 in P.Range() and -1e300 in P.Range()
    assert str(P.Range(high=2)) == "a number <= 2" and 2 in P.Range(high=2) and 2.5 not in P.Range(high=2)
    assert str(P.Range(high=2, high_open=True)) == "a number < 2" and 2 not in P.Range(high=2, high_open=True)
    assert str(P.Range(low=-1)) == "a number >= -1" and -1 in P.Range(low=-1) and -1.5 not in P.Range(low=-1)
    assert str(P.Range(1, 3, integer=True, high_open=True)) == "an integer in [1, 3)"
    assert 2 in P.Range(1, 3, integer=True, high_open=True) and 3 not in P.Range(1, 3, integer=True, high_open=True)
    assert str(P.Range(0.5, 2.5)) == "a number in [0.5, 2.5]"


def test_bad_kind_and_seed():
    with pytest.raises(ValueError, match=r"perturbation.kind: 'sharpen' is not one of"):
        Perturbation("sharpen", 1.0)
    with pytest.raises(ValueError, match="perturbation.seed"):
        Perturbation("noise", 0.1, seed=-1)


def test_parse():
    assert P.parse_perturbation("jpeg:90") == Perturbation("jpeg", 90)
    assert P.parse_perturbation(" blur : 2 ") == Perturbation("blur", 2.0)
    assert P.parse_perturbation({"kind": "noise", "strength": 0.1, "seed": 3}) == Perturbation("noise", 0.1, 3)
    assert Perturbation("jpeg", 90.0).key == Perturbation("jpeg", 90).key == "jpeg90-v1"
    with pytest.raises(ValueError, match="expected 'kind:strength'"):
        P.parse_perturbation("jpeg")
    with pytest.raises(ValueError, match="strength 'high' is not a number"):
        P.parse_perturbation("jpeg:high")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['quality'\]"):
        P.parse_perturbation({"kind": "jpeg", "quality": 90})
    with pytest.raises(ValueError, match=r"missing key\(s\) \['strength'\]"):
        P.parse_perturbation({"kind": "jpeg"})
    with pytest.raises(ValueError, match="duplicate condition"):
        P.parse_grid(["jpeg:90", {"kind": "jpeg", "strength": 90}])
    assert P.parse_grid([p.name.replace(p.kind, p.kind + ":") for p in AEROBLADE_GRID]) == AEROBLADE_GRID


# -- exactness -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quality", [90, 50])
def test_jpeg_is_the_pil_round_trip(quality):
    rgb = _smooth()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    out = apply_perturbation(rgb, Perturbation("jpeg", quality))
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(out, rgb)


def test_crop_geometry():
    # a 40 x 20 image whose centre half (20 x 10) is one colour and the rest another: crop 0.5 keeps only the
    # centre, and bicubic resizing of a constant image is that constant
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[5:15, 10:30] = (200, 100, 50)
    assert crop_box(40, 20, 0.5) == (10, 5, 30, 15)
    out = apply_perturbation(rgb, Perturbation("crop", 0.5))
    assert out.shape == rgb.shape
    assert (out == np.array([200, 100, 50], np.uint8)).all()
    # odd margin: the extra pixel goes to the right / bottom
    assert crop_box(10, 10, 0.75) == (1, 1, 9, 9)
    assert crop_box(32, 32, 0.7) == (5, 5, 27, 27)
    # and in general it is PIL's crop, then PIL's bicubic resize back
    img = _smooth()
    expected = np.asarray(Image.fromarray(img).crop(crop_box(32, 24, 0.7)).resize((32, 24), Image.BICUBIC))
    np.testing.assert_array_equal(apply_perturbation(img, Perturbation("crop", 0.7)), expected)
    np.testing.assert_array_equal(apply_perturbation(img, Perturbation("crop", 1.0)), img)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 5.0])
def test_blur_matches_scipy(sigma):
    rgb = _smooth()
    k = gaussian_kernel(sigma)
    assert len(k) == 9 and k.sum() == pytest.approx(1.0) and np.allclose(k, k[::-1])
    # scipy's Gaussian with radius 4 is the same 9-tap normalised kernel; "mirror" = torch's "reflect"
    ref = ndimage.gaussian_filter(rgb.astype(np.float64), sigma=(sigma, sigma, 0), radius=(4, 4, 0),
                                  mode="mirror")
    out = apply_perturbation(rgb, Perturbation("blur", sigma))
    np.testing.assert_array_equal(out, np.clip(np.rint(ref), 0, 255).astype(np.uint8))
    # direct 2-D convolution with the outer-product kernel, for one interior pixel
    y, x = 12, 16
    direct = (np.outer(k, k)[..., None] * rgb[y - 4:y + 5, x - 4:x + 5].astype(np.float64)).sum((0, 1))
    assert np.abs(out[y, x].astype(float) - direct).max() <= 0.5 + 1e-9


def test_noise_statistics_clamp_and_determinism():
    grey = np.full((64, 64, 3), 128, np.uint8)
    p = Perturbation("noise", 0.1)
    out = apply_perturbation(grey, p, SHA)
    diff = out / 255.0 - 128 / 255
    assert abs(diff.mean()) < 0.005 and diff.std() == pytest.approx(0.1, rel=0.03)
    np.testing.assert_array_equal(apply_perturbation(grey, p, SHA), out)  # same image, same noise
    assert not np.array_equal(apply_perturbation(grey, p, "cd" * 32), out)  # other image, other noise
    assert not np.array_equal(apply_perturbation(grey, Perturbation("noise", 0.1, seed=1), SHA), out)
    white = np.full((64, 64, 3), 255, np.uint8)
    out = apply_perturbation(white, Perturbation("noise", 0.25), SHA)
    assert out.max() == 255 and 0.4 < (out == 255).mean() < 0.6  # clamped, not wrapped around
    with pytest.raises(ValueError, match="sha256"):
        apply_perturbation(grey, p)


def test_downscale():
    img = _smooth()
    small = Image.fromarray(img).resize((16, 12), Image.BICUBIC)
    expected = np.asarray(small.resize((32, 24), Image.BICUBIC))
    np.testing.assert_array_equal(apply_perturbation(img, Perturbation("downscale", 0.5)), expected)
    # antialiased: a one-pixel checkerboard loses its contrast entirely (an unfiltered 2x subsample keeps it)
    checker = ((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, -1)
    out = apply_perturbation(checker, Perturbation("downscale", 0.5))
    assert np.abs(out[4:-4, 4:-4].astype(int) - 128).max() <= 2


def test_every_grid_condition_keeps_shape_and_dtype():
    img = _smooth()
    for p in AEROBLADE_GRID:
        out = apply_perturbation(img, p, SHA)
        assert out.shape == img.shape and out.dtype == np.uint8, p.name


def test_bad_input_array_and_file(tmp_path):
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 array"):
        apply_perturbation(np.zeros((8, 8, 3), np.float32), Perturbation("blur", 1.0))
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (8, 8)).save(rgba)
    with pytest.raises(ValueError, match="a.png: perturbations need 8-bit RGB"):
        perturbed_set([rgba], Perturbation("jpeg", 90), tmp_path / "cache")
    gray = tmp_path / "g.png"
    Image.new("L", (16, 16), 7).save(gray)
    (out,) = perturbed_set([gray], Perturbation("crop", 0.5), tmp_path / "cache")
    assert (np.asarray(Image.open(out)) == 7).all()


# -- derived sets: content-addressed, deterministic, cached -----------------------------------------------------------
def test_perturbed_set_is_content_addressed_deterministic_and_cached(tmp_path, monkeypatch):
    a = _write(tmp_path, "a.png", _smooth(seed=1))
    b = _write(tmp_path, "b.png", _smooth(seed=2))
    a_copy = _write(tmp_path, "a_copy.png", _smooth(seed=1))
    p = Perturbation("noise", 0.1)
    writes = []
    real = B.atomic_write_bytes
    monkeypatch.setattr(B, "atomic_write_bytes", lambda path, data: writes.append(path) or real(path, data))

    out = perturbed_set([a, b, a_copy], p, tmp_path / "cache")
    assert out[0] == out[2] == tmp_path / "cache" / p.key / f"{file_sha256(a)}.png"
    assert len(writes) == 2 and all(o.is_file() for o in out)
    # stored pixels are exactly the perturbation of the source (PNG is lossless)
    np.testing.assert_array_equal(np.asarray(Image.open(out[1])), P.perturb_file(b, p))
    mtimes = [o.stat().st_mtime_ns for o in out]
    data = [o.read_bytes() for o in out]

    # a rerun, in the other order, writes nothing and returns the same files
    writes.clear()
    again = perturbed_set([b, a], p, tmp_path / "cache")
    assert writes == [] and again == [out[1], out[0]]
    assert [o.stat().st_mtime_ns for o in out] == mtimes

    # a fresh cache in the other order gives the same bytes (independent of order and of the company kept)
    fresh = perturbed_set([b, a], p, tmp_path / "cache2")
    assert [f.read_bytes() for f in fresh] == [data[1], data[0]]
    assert not any(name.endswith(".tmp") for _, _, files in os.walk(tmp_path) for name in files)


def test_unreadable_source_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        perturbed_set([bad], Perturbation("jpeg", 90), tmp_path / "cache")


# -- pixels are bit-identical to the reference implementation ------------------------------------------------------
# SHA-256 (first 16 hex digits) of the perturbed pixels of _smooth(24, 32, seed=5) and _smooth(29, 37, seed=5)
# (source sha256 "cd" * 32), computed by the single-module implementation (latenttracer/perturbations.py at commit
# 0beb5c0) before perturbations became one registered module per kind; with the cache key of each condition.
GOLDEN = {
    ("jpeg", 90, 0): ("jpeg90-v1", "b93c3f014bf5f570", "b5a8c8e7dde6d417"),
    ("jpeg", 80, 0): ("jpeg80-v1", "4fe0b81e2cd351c2", "10913b0b335175f6"),
    ("jpeg", 70, 0): ("jpeg70-v1", "2e3dee8ced97847e", "5343eafc826e0056"),
    ("jpeg", 60, 0): ("jpeg60-v1", "bddb29bd5ab9ddb9", "626efeb99993e283"),
    ("jpeg", 50, 0): ("jpeg50-v1", "cfdc721eed2e2aa9", "f0e9fd7289ccd779"),
    ("crop", 0.9, 0): ("crop0.9-v1", "42e8989493fb27a8", "6167f3eba7a344ff"),
    ("crop", 0.8, 0): ("crop0.8-v1", "b0599140a8478fe9", "a081cbc1d073a8cc"),
    ("crop", 0.7, 0): ("crop0.7-v1", "134da85c266dd733", "ea63739c2a4dd144"),
    ("crop", 0.6, 0): ("crop0.6-v1", "76b037fd06f5300f", "3eb01da788e975f4"),
    ("crop", 0.5, 0): ("crop0.5-v1", "29bfaf05907cc909", "909808c214d2a0ff"),
    ("blur", 1.0, 0): ("blur1-v1", "134cf2ee8dc64f28", "5776a615040d2ade"),
    ("blur", 2.0, 0): ("blur2-v1", "4580c9311aa407a5", "6e837de98c5a2c7e"),
    ("blur", 3.0, 0): ("blur3-v1", "7f9673735306969d", "dc796ecfe9a992a0"),
    ("blur", 4.0, 0): ("blur4-v1", "32c8378717ba0c75", "44d9b424e78c3b7e"),
    ("blur", 5.0, 0): ("blur5-v1", "5527918445d437c7", "bb09cffeaf60c4c8"),
    ("noise", 0.05, 0): ("noise0.05-seed0-v1", "56265ab50e3f2d46", "a2f68f9747e6c86e"),
    ("noise", 0.1, 0): ("noise0.1-seed0-v1", "58120e4f1d6d6735", "2f58a20f68f06321"),
    ("noise", 0.15, 0): ("noise0.15-seed0-v1", "2d01f2706ca3fabd", "a07b4fd97acc79de"),
    ("noise", 0.2, 0): ("noise0.2-seed0-v1", "9231fc3ae182e063", "fd3dd5618ac52a20"),
    ("noise", 0.25, 0): ("noise0.25-seed0-v1", "822253f72d4938bc", "f2a9f023a212fca0"),
    ("downscale", 0.5, 0): ("downscale0.5-v1", "a162ea214569aeff", "e472ffcd87aac8c7"),
    ("noise", 0.1, 3): ("noise0.1-seed3-v1", "cfead8ca2ba78388", "b21033555601d154"),
    ("crop", 1.0, 0): ("crop1-v1", "d47f5a7eaf6b0151", "2cca6a6d605f38e2"),
    ("downscale", 0.3, 0): ("downscale0.3-v1", "ce98337709a75ee9", "88188844073323be"),
    ("blur", 0.5, 0): ("blur0.5-v1", "eee3e7b4c81caaec", "3f201fe7d087375b"),
    ("jpeg", 1, 0): ("jpeg1-v1", "2bef98bdf4e89495", "aaabc6655ba2df21"),
}


@pytest.mark.parametrize(("kind", "strength", "seed"), list(GOLDEN), ids=[v[0] for v in GOLDEN.values()])
def test_pixels_and_keys_match_the_reference_implementation(kind, strength, seed):
    import hashlib

    key, *digests = GOLDEN[(kind, strength, seed)]
    p = Perturbation(kind, strength, seed)
    assert p.key == key
    for shape, digest in zip(((24, 32), (29, 37)), digests):
        out = apply_perturbation(_smooth(*shape, seed=5), p, "cd" * 32)
        assert out.dtype == np.uint8 and out.shape == (*shape, 3)
        assert hashlib.sha256(out.tobytes()).hexdigest()[:16] == digest, (key, shape)
