"""Image loading: the one way every phase decodes an image.

`load_rgb` applies a decompression-bomb guard, the EXIF orientation, and converts any PIL mode
to 8-bit RGB (16-bit and float data scaled, not clipped; transparency composited on white). An
animated or multi-page file gives its first frame. `decode` is the audit's per-file work (sha256,
decode, pHash), run in a bounded worker process (`pipeline.data.bounded`).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

_OPEN_LOCK = threading.Lock()
_OBJECT_REPR = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")
_ORIENTATION_TAG = 0x0112
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class ImageLoadError(Exception):
    """An image that cannot be used."""


class DecodeError(ImageLoadError):
    """The file is not a decodable image (corrupt, truncated, unknown format)."""


class DecompressionBomb(ImageLoadError):
    """The image has more pixels than allowed."""


def _open(source: str | os.PathLike[str] | bytes, max_pixels: int) -> Image.Image:
    """Open from memory (no file handle stays open) and enforce `max_pixels` before decoding.

    PIL's global MAX_IMAGE_PIXELS is swapped out under a lock only while the header is parsed, and
    the limit is checked here instead, so that exceeding it at all (PIL's warning level) is an error
    and concurrent loads with other limits cannot interfere.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with _OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    w, h = im.size
    if w * h > max_pixels:
        raise DecompressionBomb(f"{w}x{h} = {w * h} pixels exceeds max_pixels {max_pixels}")
    return im


def _gray_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Scale one-channel 16-bit, 32-bit integer or float data to 0..255."""
    if mode.startswith("I;16"):
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "F" and lo >= 0 and hi <= 1:
        scaled = a * 255
    elif lo >= 0 and hi <= 255:
        scaled = a
    elif mode == "I" and lo >= 0 and hi <= 65535:
        scaled = a / 257
    else:  # outside every known range: stretch min..max
        scaled = (a - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_gray_to_uint8(np.asarray(im), mode), "L").convert("RGB")
    return im.convert("RGB")


def load_rgb(source: str | os.PathLike[str] | bytes, max_pixels: int) -> tuple[Image.Image, dict[str, Any]]:
    """Decode an image (a path or its bytes) to EXIF-oriented 8-bit RGB.

    Returns (image, info) with info = {orig_mode, exif_rotated, width, height}. Raises
    DecompressionBomb above `max_pixels`, DecodeError for anything PIL cannot decode.
    """
    try:
        im = _open(source, max_pixels)
        im.load()
        orig_mode = im.mode
        rotated = im.getexif().get(_ORIENTATION_TAG, 1) in range(2, 9)
        out = to_rgb(ImageOps.exif_transpose(im) if rotated else im)
    except (ImageLoadError, MemoryError):  # out of memory is a cost, not a broken file: the caller decides
        raise
    except Image.DecompressionBombError as exc:
        raise DecompressionBomb(str(exc)) from exc
    except Exception as exc:  # PIL raises many kinds (OSError, SyntaxError, ValueError, struct.error...)
        message = _OBJECT_REPR.sub("", str(exc))  # "<_io.BytesIO object at 0x...>" would break determinism
        raise DecodeError(f"{type(exc).__name__}: {message}") from exc
    return out, {"orig_mode": orig_mode, "exif_rotated": rotated, "width": out.width, "height": out.height}


def phash(img: Image.Image) -> int:
    """64-bit perceptual hash (imagehash.phash) as an unsigned int."""
    import imagehash

    return int(str(imagehash.phash(img)), 16)


@dataclass
class Decoded:
    """What decoding one file gave: its id and image facts, or the reason it failed."""

    item_id: str | None = None
    width: int = 0
    height: int = 0
    orig_mode: str = ""
    exif_rotated: bool = False
    phash: int = 0
    error: tuple[str, str] | None = None  # (reason, detail)


def decode(path: str | os.PathLike[str], max_pixels: int) -> Decoded:
    """Read a file once: sha256 of its bytes, decode, pHash."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return Decoded(error=("decode_error", f"unreadable: {exc.strerror or type(exc).__name__}"))
    item_id = hashlib.sha256(data).hexdigest()
    try:
        img, info = load_rgb(data, max_pixels)
    except DecompressionBomb as exc:
        return Decoded(item_id, error=("decompression_bomb", str(exc)))
    except DecodeError as exc:
        return Decoded(item_id, error=("decode_error", str(exc)))
    return Decoded(item_id, info["width"], info["height"], info["orig_mode"], info["exif_rotated"], phash(img))
