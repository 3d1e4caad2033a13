"""Tests for latenttracer.images. All fixtures are generated in tmp_path with PIL/numpy."""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from latenttracer.images import (
    IMAGE_EXTENSIONS,
    BadImageError,
    ImageOptions,
    ImageRecord,
    file_sha256,
    list_images,
    load_image,
    load_images,
)

RNG_SEED = 1234


def _rgb(h=16, w=16, seed=RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(arr_or_img, path, **kw):
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(path, **kw)
    return path


def _bytes_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """The reference conversion: uint8 HxWx3 -> float32 3xHxW, bytes / 255."""
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1).to(torch.float32) / 255


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _raw_png(width, height, bit_depth, color_type, idat: bytes) -> bytes:
    """A PNG written by hand: lets a test claim any header size or write 16-bit RGB."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


# --- exact 8-bit round trip and determinism ----------------------------------------------------------------


def test_rgb_png_round_trip_is_exact(tmp_path):
    arr = _rgb(16, 16)
    path = _save(arr, tmp_path / "a.png")
    x, rec = load_image(path, 16)
    assert x.dtype == torch.float32 and x.shape == (3, 16, 16) and x.is_contiguous()
    assert torch.equal(x, _bytes_to_tensor(arr))
    assert torch.equal((x * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(arr))
    assert rec == ImageRecord(
        path=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        original_size=(16, 16),
        original_mode="RGB",
        conversions=(),
    )
    assert file_sha256(path) == rec.sha256


def test_same_file_twice_gives_identical_tensor(tmp_path):
    path = _save(_rgb(40, 56), tmp_path / "a.png")
    for options in (ImageOptions(), ImageOptions(resize="authors")):
        a, ra = load_image(path, 24, options)
        b, rb = load_image(path, 24, options)
        assert torch.equal(a, b) and ra == rb
        batch, recs, _ = load_images([path, path], 24, options)
        assert torch.equal(batch[0], a) and torch.equal(batch[1], a) and recs == [ra, ra]


# --- conversions -------------------------------------------------------------------------------------------


def test_grayscale_is_replicated_exactly(tmp_path):
    gray = _rgb()[:, :, 0]
    x, rec = load_image(_save(gray, tmp_path / "g.png"), 16)
    expected = torch.from_numpy(gray).to(torch.float32) / 255
    for c in range(3):
        assert torch.equal(x[c], expected)
    assert rec.original_mode == "L" and rec.conversions == ("grayscale_to_rgb",)


@pytest.mark.parametrize("background, bg", [("black", 0.0), ("white", 1.0)])
def test_rgba_composited_over_background(tmp_path, background, bg):
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[...] = (200, 100, 50, 128)
    arr[0, 0] = (10, 20, 30, 0)  # fully transparent -> background
    arr[0, 1] = (10, 20, 30, 255)  # opaque -> colour exactly
    x, rec = load_image(_save(arr, tmp_path / "a.png"), 4, ImageOptions(alpha_background=background))
    a = 128 / 255
    for c, v in enumerate((200, 100, 50)):
        assert x[c, 2, 2].item() == pytest.approx(v / 255 * a + bg * (1 - a), abs=1e-6)
    assert torch.equal(x[:, 0, 0], torch.full((3,), bg))
    assert torch.equal(x[:, 0, 1], torch.tensor([10, 20, 30], dtype=torch.float32) / 255)
    assert rec.original_mode == "RGBA" and rec.conversions == (f"rgba_over_{background}",)


def test_fully_opaque_rgba_is_exact_and_recorded(tmp_path):
    rgb = _rgb()
    rgba = np.concatenate([rgb, np.full((16, 16, 1), 255, np.uint8)], axis=2)
    x, rec = load_image(_save(rgba, tmp_path / "a.png"), 16, ImageOptions(alpha_background="white"))
    assert torch.equal(x, _bytes_to_tensor(rgb))
    assert rec.conversions == ("alpha_dropped:fully_opaque",)


@pytest.mark.parametrize("background, bg", [("black", 0.0), ("white", 1.0)])
def test_la_composited_over_background(tmp_path, background, bg):
    arr = np.zeros((4, 4, 2), np.uint8)
    arr[...] = (90, 51)
    img = Image.frombytes("LA", (4, 4), arr.tobytes())
    x, rec = load_image(_save(img, tmp_path / "la.png"), 4, ImageOptions(alpha_background=background))
    a = 51 / 255
    assert torch.allclose(x, torch.full((3, 4, 4), 90 / 255 * a + bg * (1 - a)), atol=1e-6, rtol=0)
    assert rec.original_mode == "LA"
    assert rec.conversions == (f"la_over_{background}", "grayscale_to_rgb")


def test_palette_without_transparency(tmp_path):
    img = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    path = _save(img, tmp_path / "p.png")
    x, rec = load_image(path, 16)
    assert torch.equal(x, _bytes_to_tensor(np.asarray(img.convert("RGB"))))
    assert rec.original_mode == "P" and rec.conversions == ("palette_to_rgb",)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
    img.putdata([0, 1, 2, 1] * 4)  # index 0 transparent, 1 red, 2 green
    path = _save(img, tmp_path / "pt.png", transparency=0)
    for background, bg in (("black", 0.0), ("white", 1.0)):
        x, rec = load_image(path, 4, ImageOptions(alpha_background=background))
        assert torch.equal(x[:, 0, 0], torch.full((3,), bg))
        assert torch.equal(x[:, 0, 1], torch.tensor([1.0, 0.0, 0.0]))
        assert torch.equal(x[:, 0, 2], torch.tensor([0.0, 1.0, 0.0]))
        assert rec.conversions == ("palette_to_rgba", f"rgba_over_{background}")


def _sixteen_bit_values() -> np.ndarray:
    # 1000 and 1001 share the high byte (3): an 8-bit detour would make them equal.
    vals = np.array([[0, 1000], [1001, 65535]], dtype=np.uint16)
    return np.tile(vals, (4, 4))


@pytest.mark.parametrize(
    "name, make",
    [
        ("g16.png", lambda v: Image.fromarray(v)),  # I;16
        ("g16b.tif", lambda v: Image.fromarray(v.astype(">u2"))),  # I;16B
        ("gi32.tif", lambda v: Image.fromarray(v.astype(np.int32))),  # I
    ],
)
def test_sixteen_bit_keeps_full_precision(tmp_path, name, make):
    vals = _sixteen_bit_values()
    x, rec = load_image(_save(make(vals), tmp_path / name), 8)
    expected = torch.from_numpy(vals.astype(np.int32)).to(torch.float32) / 65535
    for c in range(3):
        assert torch.equal(x[c], expected)
    assert x[0, 0, 1] < x[0, 1, 0]  # 1000 < 1001 survives
    assert rec.original_mode in ("I;16", "I;16B", "I")
    assert rec.conversions == ("uint16_to_float:/65535", "grayscale_to_rgb")


def test_sixteen_bit_rgb_reduction_by_pil_is_recorded(tmp_path):
    vals = np.arange(4 * 4 * 3, dtype=np.uint16).reshape(4, 4, 3) * 1000
    rows = b"".join(b"\x00" + vals[y].astype(">u2").tobytes() for y in range(4))
    path = tmp_path / "rgb16.png"
    path.write_bytes(_raw_png(4, 4, 16, 2, zlib.compress(rows)))
    x, rec = load_image(path, 4)
    assert torch.equal(x, _bytes_to_tensor((vals >> 8).astype(np.uint8)))
    assert rec.conversions == ("pil_16bit_to_8bit:RGB;16B",)


def test_cmyk_uses_pil_conversion(tmp_path):
    cmyk = np.random.default_rng(3).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    img = Image.frombytes("CMYK", (8, 8), cmyk.tobytes())
    x, rec = load_image(_save(img, tmp_path / "c.tif"), 8)
    assert torch.equal(x, _bytes_to_tensor(np.asarray(img.convert("RGB"))))
    assert rec.original_mode == "CMYK" and rec.conversions == ("cmyk_to_rgb:pil",)


@pytest.mark.parametrize(
    "name, kw, lossless",
    [
        ("a.jpg", {"quality": 90}, False),
        ("a.JPEG", {"quality": 90, "format": "JPEG"}, False),
        ("a.webp", {"lossless": True}, True),
        ("a.bmp", {}, True),
        ("a.tif", {}, True),
        ("a.tiff", {"compression": "tiff_lzw"}, True),
    ],
)
def test_other_formats(tmp_path, name, kw, lossless):
    arr = _rgb(16, 16)
    path = _save(arr, tmp_path / name, **kw)
    x, rec = load_image(path, 16)
    decoded = np.asarray(Image.open(path).convert("RGB"))
    assert torch.equal(x, _bytes_to_tensor(decoded))  # exactly what the decoder gives, no extra rounding
    if lossless:
        assert np.array_equal(decoded, arr)
    assert rec.conversions == () and rec.original_mode == "RGB"


@pytest.mark.parametrize("name, kw", [("m.tif", {}), ("m.webp", {"lossless": True})])
def test_multi_frame_uses_first_frame(tmp_path, name, kw):
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200, 90)]
    path = _save(frames[0], tmp_path / name, save_all=True, append_images=frames[1:], **kw)
    x, rec = load_image(path, 8)
    assert torch.equal(x, torch.full((3, 8, 8), 10 / 255))
    assert rec.conversions == ("first_frame_of_3",)


# --- EXIF orientation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "orientation, step, red_corner",
    [(6, "exif_transpose:rotate_270", (0, 1)), (8, "exif_transpose:rotate_90", (1, 0))],
)
def test_exif_orientation_rotates_pixels(tmp_path, orientation, step, red_corner):
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:16, :16] = (255, 0, 0)  # red in the stored top-left quadrant
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(arr, tmp_path / "o.jpg", exif=exif, quality=95)
    x, rec = load_image(path, 32)
    assert rec.conversions == (step,)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert torch.equal(x, _bytes_to_tensor(expected))
    # Orientation 6 shows the stored top-left quadrant at the top-right; orientation 8 at the bottom-left.
    quads = x[0].reshape(2, 16, 2, 16).mean(dim=(1, 3))
    assert quads[red_corner] > 0.9 and (quads.sum() - quads[red_corner]) < 0.3


def test_exif_orientation_swaps_original_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(_rgb(20, 40), tmp_path / "o.jpg", exif=exif)  # stored 40 wide, 20 high
    _, rec = load_image(path, 8)
    assert rec.original_size == (20, 40)
    assert rec.conversions[0] == "exif_transpose:rotate_270"


# --- resizing ----------------------------------------------------------------------------------------------


def _band_image() -> np.ndarray:
    """64 wide x 48 high, white in columns 0..7 only.

    A centre crop removes the band; the authors' squash keeps it."""
    arr = np.zeros((48, 64, 3), np.uint8)
    arr[:, :8] = 255
    return arr


def test_native_resize_crops_non_square_then_bicubic(tmp_path):
    arr = _rgb(48, 64)
    path = _save(arr, tmp_path / "r.png")
    x, rec = load_image(path, 32)
    assert x.shape == (3, 32, 32) and x.min() >= 0 and x.max() <= 1
    assert rec.original_size == (64, 48)
    assert rec.conversions[:2] == (
        "center_crop:64x48->48x48@(8,0)",
        "resize_native:48x48->32x32:bicubic_antialias(pil,float32)",
    )
    # torch's antialiased bicubic is an independent implementation of PIL's filter: same crop, same result.
    crop = _bytes_to_tensor(arr[:, 8:56])[None]
    expected = F.interpolate(crop, size=(32, 32), mode="bicubic", antialias=True, align_corners=False)[0]
    assert torch.allclose(x, expected.clamp(0, 1), atol=1e-5, rtol=0)

    band, _ = load_image(_save(_band_image(), tmp_path / "band.png"), 32)
    assert band.max() == 0  # the band lay outside the centre crop


def test_native_resize_square_and_crop_only(tmp_path):
    up, rec = load_image(_save(np.full((16, 16, 3), 77, np.uint8), tmp_path / "s.png"), 32)
    assert rec.conversions == ("resize_native:16x16->32x32:bicubic_antialias(pil,float32)",)
    assert torch.allclose(up, torch.full((3, 32, 32), 77 / 255), atol=1e-6, rtol=0)

    edge = np.zeros((16, 16, 3), np.uint8)
    edge[:, 8:] = 255  # bicubic overshoots at a hard edge
    x, rec = load_image(_save(edge, tmp_path / "edge.png"), 40)
    assert rec.conversions[-1] == "clamp_0_1" and x.min() == 0 and x.max() == 1

    arr = _rgb(32, 40)
    x, rec = load_image(_save(arr, tmp_path / "c.png"), 32)
    assert rec.conversions == ("center_crop:40x32->32x32@(4,0)",)
    assert torch.equal(x, _bytes_to_tensor(arr[:, 4:36]))


def test_authors_resize_area_then_bilinear(tmp_path):
    arr = _rgb(48, 64)
    x, rec = load_image(_save(arr, tmp_path / "r.png"), 32, ImageOptions(resize="authors"))
    assert rec.conversions == (
        "resize_authors_area:64x48->512x512:area(torch)",
        "resize_authors_bilinear:512x512->32x32:bilinear(torch,antialias=False)",
    )
    mid = F.interpolate(_bytes_to_tensor(arr)[None], size=(512, 512), mode="area")
    expected = F.interpolate(mid, size=(32, 32), mode="bilinear", align_corners=False, antialias=False)[0]
    assert x.shape == (3, 32, 32) and torch.allclose(x, expected, atol=1e-6, rtol=0)

    band, _ = load_image(_save(_band_image(), tmp_path / "band.png"), 32, ImageOptions(resize="authors"))
    # No crop: the band (1/8 of the width) is squashed into the first 4 of 32 columns.
    assert band[:, :, :3].min() == 1 and band[:, :, 5:].max() == 0


def test_authors_resize_skips_identity_steps(tmp_path):
    path = _save(_rgb(48, 64), tmp_path / "r.png")
    _, rec = load_image(path, 512, ImageOptions(resize="authors"))
    assert rec.conversions == ("resize_authors_area:64x48->512x512:area(torch)",)
    arr = _rgb(512, 512)
    x, rec = load_image(_save(arr, tmp_path / "big.png"), 256, ImageOptions(resize="authors"))
    assert rec.conversions == ("resize_authors_bilinear:512x512->256x256:bilinear(torch,antialias=False)",)
    # bilinear 2x down without antialias = mean of each 2x2 block
    blocks = _bytes_to_tensor(arr).reshape(3, 256, 2, 256, 2).mean(dim=(2, 4))
    assert torch.allclose(x, blocks, atol=1e-6, rtol=0)


# --- bad inputs --------------------------------------------------------------------------------------------


def _png_bytes(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _first_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip_middle_byte(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


# (file name, writer(path), options, expected reason start)
BAD_CASES = [
    ("empty.png", lambda p: p.write_bytes(b""), ImageOptions(), "empty file (0 bytes)"),
    (
        "text.png",
        lambda p: p.write_text("hello, not an image"),
        ImageOptions(),
        "not an image / cannot identify",
    ),
    (
        "truncated.png",
        lambda p: p.write_bytes(_first_half(_png_bytes(_rgb(64, 64)))),
        ImageOptions(),
        "truncated or corrupt image data",
    ),
    (
        "corrupt.png",
        lambda p: p.write_bytes(_flip_middle_byte(_png_bytes(_rgb(64, 64)))),
        ImageOptions(),
        "truncated or corrupt image data",
    ),
    ("tiny.png", lambda p: _save(_rgb(1, 1), p), ImageOptions(), "too small: 1x1 (min side 2)"),
    (
        "big.png",
        lambda p: _save(_rgb(20, 30), p),
        ImageOptions(max_pixels=500),
        "too large: 30x20 = 600 pixels > max_pixels 500",
    ),
    (
        # The header claims 9000x9000 but the data is garbage: only a check before decoding says "too large".
        "header_lie.png",
        lambda p: p.write_bytes(_raw_png(9000, 9000, 8, 2, b"garbage")),
        ImageOptions(),
        "too large: 9000x9000 = 81000000 pixels > max_pixels 64000000",
    ),
    (
        "bomb.png",
        lambda p: p.write_bytes(_raw_png(20000, 20000, 8, 2, b"garbage")),
        ImageOptions(max_pixels=10**9),
        "too large: PIL refused it as a decompression bomb",
    ),
    (
        "float.tif",
        lambda p: _save(np.zeros((4, 4), np.float32), p),
        ImageOptions(),
        "unsupported mode F",
    ),
    (
        "int_range.tif",
        lambda p: _save(np.full((4, 4), 70000, np.int32), p),
        ImageOptions(),
        "unsupported pixel values for mode I",
    ),
    ("missing.png", lambda p: None, ImageOptions(), "file not found"),
]


@pytest.mark.parametrize("name, write, options, reason", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_image_raises_naming_file_and_reason(tmp_path, name, write, options, reason):
    path = tmp_path / name
    write(path)
    with pytest.raises(BadImageError) as info:
        load_image(path, 8, options)
    err = info.value
    assert err.path == str(path)
    assert err.reason.startswith(reason)
    assert str(err) == f"{path}: {err.reason}"
    assert isinstance(err, ValueError)
    assert not isinstance(err.__cause__, BadImageError)


def test_load_images_skip_lists_bad_and_returns_good(tmp_path):
    good1 = _save(_rgb(8, 8, seed=1), tmp_path / "g1.png")
    good2 = _save(_rgb(8, 8, seed=2), tmp_path / "g2.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("nope")
    batch, recs, skipped = load_images([good1, empty, good2, text], 8, on_bad_image="skip")
    assert batch.shape == (2, 3, 8, 8)
    assert [r.path for r in recs] == [str(good1), str(good2)]
    assert torch.equal(batch[1], _bytes_to_tensor(_rgb(8, 8, seed=2)))
    assert skipped == [
        (str(empty), "empty file (0 bytes)"),
        (str(text), "not an image / cannot identify image format"),
    ]

    with pytest.raises(BadImageError, match="empty.png: empty file"):
        load_images([good1, empty, good2], 8)

    none, recs, skipped = load_images([empty, text], 8, on_bad_image="skip")
    assert none.shape == (0, 3, 8, 8) and recs == [] and len(skipped) == 2


def test_argument_validation(tmp_path):
    path = _save(_rgb(), tmp_path / "a.png")
    with pytest.raises(ValueError, match="resize"):
        ImageOptions(resize="bilinear")
    with pytest.raises(ValueError, match="alpha_background"):
        ImageOptions(alpha_background="grey")
    with pytest.raises(ValueError, match="max_pixels"):
        ImageOptions(max_pixels=0)
    with pytest.raises(ValueError, match="size"):
        load_image(path, 0)
    with pytest.raises(ValueError, match="on_bad_image"):
        load_images([path], 8, on_bad_image="ignore")
    with pytest.raises(TypeError):
        load_images(str(path), 8)


def test_bad_image_error_pickles():
    err = pickle.loads(pickle.dumps(BadImageError("/x/a.png", "empty file (0 bytes)")))
    assert (err.path, err.reason, str(err)) == (
        "/x/a.png",
        "empty file (0 bytes)",
        "/x/a.png: empty file (0 bytes)",
    )


# --- list_images -------------------------------------------------------------------------------------------


def test_list_images_order_and_filter(tmp_path):
    for name in [
        "b.PNG",
        "a.jpg",
        "c.webp",
        "d.Tiff",
        "e.bmp",
        "f.jpeg",
        "notes.txt",
        ".hidden.png",
        "g.gif",
    ]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "z.png").write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()  # a folder with an image-like name is not a file

    flat = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert flat == ["a.jpg", "b.PNG", "c.webp", "d.Tiff", "e.bmp", "f.jpeg"]
    deep = [p.relative_to(tmp_path).as_posix() for p in list_images(str(tmp_path), recursive=True)]
    assert deep == flat + ["sub/a.png"]
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"} == IMAGE_EXTENSIONS


def test_list_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_images(tmp_path / "nowhere")
    afile = tmp_path / "a.png"
    afile.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="a.png"):
        list_images(afile)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match="empty"):
        list_images(empty)


def test_bilevel_becomes_black_and_white(tmp_path):
    bits = np.zeros((8, 8), bool)
    bits[:, 4:] = True
    x, rec = load_image(_save(Image.fromarray(bits), tmp_path / "b.png"), 8)
    assert rec.original_mode == "1"
    assert rec.conversions == ("bilevel_to_l:pil", "grayscale_to_rgb")
    assert x[:, :, :4].max() == 0 and x[:, :, 4:].min() == 1
