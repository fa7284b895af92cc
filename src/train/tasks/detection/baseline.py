"""A non-learned detector, to show what the bundled dataset asks of a model.

Per image, on grey levels: subtract a heavily blurred copy (the local background), threshold the
difference at a few robust standard deviations on each side (dark ink and light ink), close small
gaps, and take each connected component whose box size and shape fall in the range the training
split's boxes cover as one detection, scored by its contrast and labelled with the training split's
most frequent class. Scored with COCO mAP (torchmetrics' MeanAveragePrecision, faster-coco-eval
backend) on a prepared split, with the real labels and class-agnostic (every box one class: how
well it finds the objects at all).

    python -m train.tasks.detection.baseline data/prepared/digits_det [split=test] [out=FILE.json]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from skimage.filters import gaussian
from skimage.measure import label, regionprops
from skimage.morphology import closing, disk

from train.tasks.detection.boxes import xywh_to_xyxy
from train.tasks.detection.dataset import read_split
from visionops.images import decode_image


def box_ranges(coco: dict[str, Any]) -> dict[str, float]:
    """The 1st-99th percentile of the boxes' side (sqrt of area) and aspect (w / h) in a split."""
    b = np.array([a["bbox"] for a in coco["annotations"]], dtype=np.float64).reshape(-1, 4)
    side, aspect = np.sqrt(b[:, 2] * b[:, 3]), b[:, 2] / b[:, 3]
    return {"side_min": float(np.percentile(side, 1)), "side_max": float(np.percentile(side, 99)),
            "aspect_min": float(np.percentile(aspect, 1)), "aspect_max": float(np.percentile(aspect, 99))}


def detect(gray: np.ndarray, ranges: dict[str, float], k: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [x1, y1, x2, y2] (float32, (N, 4)) and scores (N,) in a float grey image in [0, 1]."""
    diff = gray - gaussian(gray, sigma=max(gray.shape) / 24)
    spread = 1.4826 * np.median(np.abs(diff - np.median(diff))) + 1e-3
    boxes, scores = [], []
    for mask in (diff < -k * spread, diff > k * spread):  # dark ink, light ink
        for region in regionprops(label(closing(mask, disk(1)))):
            y1, x1, y2, x2 = region.bbox
            w, h = x2 - x1, y2 - y1
            side = np.sqrt(w * h)
            if not (ranges["side_min"] <= side <= ranges["side_max"]
                    and ranges["aspect_min"] <= w / h <= ranges["aspect_max"]):
                continue
            boxes.append([x1, y1, x2, y2])
            scores.append(float(np.abs(diff[region.coords[:, 0], region.coords[:, 1]]).mean() / spread)
                          * min(1.0, region.area / (0.2 * w * h)))
    return np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(scores, dtype=np.float32)


def evaluate(train: dict[str, Any], split: dict[str, Any], image_root: Path | None = None) -> dict[str, float]:
    """The baseline's COCO metrics on `split` (map, map_50, map_75 with the labels, and the same
    class-agnostic), with the box ranges and the label taken from `train`."""
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    ranges = box_ranges(train)
    majority = Counter(a["category_id"] for a in train["annotations"]).most_common(1)[0][0]
    label_of = {c["id"]: i for i, c in enumerate(sorted(split["categories"], key=lambda c: c["id"]))}
    anns: dict[Any, list[dict]] = {im["id"]: [] for im in split["images"]}
    for a in split["annotations"]:
        anns[a["image_id"]].append(a)
    preds, targets, agnostic_preds, agnostic_targets = [], [], [], []
    for im in split["images"]:
        path = (image_root / im["file_name"]) if image_root else Path(im["file_name"])
        gray = np.asarray(decode_image(path, channels=1), dtype=np.float32) / 255.0
        boxes, scores = detect(gray, ranges)
        gt = torch.from_numpy(xywh_to_xyxy([a["bbox"] for a in anns[im["id"]]]))
        gt_labels = torch.tensor([label_of[a["category_id"]] for a in anns[im["id"]]], dtype=torch.int64)
        pb, ps = torch.from_numpy(boxes), torch.from_numpy(scores)
        preds.append({"boxes": pb, "scores": ps, "labels": torch.full((len(pb),), label_of[majority])})
        targets.append({"boxes": gt, "labels": gt_labels})
        agnostic_preds.append({"boxes": pb, "scores": ps, "labels": torch.zeros(len(pb), dtype=torch.int64)})
        agnostic_targets.append({"boxes": gt, "labels": torch.zeros(len(gt), dtype=torch.int64)})
    out: dict[str, float] = {}
    for prefix, p, t in (("", preds, targets), ("agnostic_", agnostic_preds, agnostic_targets)):
        metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")
        metric.update(p, t)
        result = metric.compute()
        out.update({f"{prefix}{k}": round(float(result[k]), 4) for k in ("map", "map_50", "map_75")})
    out["detections_per_image"] = round(sum(len(p["boxes"]) for p in preds) / max(len(preds), 1), 2)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    prepared, split, out = Path("data/prepared/digits_det"), "test", None
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq:
            prepared = Path(arg)
        elif key == "split":
            split = value
        elif key == "out":
            out = Path(value)
        else:
            raise SystemExit(f"unknown argument {arg!r}: usage: python -m train.tasks.detection.baseline "
                             "PREPARED_DIR [split=test] [out=FILE.json]")
    metrics = evaluate(read_split(prepared / "train.json"), read_split(prepared / f"{split}.json"))
    text = json.dumps({"split": split, **metrics}, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
