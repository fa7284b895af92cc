"""The torch Dataset over one prepared split (a COCO dict) and its collate function.

Per image: decode (visionops.images) -> resize to the spec's size as uint8 (visionops.preprocess
`to_uint8`, the evaluation and serving path; boxes scaled with it, per axis) -> [train only: the
box-aware augmentation] -> normalise (visionops.preprocess `normalize`). The target holds `boxes`
(float32 (N, 4) [x1, y1, x2, y2] in input pixels), `labels` (int64 (N,): the category's position in
the split's `categories`, sorted by id), `image_id` and `orig_size` ([height, width] of the image
as stored, to map predictions back). Crowd annotations (`iscrowd: 1`) are left out of the targets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from train.tasks.detection.augment import apply
from train.tasks.detection.boxes import scale_boxes, xywh_to_xyxy
from visionops.images import decode_image
from visionops.preprocess import PreprocessSpec, normalize, to_uint8

Target = dict[str, torch.Tensor]


def read_split(path: str | Path) -> dict[str, Any]:
    """A prepared split (`<prepared>/<split>.json`) as a COCO dict."""
    return json.loads(Path(path).read_text())


def label_names(coco: dict[str, Any]) -> list[str]:
    """Category names in label order (label index = position)."""
    return [str(c["name"]) for c in sorted(coco["categories"], key=lambda c: c["id"])]


class CocoDetectionDataset(Dataset):
    """(image tensor (C, H, W) float32, target) for each image of a COCO dict, in `images` order."""

    def __init__(
        self,
        coco: dict[str, Any],
        spec: PreprocessSpec,
        augment: A.Compose | None = None,
        image_root: str | Path | None = None,
        cache: bool = False,
    ):
        self.spec = spec
        self.augment = augment
        self.image_root = Path(image_root) if image_root is not None else None
        self.images = list(coco["images"])
        label_of = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
        anns: dict[Any, list[dict]] = {im["id"]: [] for im in self.images}
        for a in coco["annotations"]:
            if not a.get("iscrowd", 0) and a["image_id"] in anns:
                anns[a["image_id"]].append(a)
        self.boxes = [xywh_to_xyxy([a["bbox"] for a in anns[im["id"]]]) for im in self.images]
        self.labels = [np.array([label_of[a["category_id"]] for a in anns[im["id"]]], dtype=np.int64)
                       for im in self.images]
        self._cache: list[tuple[np.ndarray, np.ndarray, tuple[int, int]]] | None = None
        if cache:
            self._cache = [self._load(i) for i in range(len(self.images))]

    def path(self, i: int) -> Path:
        name = Path(self.images[i]["file_name"])
        return self.image_root / name if self.image_root is not None else name

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """(uint8 HWC at the input size, boxes in input pixels, (height, width) as stored)."""
        img = decode_image(self.path(i), channels=self.spec.channels)
        w, h = img.size
        arr = to_uint8(img, self.spec)
        ih, iw = self.spec.size
        boxes = scale_boxes(self.boxes[i], iw / w, ih / h)
        boxes = np.clip(boxes, 0, np.array([iw, ih, iw, ih], dtype=np.float32))
        return arr, boxes, (h, w)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        arr, boxes, (h, w) = self._cache[i] if self._cache is not None else self._load(i)
        labels = self.labels[i]
        if self.augment is not None:
            arr, boxes, labels = apply(self.augment, arr, boxes, labels)
            if arr.ndim == 2:
                arr = arr[:, :, None]
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)),
            "image_id": torch.tensor(self.images[i]["id"], dtype=torch.int64),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }
        return torch.from_numpy(normalize(arr, self.spec)), target


def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Images stacked into one (B, C, H, W) tensor (every image has the spec's size); targets as a
    list, since images hold different numbers of boxes."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: Lightning's seeding, and a distinct, reproducible seed for the
    dataset's albumentations RNG in each worker (albumentations ignores global seeding)."""
    from lightning.fabric.utilities.seed import pl_worker_init_function

    pl_worker_init_function(worker_id)
    info = torch.utils.data.get_worker_info()
    augment = getattr(info.dataset, "augment", None) if info is not None else None
    if augment is not None:
        augment.set_random_seed(torch.initial_seed() % 2**32)
