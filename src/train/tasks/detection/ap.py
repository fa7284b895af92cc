"""COCO average precision that can be recomputed on any resample of the images in milliseconds:
what the registry's paired bootstrap of mAP needs.

COCO's evaluator matches detections to true boxes image by image and class by class (greedily,
best score first, each true box once, crowd regions absorbing detections without counting them),
and only then pools the matched detections of all images per class into a precision-recall
curve. The matching of an image never depends on the other images, so it is done once (`match`)
and a resample of the images is a weight per image (how often it was drawn): a class's curve is
the weighted cumulative sum of true and false positives along the detections sorted by score,
the number of true boxes the weighted sum of each image's (`average_precision`). With every
weight 1 this is COCO's AP (checked against faster-coco-eval in the tests); the bootstrap calls
it with a few hundred weight vectors at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# COCO's IoU thresholds (mAP@[.5:.95]) and 101 recall points, exactly as torchmetrics hands them to
# the evaluator: computed by torch.linspace in float32 (0.8 is 0.800000011920929), so that a recall
# or an IoU landing exactly on a threshold falls on the same side here as in the evaluate stage.
IOU_THRESHOLDS = np.asarray(torch.linspace(0.5, 0.95, 10).tolist(), np.float64)
RECALL_POINTS = np.asarray(torch.linspace(0.0, 1.0, 101).tolist(), np.float64)
METRIC_THRESHOLDS = {"map": IOU_THRESHOLDS, "map_50": IOU_THRESHOLDS[:1], "map_75": IOU_THRESHOLDS[5:6]}


@dataclass
class Matches:
    """Every detection of a set of images, matched as COCO's evaluator matches them.

    image, label, score: (D,) per detection, sorted by score (best first, ties in image order);
    tp: (T, D) whether it matched a true box at IoU threshold t; ignored: (T, D) whether it
    matched a crowd region instead (neither true nor false positive); gt: (images, classes) how
    many true (non-crowd) boxes each image has of each class; thresholds: (T,)."""

    image: np.ndarray
    label: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray
    gt: np.ndarray
    thresholds: np.ndarray

    @property
    def images(self) -> int:
        return int(self.gt.shape[0])

    def at(self, thresholds: np.ndarray) -> Matches:
        """The same matches at a subset of the IoU thresholds."""
        rows = [int(np.flatnonzero(np.isclose(self.thresholds, t))[0]) for t in thresholds]
        return Matches(self.image, self.label, self.score, self.tp[rows], self.ignored[rows], self.gt,
                       self.thresholds[rows])


def as_coco(boxes: np.ndarray) -> np.ndarray:
    """[x1, y1, x2, y2] -> the same boxes as COCO's evaluator sees them: [x, y, w, h] in float32
    (as torchmetrics hands them over), back in float64 [x1, y1, x2, y2]; IoUs then agree to the bit."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).astype(np.float64)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, G) IoU of [x1, y1, x2, y2] boxes; against a crowd region, the share of the detection
    inside it (COCO's rule)."""
    lt = np.maximum(dt[:, None, :2], gt[None, :, :2])
    rb = np.minimum(dt[:, None, 2:], gt[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    a_dt = np.prod(dt[:, 2:] - dt[:, :2], axis=1)[:, None]
    a_gt = np.prod(gt[:, 2:] - gt[:, :2], axis=1)[None, :]
    union = np.where(crowd[None, :], a_dt, a_dt + a_gt - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _match_image(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching of one image's detections of one class (sorted best first) to its
    true boxes (non-crowd first): (tp (T, D), ignored (T, D))."""
    tp = np.zeros((len(thresholds), len(dt)), bool)
    ignored = np.zeros_like(tp)
    if not len(dt) or not len(gt):
        return tp, ignored
    ious = box_iou(dt, gt, crowd)
    best = ious.max(1)
    for ti, t in enumerate(thresholds):
        taken = np.zeros(len(gt), bool)
        for d in np.flatnonzero(best >= t):
            iou, m = min(t, 1 - 1e-10), -1
            for g in range(len(gt)):
                if taken[g] and not crowd[g]:
                    continue
                if m > -1 and not crowd[m] and crowd[g]:
                    break  # true boxes come before crowd regions: a match with a true box stands
                if ious[d, g] < iou:
                    continue
                iou, m = ious[d, g], g
            if m == -1:
                continue
            taken[m] = True
            ignored[ti, d] = crowd[m]
            tp[ti, d] = not crowd[m]
    return tp, ignored


def match(preds: list[dict[str, np.ndarray]], truth: list[dict[str, np.ndarray]], num_classes: int,
          thresholds: np.ndarray = IOU_THRESHOLDS, max_detections: int = 100) -> Matches:
    """Match each image's detections (`boxes`, `scores`, `labels`) to its true boxes (`boxes`,
    `labels`, optional `iscrowd`), as COCO does with maxDets = `max_detections` per image and class."""
    images, labels, scores, tps, igns = [], [], [], [], []
    gt_count = np.zeros((len(truth), num_classes), np.int64)
    for i, (p, t) in enumerate(zip(preds, truth, strict=True)):
        pb, ps, pl = (np.asarray(p[k]) for k in ("boxes", "scores", "labels"))
        tb, tl = as_coco(t["boxes"]), np.asarray(t["labels"]).reshape(-1)
        tc = np.asarray(t.get("iscrowd", np.zeros(len(tl))), bool).reshape(-1)
        gt_count[i] = np.bincount(tl[~tc].astype(np.int64), minlength=num_classes)[:num_classes]
        for c in np.union1d(np.unique(pl), np.unique(tl)).astype(np.int64):
            d = np.flatnonzero(pl == c)
            d = d[np.argsort(-ps[d], kind="mergesort")][:max_detections]
            g = np.flatnonzero(tl == c)
            g = g[np.argsort(tc[g], kind="mergesort")]  # crowd regions last
            tp, ign = _match_image(as_coco(pb[d]), tb[g], tc[g], thresholds)
            images.append(np.full(len(d), i))
            labels.append(np.full(len(d), c))
            scores.append(ps[d].astype(np.float64))
            tps.append(tp)
            igns.append(ign)
    cat = (lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype))
    image, label, score = cat(images, np.int64), cat(labels, np.int64), cat(scores, np.float64)
    tp = np.concatenate(tps, axis=1) if tps else np.zeros((len(thresholds), 0), bool)
    ign = np.concatenate(igns, axis=1) if igns else np.zeros((len(thresholds), 0), bool)
    # COCO pools a class's detections in image order and sorts them stably by score: the same here.
    order = np.lexsort((image, -score))
    return Matches(image[order], label[order], score[order], tp[:, order], ign[:, order], gt_count,
                   np.asarray(thresholds, np.float64))


def average_precision(m: Matches, weights: np.ndarray | None = None) -> np.ndarray:
    """(R, T, classes) AP of each class at each IoU threshold, for each row of `weights` (R,
    images): how often each image counts (None: once each, R = 1). NaN where the weighted images
    hold no true box of the class (COCO leaves such classes out of the mean)."""
    w = np.ones((1, m.images)) if weights is None else np.asarray(weights, np.float64).reshape(-1, m.images)
    r, t, c = len(w), len(m.thresholds), m.gt.shape[1]
    out = np.full((r, t, c), np.nan)
    eps = np.spacing(1)
    for k in range(c):
        sel = np.flatnonzero(m.label == k)
        npig = w @ m.gt[:, k]
        if not (npig > 0).any():
            continue
        wd = w[:, m.image[sel]]
        for ti in range(t):
            tp = np.cumsum(wd * m.tp[ti, sel], axis=1)
            fp = np.cumsum(wd * ~(m.tp[ti, sel] | m.ignored[ti, sel]), axis=1)
            pr = tp / (tp + fp + eps)
            pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope, as COCO
            for row in np.flatnonzero(npig > 0):
                rc = tp[row] / npig[row]
                idx = np.searchsorted(rc, RECALL_POINTS, side="left")
                q = np.zeros(len(RECALL_POINTS))
                ok = idx < len(sel)
                q[ok] = pr[row, idx[ok]]
                out[row, ti, k] = q.mean()
    return out


def mean_ap(ap: np.ndarray) -> np.ndarray:
    """(R,) mean over thresholds and classes with true boxes, as COCO's mAP; 0 where none has any."""
    valid = ~np.isnan(ap)
    total = np.where(valid, ap, 0).sum(axis=(1, 2))
    count = valid.sum(axis=(1, 2))
    return np.divide(total, count, out=np.zeros(len(ap)), where=count > 0)


def resample_weights(idx: np.ndarray, n: int) -> np.ndarray:
    """(R, n) image indices drawn with replacement -> (R, n) how often each image was drawn."""
    r = len(idx)
    flat = (idx + n * np.arange(r)[:, None]).ravel()
    return np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float64)
