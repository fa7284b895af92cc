"""The one image decoder: bytes or a path in, an 8-bit RGB or grayscale PIL image out."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = bytes | bytearray | memoryview | str | os.PathLike

# Formats we accept. SVG and anything Pillow cannot rasterise are refused by name.
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000


_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for magic, fmt in _MAGIC.items() if data.startswith(magic)), None)


class ImageDecodeError(ValueError):
    """An input that is not a usable image. The message says what is wrong with it."""


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float images are scaled to 0..255 by their own range, not clipped."""
    arr = np.asarray(img, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit data: scale by the container's range so a dark 16-bit image stays dark.
        top = 65535.0 if hi > 255 else 255.0
        arr = arr / top * 255.0
    elif hi > lo:
        arr = (arr - lo) / (hi - lo) * 255.0
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def normalize_mode(img: Image.Image, channels: int = 3) -> Image.Image:
    """Convert any PIL mode to 'RGB' (channels=3) or 'L' (channels=1), the same way everywhere.

    Transparency is composited onto white (scans and product shots are on white far more often
    than on black); palette, CMYK, YCbCr, LAB and 16-bit images are converted consistently.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "1":
        img = img.convert("L")
    target = "RGB" if channels == 3 else "L"
    if img.mode != target:
        img = img.convert(target)
    return img


def decode_image(
    source: ImageSource,
    channels: int = 3,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode an image fully, honour EXIF orientation, and return it as RGB or L.

    Raises ImageDecodeError with a message a client can act on for empty, oversize, truncated,
    non-image and decompression-bomb inputs.
    """
    return decode_with_info(source, channels, max_bytes, max_pixels)[0]


# Where Pillow finds an EXIF orientation (Image.getexif): EXIF bytes in the info (JPEG, PNG's eXIf,
# WebP), PNG's text chunk of raw EXIF, TIFF tags, XMP. An image with none of them is upright, and
# skipping exif_transpose for it (which parses and copies) saves a third of a small upload's decode.
_ORIENTATION_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def _may_carry_orientation(img: Image.Image) -> bool:
    return hasattr(img, "tag_v2") or any(k in img.info for k in _ORIENTATION_KEYS)


def decode_with_info(
    source: ImageSource,
    channels: int = 3,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[Image.Image, dict[str, object]]:
    """`decode_image`, plus what the original was: format, mode, channel count, byte size."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ImageDecodeError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if size > max_bytes:
            raise ImageDecodeError(f"image is {size} bytes, over the limit of {max_bytes} bytes")
        data = path.read_bytes()
    else:
        data = bytes(source)
    if len(data) == 0:
        raise ImageDecodeError("the upload is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageDecodeError(f"image is {len(data)} bytes, over the limit of {max_bytes} bytes")
    head = data[:256].lstrip().lower()
    if head.startswith((b"<?xml", b"<svg")) or b"<svg" in head:
        raise ImageDecodeError("SVG is not supported: send a raster image (JPEG, PNG, WebP, BMP)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{max_pixels} pixels"
                )
            if fmt not in ALLOWED_FORMATS:
                raise ImageDecodeError(f"unsupported image format {fmt!r}")
            img.load()
            original_mode = img.mode
            if _may_carry_orientation(img):
                img = ImageOps.exif_transpose(img) or img
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"image rejected as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        if _sniff(data):
            raise ImageDecodeError(f"image is corrupt or truncated: it starts like a {_sniff(data)} file but does not decode") from exc
        raise ImageDecodeError(
            "not a recognised image: send JPEG, PNG, WebP or BMP bytes"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"image is corrupt or truncated: {exc}") from exc
    info = {"format": fmt, "mode": original_mode, "channels": Image.getmodebands(original_mode) if original_mode != "P" else 3,
            "bytes": len(data)}
    return normalize_mode(img, channels), info


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under `folder` (by suffix), sorted by path."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted((p for p in found if p.is_file() and is_image_file(p)), key=str)
