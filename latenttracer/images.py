"""Reading, converting and resizing images for latent inversion, with a record of every step taken.

Everything here is deterministic: the same file bytes and options always give the same tensor, bit for bit.
Images come out as float32 tensors ``(3, size, size)`` in ``[0, 1]``.

Decisions (each one is recorded in ``ImageRecord.conversions`` when it applies):

Reading
    - The file is read into memory once. The SHA-256 in the record is computed from the same bytes that are
      decoded, so the record always describes the pixels that were used.
    - The pixel count from the header is checked against ``ImageOptions.max_pixels`` and ``min_side`` before
      any pixel data is decoded. PIL's own decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``, a module
      global that we never change) can still refuse a file at open time. That is reported as "too large" too.
    - ``img.load()`` forces a full decode, so truncated or corrupt data fails here, not later. A PNG whose
      pixel data is complete but whose trailing chunks (e.g. ``IEND``) are missing decodes fine in PIL, and is
      accepted.
    - Multi-frame files (animated WebP, multi-page TIFF, ...): the first frame is used
      (``"first_frame_of_N"``).
    - EXIF orientation is applied with ``PIL.ImageOps.exif_transpose`` (``"exif_transpose:rotate_270"`` for
      orientation 6, and so on, named after PIL's ``Image.Transpose`` member). ``original_size`` is the size
      after this step.
    - ICC profiles are ignored (no colour management). The authors' ``cv2.imread`` ignores them too.

Conversion to RGB float (exact where the format allows)
    - 8-bit RGB: ``uint8 / 255`` in float32, with no other arithmetic. An 8-bit RGB PNG therefore round-trips
      exactly: ``tensor * 255`` gives back the file's bytes. Belonging images are 8-bit PNGs decoded by the
      model, and an off-by-one here would destroy the signal the method detects.
    - Grayscale ``L``: the one channel is copied to R, G and B (``"grayscale_to_rgb"``). Bilevel ``1``
      first goes through PIL's ``convert("L")`` (0 or 255).
    - 16-bit grayscale (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) and 32-bit ``I``: value ``/ 65535``,
      never truncated to 8 bits first (``"uint16_to_float:/65535"``). An ``I`` image with values outside
      ``0..65535`` is rejected, not clipped.
    - 16-bit-per-channel colour (RGB/RGBA PNG or TIFF with 16 bits per sample): PIL can only decode these to 8
      bits. It keeps the high byte. We cannot do better with PIL alone, so the step is recorded as
      ``"pil_16bit_to_8bit:<rawmode>"`` so that the loss of precision is visible.
    - ``LA`` and ``RGBA``: composited over black or white (``ImageOptions.alpha_background``) in float32,
      ``c * a + bg * (1 - a)``, with ``c = byte / 255`` and ``a = alpha / 255``. When every alpha is 255,
      this is exactly ``c``. The record then says ``"alpha_dropped:fully_opaque"`` and not
      ``"rgba_over_black"``.
    - Palette ``P``: converted by PIL to ``RGBA`` when the file declares transparency, else to ``RGB``;
      ``PA`` to ``RGBA``. Any alpha is then composited as above.
    - ``CMYK``, ``YCbCr``, ``RGBX``, ``RGBa``: PIL's ``convert("RGB")`` (or ``"RGBA"`` for ``RGBa``).
    - Any other mode (``F``, ``LAB``, ``HSV``, ...) raises ``BadImageError("unsupported mode ...")``.

Resizing
    - ``native`` (the default): an image that is already ``size x size`` is left alone (no resampling at all).
      Otherwise a non-square image is centre-cropped to a square of its shorter side (``"center_crop:..."``;
      when the excess is odd, the extra row or column is removed from the bottom or right). The square is
      then resized to ``size x size`` with PIL's antialiased bicubic filter, run on the float32 data
      channel by channel (mode ``F``). That keeps 16-bit precision and avoids rounding to 8 bits. Bicubic
      can overshoot, so values are clamped to ``[0, 1]``, and the clamp is recorded when it changed
      something.
    - ``authors``: the authors' code runs ``cv2.resize(img, (512, 512), INTER_AREA)`` on every input. Then,
      for models whose size differs from 512, it runs torchvision ``Resize`` (bilinear, no antialias, on
      tensors). We do the same steps on the float tensor: ``torch.nn.functional.interpolate`` with
      ``mode="area"`` to 512 x 512 with no crop (the aspect ratio changes, as with cv2), then with
      ``mode="bilinear", antialias=False`` to ``size`` when ``size != 512``. A step whose input already has
      the target size is skipped, since it would be an identity. Known differences from cv2: torch's "area" is
      an adaptive average pool. For non-integer downscale factors it uses whole-pixel windows, where cv2 uses
      fractional weights. For upscaling, torch's "area" behaves like nearest neighbour, where cv2's INTER_AREA
      behaves like bilinear. cv2 also works on uint8 and rounds the 512 x 512 result to 8 bits; we stay in
      float. Only the resizing is replicated, not the authors' decoding: cv2 drops alpha instead of
      compositing it, and reduces 16-bit files to 8 bits.

Bad files
    ``load_image`` raises ``BadImageError`` (a ``ValueError``) naming the file and the reason. It never lets a
    raw PIL exception through. ``load_images(..., on_bad_image="skip")`` skips such files and lists them.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "AUTHORS_INTERMEDIATE_SIZE",
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "ImageOptions",
    "ImageRecord",
    "file_sha256",
    "list_images",
    "load_image",
    "load_images",
]

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})

#: The authors' code resizes every input to this square size first (cv2 INTER_AREA).
AUTHORS_INTERMEDIATE_SIZE = 512

_EXIF_ORIENTATION_TAG = 0x0112
# The same table as PIL.ImageOps.exif_transpose, used only to name the step in the record.
_ORIENTATION_TO_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_VIA_PIL_CONVERT = {"CMYK": "RGB", "YCbCr": "RGB", "RGBX": "RGB", "RGBa": "RGBA", "PA": "RGBA", "1": "L"}


class BadImageError(ValueError):
    """A file that cannot be used as an image; ``.path`` names it and ``.reason`` says why."""

    def __init__(self, path: PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep it picklable (e.g. across worker processes)
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class ImageOptions:
    """How to read images. See the module docstring for what each choice does."""

    resize: Literal["native", "authors"] = "native"
    alpha_background: Literal["black", "white"] = "black"
    max_pixels: int = 64_000_000
    min_side: int = 2

    def __post_init__(self):
        if self.resize not in ("native", "authors"):
            raise ValueError(f"ImageOptions.resize must be 'native' or 'authors', got {self.resize!r}")
        if self.alpha_background not in ("black", "white"):
            raise ValueError(
                f"ImageOptions.alpha_background must be 'black' or 'white', got {self.alpha_background!r}"
            )
        for name in ("max_pixels", "min_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ImageOptions.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class ImageRecord:
    """What was read and what was done to it, in order."""

    path: str
    sha256: str
    original_size: tuple[int, int]
    original_mode: str
    conversions: tuple[str, ...]


def list_images(folder: PathLike, recursive: bool = False) -> list[Path]:
    """The image files in ``folder``, sorted by their POSIX relative path (code-point order).

    An image file is one whose extension, in any case, is in ``IMAGE_EXTENSIONS``. Hidden files and, when
    recursive, hidden folders (names starting with ".", e.g. macOS "._x.png" resource forks) are left out.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"image folder is not a directory: {root}")
    candidates = root.rglob("*") if recursive else root.iterdir()
    found = []
    for path in candidates:
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append((rel.as_posix(), path))
    if not found:
        where = "or its subfolders " if recursive else ""
        raise ValueError(
            f"no image files in {root} {where}(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return [path for _, path in sorted(found)]


def file_sha256(path: PathLike) -> str:
    """SHA-256 hex digest of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_image(
    path: PathLike, size: int, options: ImageOptions = ImageOptions()
) -> tuple[torch.Tensor, ImageRecord]:
    """Read one image as a float32 ``(3, size, size)`` tensor in ``[0, 1]``, and its record.

    Raises ``BadImageError`` for any file that cannot be used (see the module docstring).
    """
    _check_size(size)
    name = str(path)
    data = _read_bytes(path)
    steps: list[str] = []
    img, original_mode = _open_and_decode(name, data, options, steps)
    img = _apply_exif_orientation(name, img, steps)
    original_size = img.size
    x = _to_rgb_float(name, img, options.alpha_background, steps)
    del img
    x = _resize_authors(x, size, steps) if options.resize == "authors" else _resize_native(x, size, steps)
    record = ImageRecord(
        path=name,
        sha256=hashlib.sha256(data).hexdigest(),
        original_size=original_size,
        original_mode=original_mode,
        conversions=tuple(steps),
    )
    return x.contiguous(), record


def load_images(
    paths: Sequence[PathLike],
    size: int,
    options: ImageOptions = ImageOptions(),
    on_bad_image: Literal["error", "skip"] = "error",
) -> tuple[torch.Tensor, list[ImageRecord], list[tuple[str, str]]]:
    """Load several images into one ``(N, 3, size, size)`` tensor.

    With ``on_bad_image="error"`` the first bad file raises ``BadImageError``. With ``"skip"`` it is left out
    and listed in the third return value as ``(path, reason)``. If every file is bad, the tensor has N = 0.
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError("load_images takes a sequence of paths; for one file use load_image")
    _check_size(size)
    out = torch.empty((len(paths), 3, size, size), dtype=torch.float32)
    records: list[ImageRecord] = []
    skipped: list[tuple[str, str]] = []
    for path in paths:
        try:
            x, record = load_image(path, size, options)
        except BadImageError as err:
            if on_bad_image == "error":
                raise
            skipped.append((err.path, err.reason))
            continue
        out[len(records)] = x
        records.append(record)
    return out[: len(records)], records, skipped


# --- reading -------------------------------------------------------------------------------------------


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")


def _read_bytes(path: PathLike) -> bytes:
    p = Path(path)
    if not p.exists():
        raise BadImageError(path, "file not found")
    if not p.is_file():
        raise BadImageError(path, "not a regular file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise BadImageError(path, f"cannot read file: {exc.strerror or exc}") from exc
    if not data:
        raise BadImageError(path, "empty file (0 bytes)")
    return data


def _open_and_decode(
    name: str, data: bytes, options: ImageOptions, steps: list[str]
) -> tuple[Image.Image, str]:
    """Open, check the header size, pick the first frame and fully decode it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise BadImageError(name, "not an image / cannot identify image format") from exc
    except Image.DecompressionBombError as exc:
        raise BadImageError(name, f"too large: PIL refused it as a decompression bomb ({exc})") from exc
    except MemoryError:
        raise
    except Exception as exc:  # a recognised format with a broken header
        raise BadImageError(name, f"truncated or corrupt image data: {_describe(exc)}") from exc

    width, height = img.size
    if width * height > options.max_pixels:
        raise BadImageError(
            name, f"too large: {width}x{height} = {width * height} pixels > max_pixels {options.max_pixels}"
        )
    if min(width, height) < options.min_side:
        raise BadImageError(name, f"too small: {width}x{height} (min side {options.min_side})")

    try:
        n_frames = getattr(img, "n_frames", 1)
        if n_frames > 1:
            img.seek(0)
            steps.append(f"first_frame_of_{n_frames}")
        mode = img.mode
        rawmode = _tile_rawmode(img)
        img.load()
    except Image.DecompressionBombError as exc:
        raise BadImageError(name, f"too large: PIL refused it as a decompression bomb ({exc})") from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise BadImageError(name, f"truncated or corrupt image data: {_describe(exc)}") from exc
    if mode in ("RGB", "RGBA") and rawmode and ";16" in rawmode:
        steps.append(f"pil_16bit_to_8bit:{rawmode}")
    return img, mode


def _tile_rawmode(img: Image.Image) -> str | None:
    """The raw (on-disk) pixel layout PIL will decode from, e.g. "RGB;16B", if it can be told."""
    for tile in getattr(img, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        if isinstance(args, str):
            return args
        if isinstance(args, tuple) and args and isinstance(args[0], str):
            return args[0]
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _apply_exif_orientation(name: str, img: Image.Image, steps: list[str]) -> Image.Image:
    """Apply the EXIF orientation tag, if any; without one the image is returned as is (no copy)."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION_TAG)
        method = _ORIENTATION_TO_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
        if method is None:
            return img
        transposed = ImageOps.exif_transpose(img)
    except MemoryError:
        raise
    except Exception as exc:
        raise BadImageError(name, f"unreadable EXIF metadata: {_describe(exc)}") from exc
    steps.append(f"exif_transpose:{method.name.lower()}")
    return transposed


# --- conversion to RGB float ---------------------------------------------------------------------------


def _to_rgb_float(name: str, img: Image.Image, background: str, steps: list[str]) -> torch.Tensor:
    """``img`` as a float32 ``(3, H, W)`` tensor in ``[0, 1]``."""
    mode = img.mode
    if mode in _VIA_PIL_CONVERT:
        target = _VIA_PIL_CONVERT[mode]
        img = _pil_convert(name, img, target)
        steps.append(f"{_mode_label(mode)}_to_{target.lower()}:pil")
    elif mode == "P":
        target = "RGBA" if "transparency" in img.info else "RGB"
        img = _pil_convert(name, img, target)
        steps.append(f"palette_to_{target.lower()}")
    mode = img.mode

    if mode in _SIXTEEN_BIT_GRAY_MODES:
        arr = np.asarray(img)
        if mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise BadImageError(
                name, f"unsupported pixel values for mode I: {arr.min()}..{arr.max()} outside 0..65535"
            )
        gray = torch.from_numpy(arr.astype(np.int32)).to(torch.float32) / 65535
        steps += ["uint16_to_float:/65535", "grayscale_to_rgb"]
        return gray.unsqueeze(0).expand(3, -1, -1).clone()

    if mode not in ("RGB", "RGBA", "L", "LA"):
        raise BadImageError(name, f"unsupported mode {mode}")
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32) / 255
    if mode in ("RGBA", "LA"):
        x = _composite(x, arr[:, :, -1], mode, background, steps)
    if x.shape[0] == 1:
        steps.append("grayscale_to_rgb")
        x = x.expand(3, -1, -1).clone()
    return x


def _mode_label(mode: str) -> str:
    return {"1": "bilevel", "RGBa": "premultiplied_rgba", "PA": "palette_alpha"}.get(mode, mode.lower())


def _pil_convert(name: str, img: Image.Image, target: str) -> Image.Image:
    try:
        return img.convert(target)
    except (ValueError, OSError) as exc:
        raise BadImageError(name, f"unsupported mode {img.mode} (cannot convert to {target})") from exc


def _composite(
    x: torch.Tensor, alpha_bytes: np.ndarray, mode: str, background: str, steps: list[str]
) -> torch.Tensor:
    """Colour channels of ``x`` (alpha last) over a black or white background, alpha-weighted in float32."""
    color = x[:-1]
    if alpha_bytes.min() == 255:
        steps.append("alpha_dropped:fully_opaque")
        return color
    alpha = x[-1:]
    if background == "black":
        out = color * alpha
    else:
        out = color * alpha + (1 - alpha)
    steps.append(f"{mode.lower()}_over_{background}")
    return out


# --- resizing --------------------------------------------------------------------------------------------


def _resize_native(x: torch.Tensor, size: int, steps: list[str]) -> torch.Tensor:
    _, height, width = x.shape
    if height == width == size:
        return x
    if height != width:
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        x = x[:, top : top + side, left : left + side]
        steps.append(f"center_crop:{width}x{height}->{side}x{side}@({left},{top})")
    side = x.shape[1]
    if side == size:
        return x.contiguous()
    channels = [
        np.asarray(Image.fromarray(c.numpy()).resize((size, size), Image.Resampling.BICUBIC))
        for c in x.contiguous()
    ]
    out = torch.from_numpy(np.stack(channels).astype(np.float32, copy=False))
    steps.append(f"resize_native:{side}x{side}->{size}x{size}:bicubic_antialias(pil,float32)")
    if out.min() < 0 or out.max() > 1:
        out = out.clamp_(0, 1)
        steps.append("clamp_0_1")
    return out


def _resize_authors(x: torch.Tensor, size: int, steps: list[str]) -> torch.Tensor:
    _, height, width = x.shape
    mid = AUTHORS_INTERMEDIATE_SIZE
    if (height, width) != (mid, mid):
        x = F.interpolate(x[None], size=(mid, mid), mode="area")[0]
        steps.append(f"resize_authors_area:{width}x{height}->{mid}x{mid}:area(torch)")
    if size != mid:
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        x = x[0]
        steps.append(f"resize_authors_bilinear:{mid}x{mid}->{size}x{size}:bilinear(torch,antialias=False)")
    return x
