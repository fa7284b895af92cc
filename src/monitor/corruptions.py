"""Image corruptions at five severities (after ImageNet-C / CIFAR-10-C), numpy and Pillow only.

    from monitor.corruptions import corrupt
    img2 = corrupt(img, "gaussian_noise", severity=3, seed=7)   # same inputs -> same pixels

Parameters are those of CIFAR-10-C at 32 px; sizes in pixels (blur radius, rotation canvas)
scale with the image's shorter side above 32 px. The output has the input's size and mode
(L stays L, RGB stays RGB), so the service sees the same kind of upload, only degraded.
Used by `python -m monitor.simulate`, the drift tests and the benchmarks.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

CORRUPTIONS = ("none", "gaussian_noise", "blur", "brightness", "contrast", "jpeg", "pixelate", "rotate")

# Index = severity - 1.
_NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)          # ImageNet-C gaussian_noise, fraction of 255
_BLUR_SIGMA = (0.4, 0.6, 0.8, 1.0, 1.5)              # CIFAR-10-C gaussian_blur at 32 px
_BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)              # added to every channel, fraction of 255
_CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)              # CIFAR-10-C contrast: (x - mean) * c + mean
_JPEG_QUALITY = (80, 65, 58, 50, 40)                 # CIFAR-10-C jpeg_compression
_PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)            # CIFAR-10-C pixelate: downscale factor
_ROTATE_DEG = (10, 20, 30, 45, 60)


def _scale(img: Image.Image) -> float:
    return max(1.0, min(img.size) / 32.0)


def _array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) / 255.0


def _image(arr: np.ndarray, mode: str) -> Image.Image:
    return Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), mode=mode)


def gaussian_noise(img: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    x = _array(img)
    return _image(x + rng.normal(0.0, _NOISE_STD[severity - 1], x.shape).astype(np.float32), img.mode)


def blur(img: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=_BLUR_SIGMA[severity - 1] * _scale(img)))


def brightness(img: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    return _image(_array(img) + _BRIGHTNESS[severity - 1], img.mode)


def contrast(img: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    x = _array(img)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return _image((x - mean) * _CONTRAST[severity - 1] + mean, img.mode)


def jpeg(img: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=_JPEG_QUALITY[severity - 1])
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out.convert(img.mode)


def pixelate(img: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    c = _PIXELATE[severity - 1]
    small = img.resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX)
    return small.resize((w, h), Image.Resampling.NEAREST)


def rotate(img: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Rotation by the severity's angle (random sign, +-20% jitter); corners filled with the
    median border colour so the image stays the same kind of picture."""
    angle = _ROTATE_DEG[severity - 1] * float(rng.uniform(0.8, 1.2)) * (1 if rng.random() < 0.5 else -1)
    arr = np.asarray(img)
    border = np.concatenate([arr[0].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1),
                             arr[-1].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1),
                             arr[:, 0].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1),
                             arr[:, -1].reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1)])
    fill = tuple(int(v) for v in np.median(border, axis=0))
    return img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=fill[0] if img.mode == "L" else fill)


_FUNCS: dict[str, Callable[[Image.Image, int, np.random.Generator], Image.Image]] = {
    "gaussian_noise": gaussian_noise, "blur": blur, "brightness": brightness, "contrast": contrast,
    "jpeg": jpeg, "pixelate": pixelate, "rotate": rotate,
}


def corrupt(img: Image.Image, name: str, severity: int = 3, seed: int | np.random.Generator = 0) -> Image.Image:
    """`img` corrupted by `name` at `severity` (1..5); deterministic for a given seed."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: choose one of {', '.join(CORRUPTIONS)}")
    if name == "none":
        return img.copy()
    if not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return _FUNCS[name](img, int(severity), rng)


def to_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def corrupt_bytes(data: bytes, name: str, severity: int = 3, seed: int | np.random.Generator = 0) -> bytes:
    """Encoded image in, PNG of the corrupted image out (the simulator's upload). Decoded by the
    shared decoder (EXIF rotation, transparency on white); a grey image stays grey."""
    from visionops.images import decode_with_info

    img, info = decode_with_info(data, channels=3)
    if info["channels"] == 1:
        img = img.convert("L")
    return to_png(corrupt(img, name, severity, seed))
