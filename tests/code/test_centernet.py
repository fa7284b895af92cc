"""The compact CenterNet on synthetic tensors: its targets, its decoding, its loss, and that it
learns to find boxes; the detectors' common interface and their clear errors."""

from __future__ import annotations

import pytest
import torch

from train.models import PretrainedWeightsUnavailable
from train.tasks.detection.centernet import CenterNet, focal_loss
from train.tasks.detection.models import DETECTORS, TORCHVISION, build_detector


def test_targets_peak_at_each_centre_and_cells_near_it_learn_its_box_and_class():
    net = CenterNet(3)
    boxes = torch.tensor([[8.0, 12.0, 40.0, 44.0], [60.0, 60.0, 100.0, 90.0]])  # centres (24, 28), (80, 75)
    heat, cells = net.encode([{"boxes": boxes, "labels": torch.tensor([2, 0])}], 32, 32)
    assert heat.shape == (1, 1, 32, 32)
    assert heat[0, 0, 7, 6] == 1.0 and heat[0, 0, 18, 20] == 1.0  # cell = floor(centre / 4), (row, col)
    assert int((heat == 1).sum()) == 2
    assert 0 < heat[0, 0, 7, 8] < 1 and heat[0, 0, 7, 8] > heat[0, 0, 7, 10]  # a Gaussian falling off
    # every cell near a centre regresses its object's box (in cells) and class, weighted by the Gaussian
    at = {int(i): (b.tolist(), int(c), float(w))
          for i, b, c, w in zip(cells["index"], cells["box"], cells["label"], cells["weight"])}
    assert at[7 * 32 + 6] == ([2.0, 3.0, 10.0, 11.0], 2, 1.0) and at[18 * 32 + 20] == ([15.0, 15.0, 25.0, 22.5], 0, 1.0)
    assert 7 * 32 + 7 in at and at[7 * 32 + 7][2] < 1 and 7 * 32 + 10 not in at
    assert (cells["weight"] >= 0.3).all() and len(at) > 2


def test_an_image_without_objects_has_an_empty_target_and_a_finite_loss():
    net = CenterNet(2)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = net.loss(torch.rand(2, 3, 64, 64), [empty, empty])
    assert torch.isfinite(losses["loss"]) and losses["loss_box"] == 0 and losses["loss_class"] == 0


def test_decoding_an_ideal_output_gives_the_boxes_and_classes_back():
    net = CenterNet(2, max_detections=5)
    boxes = torch.tensor([[8.0, 12.0, 40.0, 44.0], [60.0, 60.0, 100.0, 90.0]])
    heat, cells = net.encode([{"boxes": boxes, "labels": torch.tensor([1, 0])}], 32, 32)
    objectness = torch.logit(heat.clamp(1e-6, 1 - 1e-6))
    flat = torch.zeros(32 * 32, 4)
    classes = torch.zeros(32 * 32, 2)
    pix = cells["index"]
    px, py = (pix % 32).float() + 0.5, (pix // 32).float() + 0.5
    b = cells["box"]
    distances = torch.stack([px - b[:, 0], py - b[:, 1], b[:, 2] - px, b[:, 3] - py], 1) / net.distance_scale
    flat[pix] = torch.log(torch.expm1(distances))  # the inverse of the head's softplus
    classes[pix, cells["label"]] = 20.0
    reg = flat.reshape(1, 32, 32, 4).permute(0, 3, 1, 2)
    cls = classes.reshape(1, 32, 32, 2).permute(0, 3, 1, 2)
    out_boxes, scores, labels = net.decode(objectness, cls, reg, (128, 128))
    assert out_boxes.shape == (1, 5, 4) and scores[0, 0] > 0.99 and scores[0, 1] > 0.99 and scores[0, 2] < 0.01
    got = {int(lab): b for lab, b in zip(labels[0, :2].tolist(), out_boxes[0, :2])}
    assert torch.allclose(got[1], boxes[0], atol=1e-3) and torch.allclose(got[0], boxes[1], atol=1e-3)


def test_focal_loss_rewards_confident_right_answers():
    gt = torch.zeros(1, 1, 8, 8)
    gt[0, 0, 4, 4] = 1.0
    good = torch.full_like(gt, -8.0)
    good[0, 0, 4, 4] = 8.0
    assert focal_loss(good, gt) < 0.01 < focal_loss(torch.zeros_like(gt), gt)


def test_it_learns_to_find_two_boxes():
    """A few dozen steps on two fixed images: the decoded top detections land on the true boxes."""
    from torchvision.ops import box_iou

    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64) * 0.2
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 28.0, 32.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 20.0, 58.0, 44.0]]), "labels": torch.tensor([0])}]
    for img, t in zip(images, targets):
        x1, y1, x2, y2 = t["boxes"][0].int().tolist()
        img[:, y1:y2, x1:x2] += 0.8 if t["labels"][0] == 1 else 0.5
    net = CenterNet(2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(80):
        loss = net.loss(images, targets)["loss"]
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first / 5
    net.eval()
    for pred, t in zip(net.predict(images), targets):
        assert int(pred["labels"][0]) == int(t["labels"][0])
        assert float(box_iou(pred["boxes"][:1], t["boxes"])) > 0.5


def test_the_default_detector_is_compact():
    from hydra.utils import instantiate

    from visionops.config import compose

    cfg = compose(["task=detection"])
    net = instantiate(cfg.model.net, num_classes=10, in_channels=3, image_size=(256, 256))
    n = sum(p.numel() for p in net.parameters())
    assert 300_000 < n < 1_000_000, n


@pytest.mark.parametrize("arch", sorted(TORCHVISION))
def test_torchvision_detectors_take_our_labels_and_give_them_back(arch):
    """Labels are 0..C-1 on our side; those with a background class see 1..C (and we shift back)."""
    net = build_detector(arch, num_classes=3, image_size=(96, 96))
    images = torch.rand(2, 3, 96, 96)
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.tensor([[20.0, 5.0, 70.0, 40.0]]), "labels": torch.tensor([2])}]
    net.train()
    losses = net.loss(images, targets)
    assert torch.isfinite(losses["loss"]) and len(losses) > 2
    net.eval()
    out = net.predict(images)
    assert all(((o["labels"] >= 0) & (o["labels"] < 3)).all() for o in out)


def test_unknown_detector_and_weights_for_centernet_fail_clearly():
    with pytest.raises(ValueError, match="choose one of centernet"):
        build_detector("yolo", num_classes=2)
    with pytest.raises(PretrainedWeightsUnavailable, match="model.net.weights=null"):
        build_detector("centernet", num_classes=2, weights="DEFAULT")
    assert DETECTORS[0] == "centernet"


def test_unknown_weights_name_for_a_torchvision_detector_lists_options():
    with pytest.raises(PretrainedWeightsUnavailable, match="COCO_V1"):
        build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=2, weights="BOGUS")


@pytest.mark.parametrize("key", ["weights", "weights_backbone"])
def test_pretrained_detector_weights_offline_fail_in_one_clear_line(key, tmp_path, monkeypatch):
    """No network here: asking for COCO or ImageNet weights says what to do instead of a traceback."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        build_detector("ssdlite320_mobilenet_v3_large", num_classes=2, **{key: "DEFAULT"})
    message = str(info.value)
    assert f"model.net.{key}=null" in message and "\n" not in message
