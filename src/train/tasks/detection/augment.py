"""Detection augmentation: an albumentations preset whose boxes follow every geometric transform.

Presets are `conf/augment/det_{none,light,strong}.yaml`: `transforms` (albumentations `_target_`
configs, as classification's presets) and `min_visibility`. Boxes are [x1, y1, x2, y2] pixels
(`pascal_voc`) with their labels in `labels`; a box pushed partly out of the image is clipped to
it, and dropped with its label when less than `min_visibility` of its area stays inside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import numpy as np
from hydra.utils import instantiate

DEFAULT_MIN_VISIBILITY = 0.3


def bbox_params(min_visibility: float = DEFAULT_MIN_VISIBILITY) -> A.BboxParams:
    """The box handling every detection Compose uses."""
    return A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=min_visibility, clip=True)


def build_detection_augment(
    transforms_cfg: Sequence[Any] | None,
    min_visibility: float = DEFAULT_MIN_VISIBILITY,
    seed: int | None = None,
) -> A.Compose | None:
    """The preset's transforms as one box-aware Compose; None for an empty preset.

    As for classification, albumentations keeps its own RNG: the seed is passed here, and each
    DataLoader worker re-seeds its copy."""
    if not transforms_cfg:
        return None
    return A.Compose([instantiate(t) for t in transforms_cfg], bbox_params=bbox_params(min_visibility), seed=seed)


def from_config(augment_cfg: Mapping[str, Any], seed: int | None = None) -> A.Compose | None:
    """`build_detection_augment` from an `augment` config section (det_none/det_light/det_strong)."""
    return build_detection_augment(augment_cfg.get("transforms"),
                                   float(augment_cfg.get("min_visibility", DEFAULT_MIN_VISIBILITY)), seed)


def apply(
    augment: A.Compose, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run `augment` on a uint8 HWC image with (N, 4) pascal_voc boxes and (N,) labels; returns the
    image and the boxes (float32) and labels (int64) that survived."""
    out = augment(image=image, bboxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                  labels=np.asarray(labels, dtype=np.int64))
    kept = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    return out["image"], kept, np.asarray(out["labels"], dtype=np.int64).reshape(-1)
