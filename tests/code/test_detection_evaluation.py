"""Detection's evaluation on hand-made boxes: COCO metrics (faster-coco-eval through torchmetrics),
precision-recall curves and the confusion matrix with a background class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.tasks.detection.evaluation import coco_metrics, confusion, ground_truth, pr_curves

LABELS = ["cat", "dog", "bird"]


def truth(boxes, labels, crowd=None):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.int64),
            "iscrowd": torch.tensor(crowd if crowd is not None else [0] * len(labels), dtype=torch.int64)}


def det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64)}


TRUTH = [truth([[10, 10, 60, 60], [100, 100, 200, 220]], [0, 1]), truth([[5, 5, 20, 20]], [1]), truth([], [])]


def test_perfect_detections_score_one_everywhere_measurable():
    preds = [det(t["boxes"].tolist(), [0.9] * len(t["labels"]), t["labels"].tolist()) for t in TRUTH]
    m, _ = coco_metrics(preds, TRUTH, LABELS, "test")
    assert m["test/map"] == pytest.approx(1.0) and m["test/map_50"] == pytest.approx(1.0)
    assert m["test/mar_100"] == pytest.approx(1.0) and m["test/n"] == 3 and m["test/objects"] == 3
    assert m["test/map_small"] == pytest.approx(1.0) and m["test/map_large"] == pytest.approx(1.0)
    assert m["per_class"]["cat"] == {"ap": pytest.approx(1.0), "ap_50": pytest.approx(1.0), "ar_100": pytest.approx(1.0),
                                     "objects": 1}
    # no bird anywhere: nothing to measure, not a zero
    assert m["per_class"]["bird"] == {"ap": None, "ap_50": None, "ar_100": None, "objects": 0}


def test_a_missed_box_and_a_loose_box_cost_what_they_should():
    preds = [det([[10, 10, 60, 60], [100, 100, 200, 170]], [0.9, 0.8], [0, 1]),  # dog box IoU 0.58
             det([], [], []), det([], [], [])]
    m, raw = coco_metrics(preds, TRUTH, LABELS, "test")
    assert m["per_class"]["cat"]["ap"] == pytest.approx(1.0)
    assert m["per_class"]["dog"]["ap_50"] == pytest.approx(0.5, abs=0.01)  # one of two dogs found at IoU 0.5
    assert m["test/map_75"] < m["test/map_50"] < 1.0
    rows = pr_curves(raw, LABELS)
    assert {r[0] for r in rows} == {"cat", "dog"} and len(rows) == 2 * 101
    dog = [(r, p) for c, r, p in rows if c == "dog"]
    assert dog[0] == (0.0, 1.0) and dog[50] == (0.5, 1.0) and dog[-1] == (1.0, 0.0)


def test_confusion_counts_matches_confusions_misses_and_spurious_boxes():
    preds = [det([[11, 11, 60, 60], [100, 100, 200, 220], [300, 300, 320, 320], [0, 0, 5, 5]],
                 [0.9, 0.8, 0.7, 0.1], [0, 2, 1, 1]),   # cat right, dog called bird, a spurious dog, one below 0.3
             det([], [], []), det([], [], [])]
    actual, predicted = confusion(preds, TRUTH, num_classes=3, score_threshold=0.3)
    pairs = sorted(zip(actual.tolist(), predicted.tolist()))
    bg = 3
    assert pairs == sorted([(0, 0), (1, 2), (bg, 1), (1, bg)])


def test_crowd_regions_are_neither_missed_nor_required():
    t = [truth([[10, 10, 60, 60], [100, 100, 200, 200]], [0, 0], crowd=[0, 1])]
    actual, predicted = confusion([det([[10, 10, 60, 60]], [0.9], [0])], t, num_classes=3)
    assert actual.tolist() == [0] and predicted.tolist() == [0]
    m, _ = coco_metrics([det([[10, 10, 60, 60]], [0.9], [0])], t, LABELS, "test")
    assert m["test/map_50"] == pytest.approx(1.0) and m["test/objects"] == 1


def test_ground_truth_reads_coco_boxes_in_image_order_with_labels_by_category_id():
    coco = {"categories": [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}],
            "images": [{"id": 2}, {"id": 1}],
            "annotations": [{"image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 7},
                            {"image_id": 2, "bbox": [10, 20, 30, 40], "category_id": 3, "iscrowd": 1}]}
    gt = ground_truth(coco)
    assert gt[0]["boxes"].tolist() == [[10, 20, 40, 60]] and gt[0]["labels"].tolist() == [0]
    assert gt[0]["iscrowd"].tolist() == [1]
    assert gt[1]["boxes"].tolist() == [[1, 2, 4, 6]] and gt[1]["labels"].tolist() == [1]
    assert np.array_equal(gt[1]["iscrowd"].numpy(), [0])
