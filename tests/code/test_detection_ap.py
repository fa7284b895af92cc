"""The gate's mAP (train.tasks.detection.ap): COCO's matching done once, the AP recomputed from
image weights. It must give faster-coco-eval's numbers (the evaluate stage's), crowd regions and
score ties included, and a resample must equal evaluating the resampled images themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.gate import paired_bootstrap
from train.tasks.detection.ap import average_precision, match, mean_ap, resample_weights
from train.tasks.detection.module import mean_average_precision
from train.tasks.detection.registry import resampled

CLASSES = 4


def _scene(seed: int, n: int = 80, crowd: float = 0.1, ties: bool = True):
    """Random true boxes, detections near them (some with the wrong class) and spurious ones."""
    rng = np.random.default_rng(seed)
    preds, truth = [], []
    for _ in range(n):
        ng = int(rng.integers(0, 5))
        xy = rng.uniform(0, 200, (ng, 2))
        gt = np.concatenate([xy, xy + rng.uniform(10, 60, (ng, 2))], 1)
        gl = rng.integers(0, CLASSES, ng)
        nd = int(rng.integers(0, 25))
        if ng:
            src = rng.integers(0, ng, nd)
            d = gt[src] + rng.normal(0, 6, (nd, 4))
            dl = np.where(rng.random(nd) < 0.8, gl[src], rng.integers(0, CLASSES, nd))
        else:
            xy = rng.uniform(0, 200, (nd, 2))
            d, dl = np.concatenate([xy, xy + 30], 1), rng.integers(0, CLASSES, nd)
        d = np.concatenate([np.minimum(d[:, :2], d[:, 2:]), np.maximum(d[:, :2], d[:, 2:]) + 1], 1)
        scores = rng.random(nd)
        preds.append({"boxes": torch.tensor(d, dtype=torch.float32),
                      "scores": torch.tensor(np.round(scores, 2) if ties else scores, dtype=torch.float32),
                      "labels": torch.tensor(dl, dtype=torch.int64)})
        truth.append({"boxes": torch.tensor(gt, dtype=torch.float32), "labels": torch.tensor(gl, dtype=torch.int64),
                      "iscrowd": torch.tensor((rng.random(ng) < crowd).astype(np.int64))})
    return preds, truth


def _np(dets):
    return [{k: v.numpy() for k, v in d.items()} for d in dets]


def _coco(preds, truth):
    metric = mean_average_precision(class_metrics=True)
    metric.update(preds, truth)
    return metric.compute()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_faster_coco_eval_with_crowds_and_ties(seed):
    preds, truth = _scene(seed)
    ref = _coco(preds, truth)
    ap = average_precision(match(_np(preds), _np(truth), CLASSES))  # (1, thresholds, classes)
    assert mean_ap(ap)[0] == pytest.approx(float(ref["map"]), abs=1e-6)
    assert mean_ap(ap[:, :1])[0] == pytest.approx(float(ref["map_50"]), abs=1e-6)
    assert mean_ap(ap[:, 5:6])[0] == pytest.approx(float(ref["map_75"]), abs=1e-6)
    assert np.allclose(np.nanmean(ap[0], 0), ref["map_per_class"].numpy(), atol=1e-6)


def test_a_resample_is_the_resampled_images_evaluated():
    """Image weights = evaluating the drawn images, duplicates included (distinct scores: COCO
    breaks score ties between images by their order, which a resample shuffles)."""
    preds, truth = _scene(3, crowd=0.0, ties=False)
    m = match(_np(preds), _np(truth), CLASSES)
    idx = np.random.default_rng(0).integers(0, len(preds), (3, len(preds)))
    ours = mean_ap(average_precision(m, resample_weights(idx, len(preds))))
    for row, value in zip(idx, ours):
        assert value == pytest.approx(float(_coco([preds[i] for i in row], [truth[i] for i in row])["map"]), abs=1e-6)


def test_classes_without_true_boxes_are_left_out_and_nothing_found_is_zero():
    truth = [{"boxes": np.array([[0, 0, 10, 10]], np.float32), "labels": np.array([1])}]
    found = [{"boxes": np.array([[0, 0, 10, 10]], np.float32), "scores": np.array([0.9]), "labels": np.array([1])}]
    nothing = [{"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}]
    ap = average_precision(match(found, truth, 3))
    assert np.isnan(ap[0, :, 0]).all() and np.isnan(ap[0, :, 2]).all() and mean_ap(ap)[0] == 1.0
    assert mean_ap(average_precision(match(nothing, truth, 3)))[0] == 0.0


def test_paired_bootstrap_of_map():
    preds, truth = _scene(4, crowd=0.0)
    good = match(_np(preds), _np(truth), CLASSES).at(np.array([0.5]))
    worse_preds = [{**p, "scores": p["scores"] * torch.rand(len(p["scores"]), generator=torch.Generator().manual_seed(i))}
                   for i, p in enumerate(preds)]
    worse = match(_np(worse_preds), _np(truth), CLASSES).at(np.array([0.5]))
    same = paired_bootstrap(good, good, 200, 0.95, 0, score=resampled, images=len(preds))
    assert same["diff"] == same["ci_low"] == same["ci_high"] == 0.0
    ci = paired_bootstrap(good, worse, 200, 0.95, 0, score=resampled, images=len(preds))
    assert ci["diff"] == pytest.approx(mean_ap(average_precision(good))[0] - mean_ap(average_precision(worse))[0])
    assert 0 < ci["ci_low"] < ci["diff"] < ci["ci_high"], ci
