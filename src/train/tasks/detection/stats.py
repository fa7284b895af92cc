"""The prepared detection splits on disk, and their statistics for reports/prepare/ and `dvc plots`.

Prepared: `<out>/{train,val,test}.json` (each a COCO file) and `<out>/labels.json` (category names
in label order, with their COCO ids). Reports: `stats.json` (headline numbers: `dvc metrics show`),
`dataset.json` (the detail: per split, what was dropped and why), and three CSVs drawn as bars
per split by DVC's `class_counts` template: `class_counts.csv` (class,split,count: objects per
class), `objects_per_image.csv` (objects,split,images) and `box_sizes.csv` (size,split,boxes:
COCO's small < 32², medium < 96², large, by box area in original-image pixels).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from train.tasks.detection.boxes import size_bucket
from train.tasks.detection.coco import SPLITS, PreparedCoco

SIZES = ("small", "medium", "large")


def split_stats(coco: dict[str, Any]) -> dict[str, Any]:
    """Images, objects, negatives, objects per image, box sizes and class counts of one split."""
    names = {c["id"]: str(c["name"]) for c in coco["categories"]}
    per_image = Counter(a["image_id"] for a in coco["annotations"])
    objects_per_image = Counter(per_image.get(im["id"], 0) for im in coco["images"])
    areas = np.array([a["bbox"][2] * a["bbox"][3] for a in coco["annotations"]], dtype=np.float64)
    sides = np.sqrt(areas)
    classes = Counter(names[a["category_id"]] for a in coco["annotations"])
    return {
        "images": len(coco["images"]),
        "objects": len(coco["annotations"]),
        "negatives": objects_per_image.get(0, 0),
        "objects_per_image": {str(k): objects_per_image[k] for k in sorted(objects_per_image)},
        "box_sizes": {s: int(sum(size_bucket(a) == s for a in areas)) for s in SIZES},
        "box_side_px": ({q: round(float(np.percentile(sides, p)), 1) for q, p in (("p05", 5), ("p50", 50), ("p95", 95))}
                        if sides.size else {}),
        "class_counts": {names[c["id"]]: classes.get(names[c["id"]], 0) for c in coco["categories"]},
    }


def write_prepared(prepared: PreparedCoco, out: Path) -> None:
    """Each split as `<out>/<split>.json` and the label order as `<out>/labels.json`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (out / f"{split}.json").write_text(json.dumps(prepared.splits[split], separators=(",", ":")) + "\n")
    labels = {"labels": [str(c["name"]) for c in prepared.categories],
              "category_ids": [c["id"] for c in prepared.categories]}
    (out / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")


def write_reports(prepared: PreparedCoco, reports: Path) -> dict[str, Any]:
    """stats.json, dataset.json and the three CSVs under `reports`; returns the summary."""
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    per_split = {s: split_stats(prepared.splits[s]) for s in SPLITS}
    summary = {
        "images": sum(v["images"] for v in per_split.values()),
        "objects": sum(v["objects"] for v in per_split.values()),
        "classes": len(prepared.categories),
        "split_sizes": {s: per_split[s]["images"] for s in SPLITS},
        "dropped_images": prepared.dropped_images,
        "dropped_annotations": prepared.dropped_annotations,
        "clipped_boxes": prepared.clipped_boxes,
    }
    # stats.json is a DVC metric: headline numbers only, so `dvc metrics show` stays one screen wide.
    headline = {k: summary[k] for k in ("images", "objects", "classes")}
    (reports / "stats.json").write_text(json.dumps(headline, indent=2) + "\n")
    detail = {
        **summary,
        "problems_by_kind": dict(sorted(Counter(p.kind for p in prepared.problems).items())),
        "problems": [p.to_dict() for p in prepared.problems],
        "unused_categories": prepared.unused_categories,
        "per_split": per_split,
    }
    (reports / "dataset.json").write_text(json.dumps(detail, indent=2) + "\n")
    _csv(reports / "class_counts.csv", "class,split,count",
         [(c, s, n) for s in SPLITS for c, n in per_split[s]["class_counts"].items()])
    most = max((int(k) for v in per_split.values() for k in v["objects_per_image"]), default=0)
    _csv(reports / "objects_per_image.csv", "objects,split,images",
         [(k, s, per_split[s]["objects_per_image"].get(str(k), 0)) for s in SPLITS for k in range(most + 1)])
    _csv(reports / "box_sizes.csv", "size,split,boxes",
         [(size, s, per_split[s]["box_sizes"][size]) for s in SPLITS for size in SIZES])
    return summary


def _csv(path: Path, header: str, rows: list[tuple[Any, ...]]) -> None:
    with open(path, "w") as fh:
        fh.write(header + "\n")
        fh.writelines(",".join(str(v) for v in row) + "\n" for row in rows)
