"""Judging a detector on a prepared split: COCO metrics, precision-recall curves, a confusion matrix.

Predictions are mapped back to each image's own pixels (the model sees it resized to the input
size) and compared with the split's COCO boxes as annotated, crowd regions included, so the size
buckets (COCO's small < 32², medium < 96², large) mean what they mean in COCO. The evaluator is
torchmetrics' MeanAveragePrecision with the faster-coco-eval backend.

- `coco_metrics`: `<split>/map` (mAP@[.5:.95]), `map_50`, `map_75`, `map_small|medium|large`,
  `mar_1|10|100`, `mar_small|medium|large`, and per class AP, AP@0.5, AR@100 and the object count.
- `pr_curves`: precision at each of COCO's 101 recall points per class (IoU 0.5, all sizes).
- `confusion`: detections scoring at least a threshold matched one-to-one to true boxes by IoU,
  whatever their class; a true box left unmatched counts as predicted `background` (missed), a
  detection left unmatched as actually `background` (spurious).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from train.tasks.detection.boxes import xywh_to_xyxy
from train.tasks.detection.dataset import CocoDetectionDataset, collate
from train.tasks.detection.module import mean_average_precision
from visionops.preprocess import PreprocessSpec

Detections = list[dict[str, torch.Tensor]]
BACKGROUND = "background"
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def ground_truth(coco: dict[str, Any]) -> Detections:
    """Per image of the split (in `images` order): true boxes [x1, y1, x2, y2] in the image's own
    pixels, labels (position of the category in id order) and crowd flags."""
    label_of = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    anns: dict[Any, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        if a["image_id"] in anns:
            anns[a["image_id"]].append(a)
    return [{"boxes": torch.from_numpy(xywh_to_xyxy([a["bbox"] for a in anns[im["id"]]])),
             "labels": torch.tensor([label_of[a["category_id"]] for a in anns[im["id"]]], dtype=torch.int64),
             "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns[im["id"]]], dtype=torch.int64)}
            for im in coco["images"]]


@torch.inference_mode()
def predict_split(model: torch.nn.Module, coco: dict[str, Any], spec: PreprocessSpec, batch_size: int = 32,
                  keep_first: int = 0) -> tuple[Detections, tuple[torch.Tensor, Detections, Detections] | None]:
    """The model's detections on every image of a COCO split, in the image's own pixels; and the
    first `keep_first` inputs with their targets and detections in input pixels (for a picture)."""
    model.eval()
    loader = DataLoader(CocoDetectionDataset(coco, spec), batch_size=batch_size, collate_fn=collate)
    ih, iw = spec.size
    out: Detections = []
    first = None
    for x, targets in loader:
        preds = model(x)
        if first is None and keep_first:
            first = (x[:keep_first], targets[:keep_first], preds[:keep_first])
        for p, t in zip(preds, targets):
            h, w = (int(v) for v in t["orig_size"])
            scale = torch.tensor([w / iw, h / ih, w / iw, h / ih], dtype=torch.float32)
            out.append({"boxes": p["boxes"].float().cpu() * scale, "scores": p["scores"].float().cpu(),
                        "labels": p["labels"].long().cpu()})
    return out, first


def _num(v: torch.Tensor) -> float | None:
    """COCO's -1 ("nothing to measure": no object of that size or class) becomes None."""
    f = float(v)
    return None if f < 0 else f


def coco_metrics(preds: Detections, truth: Detections, labels: list[str], prefix: str) -> tuple[dict[str, Any], Any]:
    """The COCO metrics of a split (module docstring) and torchmetrics' raw result (for the curves)."""
    metric = mean_average_precision(class_metrics=True, extended_summary=True)
    metric.update(preds, truth)
    r = metric.compute()
    keys = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
            "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")
    m: dict[str, Any] = {f"{prefix}/{k}": _num(r[k]) for k in keys}
    m[f"{prefix}/n"] = len(truth)
    m[f"{prefix}/objects"] = int(sum(int((t["iscrowd"] == 0).sum()) for t in truth))
    counts = np.bincount(np.concatenate([np.zeros(0, np.int64), *(t["labels"][t["iscrowd"] == 0].numpy() for t in truth)])
                         .astype(np.int64), minlength=len(labels))
    classes = [int(c) for c in np.atleast_1d(r["classes"].numpy())]
    precision = r["precision"].numpy()  # (iou thresholds, recall points, classes, areas, max dets)
    per_class = {}
    for i, name in enumerate(labels):
        k = classes.index(i) if i in classes else None
        ap = _num(np.atleast_1d(r["map_per_class"].numpy())[k]) if k is not None else None
        ar = _num(np.atleast_1d(r["mar_100_per_class"].numpy())[k]) if k is not None else None
        p50 = precision[0, :, k, 0, -1] if k is not None else np.array([-1.0])
        per_class[name] = {"ap": ap, "ap_50": float(p50.mean()) if (p50 > -1).all() else None,
                           "ar_100": ar, "objects": int(counts[i])}
    m["per_class"] = per_class
    return m, r


def pr_curves(raw: Any, labels: list[str]) -> list[tuple[str, float, float]]:
    """(class, recall, precision) at COCO's 101 recall points, IoU 0.5, every size, 100 detections;
    classes without true boxes are left out."""
    classes = [int(c) for c in np.atleast_1d(raw["classes"].numpy())]
    precision = raw["precision"].numpy()
    rows = []
    for k, c in enumerate(classes):
        p = precision[0, :, k, 0, -1]
        if c < len(labels) and (p > -1).all():
            rows += [(labels[c], float(rc), float(pc)) for rc, pc in zip(RECALL_POINTS, p)]
    return rows


def confusion(preds: Detections, truth: Detections, num_classes: int, score_threshold: float = 0.3,
              iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(actual, predicted) class index per matched pair, missed box and spurious detection; index
    `num_classes` is the background (see the module docstring). Crowd regions are left out."""
    from torchvision.ops import box_iou

    actual, predicted = [], []
    bg = num_classes
    for p, t in zip(preds, truth):
        keep = p["scores"] >= score_threshold
        pb, pl = p["boxes"][keep], p["labels"][keep]
        real = t["iscrowd"] == 0
        tb, tl = t["boxes"][real], t["labels"][real]
        matched_t, matched_p = set(), set()
        if len(pb) and len(tb):
            iou = box_iou(tb, pb)
            pairs = [(float(iou[i, j]), i, j) for i, j in zip(*torch.nonzero(iou >= iou_threshold, as_tuple=True))]
            for _, i, j in sorted(pairs, key=lambda q: -q[0]):
                i, j = int(i), int(j)
                if i in matched_t or j in matched_p:
                    continue
                matched_t.add(i)
                matched_p.add(j)
                actual.append(int(tl[i]))
                predicted.append(int(pl[j]))
        actual += [int(tl[i]) for i in range(len(tb)) if i not in matched_t]
        predicted += [bg] * (len(tb) - len(matched_t))
        actual += [bg] * (len(pb) - len(matched_p))
        predicted += [int(pl[j]) for j in range(len(pb)) if j not in matched_p]
    return np.asarray(actual, dtype=np.int64), np.asarray(predicted, dtype=np.int64)


def write_csv(path: Path, header: list[str], rows: list[tuple[Any, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows([f"{v:.6g}" if isinstance(v, float) else v for v in row] for row in rows)
    return path
