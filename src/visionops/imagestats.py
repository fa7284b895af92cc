"""Image statistics: the signals the monitor tests for drift, computed once, the same everywhere.

Serving logs them for every prediction; the monitor's reference is built with this same function.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

STAT_COLUMNS = ("width", "height", "channels", "brightness", "contrast", "sharpness", "saturation",
                "mean_r", "mean_g", "mean_b")
_MAX_SIDE = 256  # statistics of big images are computed on a thumbnail: same values, bounded cost


def image_stats(img: Image.Image, original_channels: int | None = None) -> dict[str, float]:
    """width/height of the image as decoded; brightness, contrast (std) of luma in [0, 1];
    sharpness = variance of the Laplacian of luma; saturation = mean HSV saturation; channel means."""
    width, height = img.size
    small = img
    if max(width, height) > _MAX_SIDE:
        small = img.copy()
        small.thumbnail((_MAX_SIDE, _MAX_SIDE), Image.Resampling.BILINEAR)
    rgb = np.asarray(small.convert("RGB"), dtype=np.float32) / 255.0
    luma = rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    if luma.shape[0] >= 3 and luma.shape[1] >= 3:
        lap = (luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1])
        sharpness = float(lap.var())
    else:
        sharpness = 0.0
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    saturation = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    means = rgb.reshape(-1, 3).mean(axis=0)
    return {
        "width": float(width), "height": float(height),
        "channels": float(original_channels if original_channels is not None else len(img.getbands())),
        "brightness": float(luma.mean()), "contrast": float(luma.std()), "sharpness": sharpness,
        "saturation": float(saturation.mean()),
        "mean_r": float(means[0]), "mean_g": float(means[1]), "mean_b": float(means[2]),
    }
