"""Box formats, converted in one place: COCO files hold [x, y, w, h] in pixels; the training side
(albumentations' `pascal_voc`, torchvision, torchmetrics) uses [x1, y1, x2, y2] in pixels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# COCO's object size buckets, by area in pixels (the evaluator's `area` ranges).
SMALL_MAX = 32 * 32
MEDIUM_MAX = 96 * 96


def xywh_to_xyxy(boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """(N, 4) COCO [x, y, w, h] -> (N, 4) float32 [x1, y1, x2, y2]; an empty input gives shape (0, 4)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def xyxy_to_xywh(boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """(N, 4) [x1, y1, x2, y2] -> (N, 4) float32 COCO [x, y, w, h]."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def size_bucket(area: float) -> str:
    """COCO's bucket for an object of `area` pixels: small (< 32²), medium (< 96²) or large."""
    if area < SMALL_MAX:
        return "small"
    return "medium" if area < MEDIUM_MAX else "large"


def scale_boxes(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """[x1, y1, x2, y2] boxes of an image resized by (sx, sy) along (x, y)."""
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], dtype=np.float32))
