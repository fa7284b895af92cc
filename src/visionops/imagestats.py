"""Image statistics: the signals the monitor tests for drift, computed once, the same everywhere.

Serving logs them for every prediction; the monitor's reference is built with this same function.
It runs on every request, so it is written for few NumPy calls: a grey image skips the colour work
(its saturation is 0 and its channel means are its brightness).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

STAT_COLUMNS = ("width", "height", "channels", "brightness", "contrast", "sharpness", "saturation",
                "mean_r", "mean_g", "mean_b")
_MAX_SIDE = 256  # statistics of big images are computed on a thumbnail: same values, bounded cost
_LUMA = np.asarray([0.299, 0.587, 0.114]) / 255.0


def _mean_var(x: np.ndarray) -> tuple[float, float]:
    """Mean and variance from one sum and one dot product (float64; a few NumPy calls, not many)."""
    flat = x.ravel()
    mean = float(flat.sum()) / flat.size
    return mean, max(0.0, float(flat @ flat) / flat.size - mean * mean)


def image_stats(img: Image.Image, original_channels: int | None = None) -> dict[str, float]:
    """width/height of the image as decoded; brightness, contrast (std) of luma in [0, 1];
    sharpness = variance of the Laplacian of luma; saturation = mean HSV saturation; channel means."""
    width, height = img.size
    small = img
    if max(width, height) > _MAX_SIDE:
        small = img.copy()
        small.thumbnail((_MAX_SIDE, _MAX_SIDE), Image.Resampling.BILINEAR)
    if small.mode == "RGB" and original_channels == 1:
        small = small.getchannel(0)  # a grey source converted to RGB: its three channels are equal
    elif small.mode not in ("L", "RGB"):
        small = small.convert("RGB")
    if small.mode == "L":
        luma = np.asarray(small, dtype=np.float64) * (1 / 255.0)
        brightness, variance = _mean_var(luma)
        saturation, means = 0.0, (brightness, brightness, brightness)
    else:
        rgb = np.asarray(small)
        luma = rgb @ _LUMA
        mx, mn = rgb.max(axis=2), rgb.min(axis=2)
        saturation = float(np.divide(mx - mn, mx, out=np.zeros(mx.shape), where=mx > 0).mean())
        means = tuple(float(v) for v in rgb.reshape(-1, 3).mean(axis=0, dtype=np.float64) / 255.0)
        brightness, variance = _mean_var(luma)
    if luma.shape[0] >= 3 and luma.shape[1] >= 3:
        lap = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]
        sharpness = _mean_var(lap)[1]
    else:
        sharpness = 0.0
    return {
        "width": float(width), "height": float(height),
        "channels": float(original_channels if original_channels is not None else len(img.getbands())),
        "brightness": brightness, "contrast": variance ** 0.5, "sharpness": sharpness,
        "saturation": saturation, "mean_r": means[0], "mean_g": means[1], "mean_b": means[2],
    }
