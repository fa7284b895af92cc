"""Behaviour of a registered detector, as production will run it (the champion's serving format,
the shared decode and preprocessing, boxes in each image's own pixels): its boxes mirror under a
horizontal flip, survive a JPEG re-encode, and an image without objects gives no confident box.
The detector is the session's champion (tests/conftest.py `detectors`: a CenterNet trained a
minute on big digits 0 and 1, which a mirror leaves the same digits)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from train.tasks.detection.ap import box_iou
from train.tasks.detection.dataset import read_split
from visionops.detection import orig_sizes
from visionops.images import decode_image
from visionops.model_store import fetch
from visionops.preprocess import batch, preprocess

NAME = "visionops-digits_easy"
CONFIDENT = 0.5


@pytest.fixture(scope="module")
def champion(detectors):
    store, _, client, _ = detectors
    with fetch(f"models:/{NAME}@champion", tracking_uri=client.tracking_uri) as local:
        test = read_split(store / "prepared" / "test.json")
        with_objects = {a["image_id"] for a in test["annotations"]}
        images = [decode_image(im["file_name"]) for im in test["images"]]
        empty = [img for img, im in zip(images, test["images"]) if im["id"] not in with_objects]
        full = [img for img, im in zip(images, test["images"]) if im["id"] in with_objects]
        yield local, full, empty


def _detect(local, images: list[Image.Image], threshold: float) -> list[list[dict]]:
    spec = local.bundle.preprocess
    x = batch([preprocess(img.convert("RGB"), spec) for img in images])
    return local.load().detect(x, orig_sizes(images), local.bundle.labels, threshold)


def _kept(before: list[list[dict]], after: list[list[dict]], iou: float, transform=None, least: int = 20) -> float:
    """The share of the confident boxes `before` that `after` has too (same label, IoU >= iou),
    after `transform(box, image index)` maps a box into the changed image."""
    found = total = 0
    for i, (b, a) in enumerate(zip(before, after)):
        for d in b:
            if d["score"] < CONFIDENT:
                continue
            total += 1
            box = np.array([transform(d["box"], i) if transform else d["box"]], np.float64)
            same = [np.array(x["box"], np.float64) for x in a if x["label"] == d["label"]]
            if same and box_iou(box, np.stack(same), np.zeros(len(same), bool)).max() >= iou:
                found += 1
    assert total >= least, f"only {total} confident boxes: the detector under test finds too little to check"
    return found / total


def test_boxes_mirror_under_a_horizontal_flip(champion):
    local, images, _ = champion
    before = _detect(local, images, CONFIDENT)
    after = _detect(local, [ImageOps.mirror(img) for img in images], 0.2)

    def mirrored(box, i):
        w = images[i].size[0]
        return [w - box[2], box[1], w - box[0], box[3]]

    kept = _kept(before, after, 0.7, mirrored)
    assert kept >= 0.9, f"only {kept:.0%} of the confident boxes come back mirrored"


def test_boxes_survive_a_jpeg_reencode(champion):
    local, images, _ = champion
    reencoded = []
    for img in images:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=85)
        reencoded.append(decode_image(buf.getvalue()))
    kept = _kept(_detect(local, images, CONFIDENT), _detect(local, reencoded, 0.2), 0.8)
    assert kept >= 0.95, f"only {kept:.0%} of the confident boxes survive a JPEG re-encode"


def test_an_image_without_objects_gives_no_confident_boxes(champion):
    local, _, empty = champion
    rng = np.random.default_rng(0)
    blank = [Image.new("RGB", (200, 150), (40, 40, 40)),
             Image.fromarray(rng.integers(0, 90, (160, 120, 3), dtype=np.uint8))]
    threshold = float(local.bundle.task_spec["score_threshold"])
    assert len(empty) >= 3, "the test split should hold images without objects"
    dets = _detect(local, [*empty, *blank], threshold)
    assert sum(map(len, dets)) == 0, [d for per in dets for d in per]


def test_boxes_follow_the_image_size(champion):
    """The same picture at twice the size: the same detections at twice the coordinates."""
    local, images, _ = champion
    small = images[:8]
    large = [img.resize((img.size[0] * 2, img.size[1] * 2), Image.Resampling.BILINEAR) for img in small]
    kept = _kept(_detect(local, small, CONFIDENT), _detect(local, large, 0.2), 0.8,
                 lambda box, _i: [2 * v for v in box], least=5)
    assert kept >= 0.9
