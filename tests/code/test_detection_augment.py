"""Boxes through detection augmentation and the dataset: every geometric transform moves the boxes
with the pixels; a box leaving the image is clipped, or dropped by visibility; the dataset's
tensor is the shared preprocessing and its boxes are in input pixels."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from helpers import REPO
from train.tasks.detection.augment import apply, build_detection_augment, from_config
from train.tasks.detection.boxes import xywh_to_xyxy, xyxy_to_xywh
from train.tasks.detection.dataset import CocoDetectionDataset, collate
from visionops.images import decode_image
from visionops.preprocess import PreprocessSpec, preprocess

PRESETS = ("det_none", "det_light", "det_strong")


def preset(name: str):
    return OmegaConf.load(REPO / "conf" / "augment" / f"{name}.yaml")


def compose(*transforms, min_visibility: float = 0.3) -> A.Compose:
    return A.Compose(list(transforms), bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"],
                                                                min_visibility=min_visibility, clip=True), seed=0)


def drawn(boxes, h=100, w=120, ellipse=False) -> np.ndarray:
    """A black image with each box filled white (or its inscribed ellipse)."""
    img = np.zeros((h, w, 3), np.uint8)
    yy, xx = np.mgrid[:h, :w] + 0.5
    for x1, y1, x2, y2 in boxes:
        if ellipse:
            cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
            img[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = 255
        else:
            img[int(y1):int(y2), int(x1):int(x2)] = 255
    return img


def ink_box(img: np.ndarray) -> list[int]:
    mask = img.max(axis=2) > 127
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def test_coco_and_corner_boxes_convert_both_ways():
    xywh = np.array([[10, 20, 30, 40], [0, 0, 1, 2]], dtype=np.float32)
    assert xywh_to_xyxy(xywh).tolist() == [[10, 20, 40, 60], [0, 0, 1, 2]]
    assert (xyxy_to_xywh(xywh_to_xyxy(xywh)) == xywh).all() and xywh_to_xyxy([]).shape == (0, 4)


def test_a_horizontal_flip_mirrors_x_and_keeps_y():
    boxes = np.array([[10, 20, 40, 60], [70, 5, 118, 30]], dtype=np.float32)
    img, out, labels = apply(compose(A.HorizontalFlip(p=1)), drawn(boxes), boxes, np.array([3, 7]))
    np.testing.assert_allclose(out, [[80, 20, 110, 60], [2, 5, 50, 30]], atol=1e-3)
    assert labels.tolist() == [3, 7]
    assert ink_box(img) == [2, 5, 110, 60]


def test_a_vertical_flip_mirrors_y():
    boxes = np.array([[10, 20, 40, 60]], dtype=np.float32)
    _, out, _ = apply(compose(A.VerticalFlip(p=1)), drawn(boxes), boxes, np.array([1]))
    np.testing.assert_allclose(out, [[10, 40, 40, 80]], atol=1e-3)


def test_a_box_leaving_the_image_is_clipped_or_dropped_by_visibility():
    # Shift right by 50 px in a 120-px-wide image: 30-px-wide boxes end up 100%, 50% and 17% inside.
    boxes = np.array([[10, 10, 40, 40], [55, 50, 85, 80], [65, 10, 95, 40]], dtype=np.float32)
    shift = A.Affine(translate_px={"x": 50, "y": 0}, p=1)
    img, out, labels = apply(compose(shift), drawn(boxes), boxes, np.array([1, 2, 3]))
    assert labels.tolist() == [1, 2] and ink_box(img) == [60, 10, 120, 80]
    np.testing.assert_allclose(out, [[60, 10, 90, 40], [105, 50, 120, 80]], atol=1e-3)  # the second clipped
    _, out, labels = apply(compose(shift, min_visibility=0.1), drawn(boxes), boxes, np.array([1, 2, 3]))
    assert labels.tolist() == [1, 2, 3]  # a lower threshold keeps the third, clipped to the edge
    np.testing.assert_allclose(out[2], [115, 10, 120, 40], atol=1e-3)


@pytest.mark.parametrize("name", ["det_light", "det_strong"])
@pytest.mark.parametrize("seed", range(6))
def test_boxes_follow_each_presets_geometry(name, seed):
    """The preset's geometric transforms (zoom, stretch, shift, rotation) on ellipses: the returned
    box is where the ellipse's pixels went."""
    geometric = [t for t in preset(name).transforms if t["_target_"] == "albumentations.Affine"]
    aug = build_detection_augment([{**OmegaConf.to_container(t), "p": 1.0} for t in geometric], seed=seed)
    box = np.array([[40, 30, 80, 70]], dtype=np.float32)
    img, out, _ = apply(aug, drawn(box, ellipse=True), box, np.array([5]))
    if len(out) == 0:
        return  # pushed out of the image: dropped by visibility, also correct
    edges = np.array(ink_box(img), dtype=np.float32)
    inside = (out[0, 0] > 0, out[0, 1] > 0, out[0, 2] < 120, out[0, 3] < 100)
    np.testing.assert_allclose(out[0][list(inside)], edges[list(inside)], atol=2.0)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_keep_size_dtype_and_boxes_inside(name):
    aug = from_config(preset(name), seed=1)
    if name == "det_none":
        assert aug is None
        return
    boxes = np.array([[5, 5, 30, 40], [60, 50, 110, 95]], dtype=np.float32)
    rng = np.random.default_rng(0)
    for _ in range(20):
        img, out, labels = apply(aug, rng.integers(0, 255, (100, 120, 3), dtype=np.uint8), boxes, np.array([0, 1]))
        assert img.shape == (100, 120, 3) and img.dtype == np.uint8 and len(out) == len(labels)
        assert (out >= 0).all() and (out[:, [0, 2]] <= 120).all() and (out[:, [1, 3]] <= 100).all()
        assert (out[:, 2] > out[:, 0]).all() and (out[:, 3] > out[:, 1]).all()


@pytest.fixture
def tiny_coco(tmp_path) -> dict:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (100, 200, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (60, 60), dtype=np.uint8)).save(tmp_path / "b.png")
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 100},
                   {"id": 2, "file_name": "b.png", "width": 60, "height": 60}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [20, 10, 40, 50], "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [100, 0, 100, 100], "iscrowd": 0},
                        {"id": 3, "image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10], "iscrowd": 1}],
        "categories": [{"id": 9, "name": "nine"}, {"id": 5, "name": "five"}],
    }


def test_dataset_gives_the_shared_preprocessing_and_boxes_in_input_pixels(tmp_path, tiny_coco):
    spec = PreprocessSpec(size=(50, 50))
    ds = CocoDetectionDataset(tiny_coco, spec, image_root=tmp_path)
    x, target = ds[0]
    expected = preprocess(decode_image(tmp_path / "a.png"), spec)
    assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(expected))
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["boxes"].tolist() == [[5.0, 5.0, 15.0, 30.0], [25.0, 0.0, 50.0, 50.0]]  # x / 4, y / 2
    assert target["labels"].tolist() == [1, 0]  # position of the category id in sorted ids: 5 -> 0, 9 -> 1
    assert target["orig_size"].tolist() == [100, 200] and int(target["image_id"]) == 1
    _, negative = ds[1]  # no annotations: a negative, still a valid sample
    assert negative["boxes"].shape == (0, 4) and negative["labels"].shape == (0,)
    images, targets = collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 50, 50) and len(targets) == 2
    cached = CocoDetectionDataset(tiny_coco, spec, image_root=tmp_path, cache=True)
    assert torch.equal(cached[0][0], x) and torch.equal(cached[0][1]["boxes"], target["boxes"])


def test_dataset_augmentation_moves_its_boxes(tmp_path, tiny_coco):
    spec = PreprocessSpec(size=(50, 50))
    flipped = CocoDetectionDataset(tiny_coco, spec, compose(A.HorizontalFlip(p=1)), image_root=tmp_path)
    plain = CocoDetectionDataset(tiny_coco, spec, image_root=tmp_path)
    (x_f, t_f), (x, t) = flipped[0], plain[0]
    assert torch.equal(x_f, x.flip(-1))
    np.testing.assert_allclose(t_f["boxes"], [[35, 5, 45, 30], [0, 0, 25, 50]], atol=1e-3)
    assert t_f["labels"].tolist() == t["labels"].tolist()


def test_dataset_reads_file_names_relative_to_the_working_directory(tmp_path, tiny_coco, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = CocoDetectionDataset(tiny_coco, PreprocessSpec(size=(32, 32)))
    assert ds.path(0) == Path("a.png") and ds[0][0].shape == (3, 32, 32)
