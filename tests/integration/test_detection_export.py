"""A detector's export for real: the ONNX graph decodes boxes into each image's own pixels exactly
as eager PyTorch does, for any batch size, and its bundle tells serving how to run and read it.
The detector is the session's (tests/conftest.py `detectors`: a CenterNet trained a minute on easy
digits, exported by the export stage); torchvision's detectors export at batch 1."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from train.tasks.detection.dataset import read_split
from train.tasks.detection.export import DetectionGraph, batches, box_match, eager_runner, export_detector
from train.tasks.detection.module import load_detector
from visionops.bundle import ModelBundle
from visionops.detection import INPUTS, OnnxDetector
from visionops.preprocess import PreprocessSpec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exported(detectors):
    store, _, _, _ = detectors
    work = store / "v2"
    model = load_detector(str(work / "models" / "checkpoints" / "best.ckpt"))
    spec = PreprocessSpec.from_dict(model.hparams["preprocess"])
    graph = DetectionGraph(model.net, spec.size, model.net.max_detections).eval()
    onnx = OnnxDetector(work / "models" / "export" / "model.onnx")
    x, sizes = next(batches(read_split(store / "prepared" / "test.json"), spec, 24))
    return work, graph, onnx, x, sizes


def test_parity_on_the_test_split_is_measured_and_passes(exported):
    work, *_ = exported
    report = json.loads((work / "models" / "export" / "parity.json").read_text())
    p = report["parity"]
    assert p["passed"] and p["box_match"] >= 0.99 and p["map_diff"] <= 0.005 and p["boxes_compared"] > 40
    assert p["images"] == 45 and report["task"] == "detection" and report["exporter"] == "dynamo"
    assert abs(report["formats"]["onnx_fp32"]["map"] - report["formats"]["pytorch"]["map"]) == pytest.approx(p["map_diff"])
    assert json.loads((work / "reports" / "export" / "report.json").read_text()) == report
    # the DVC metric: the headline only
    assert json.loads((work / "reports" / "export" / "parity.json").read_text()) == {
        "parity": p["box_match"], "map_diff": p["map_diff"]}


def test_onnx_boxes_equal_pytorch_in_original_pixels(exported):
    """Images of other sizes than the input: the graph scales its boxes to each one's pixels."""
    _, graph, onnx, x, _ = exported
    sizes = np.array([[480, 640], [100, 60], [128, 128]] * 8, np.float32)[: len(x)]
    boxes, scores, labels = onnx.run(x, sizes)
    ref = eager_runner(graph)(x, sizes)
    same = [{"boxes": torch.from_numpy(b), "scores": torch.from_numpy(s), "labels": torch.from_numpy(c)}
            for b, s, c in zip(*ref)]
    got = [{"boxes": torch.from_numpy(b), "scores": torch.from_numpy(s), "labels": torch.from_numpy(c)}
           for b, s, c in zip(boxes, scores, labels)]
    assert box_match(same, got, 0.05, 0.9)["box_match"] == 1.0
    in_input_px, _, _ = onnx.run(x, None)  # no sizes: boxes in the 128x128 input's pixels
    scale = np.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], 1)[:, None, :] / 128
    assert np.allclose(boxes, in_input_px * scale, rtol=1e-5, atol=1e-3)
    assert (boxes[..., 2] <= sizes[:, None, 1] + 1e-3).all() and (boxes[..., 3] <= sizes[:, None, 0] + 1e-3).all()
    confident = scores >= 0.3
    assert confident.any() and (scores[:, :-1] >= scores[:, 1:]).all(), "each image's best first"


@pytest.mark.parametrize("n", [1, 5, 17])
def test_any_batch_size_gives_each_image_its_own_answer(exported, n):
    _, _, onnx, x, sizes = exported
    xs, ss = np.concatenate([x, x])[:n], np.concatenate([sizes, sizes])[:n]
    boxes, scores, labels = onnx.run(xs, ss, batch_size=n)
    assert boxes.shape == (n, 100, 4) and scores.shape == labels.shape == (n, 100) and labels.dtype == np.int64
    one = onnx.run(xs[-1:], ss[-1:])
    assert np.allclose(boxes[-1], one[0][0], atol=1e-3) and np.allclose(scores[-1], one[1][0], atol=1e-5)


def test_bundle_tells_serving_how_to_run_and_read_the_graph(exported):
    work, _, onnx, x, sizes = exported
    b = ModelBundle.load(work / "models" / "export")
    assert b.task == "detection" and b.labels == ["0", "1"] and b.preprocess.size == (128, 128)
    spec = b.task_spec
    assert spec["inputs"] == list(INPUTS) == [i.name for i in onnx.session.get_inputs()]
    assert spec["outputs"] == [o.name for o in onnx.session.get_outputs()] == ["boxes", "scores", "labels", "embedding"]
    assert spec["batch"] is None and spec["max_detections"] == 100 and spec["score_threshold"] == 0.3
    assert spec["box_format"] == "xyxy" and b.embedding_layer == "embedding"
    assert onnx.embed(x[:3]).shape == (3, b.embedding_dim) and b.embedding_dim == 64
    assert {"test/map", "test/map_50", "test/ap_50/0", "test/ap_50/1"} <= set(b.metrics)
    dets = OnnxDetector(work / "models" / "export" / "model.onnx", spec).detect(x[:4], sizes[:4], b.labels)
    assert len(dets) == 4 and all(set(d) == {"box", "score", "label"} for per in dets for d in per)
    assert all(d["score"] >= 0.3 and d["label"] in b.labels for per in dets for d in per)


def test_int8_is_measured_and_served_only_within_tolerance_and_faster(exported):
    work, *_ = exported
    report = json.loads((work / "models" / "export" / "parity.json").read_text())
    q = report["int8"]
    assert set(report["formats"]) == {"pytorch", "onnx_fp32", "onnx_int8"}
    for fmt in report["formats"].values():
        assert fmt["p50_ms_batch1"] > 0 and fmt["images_per_s_best"] >= fmt["images_per_s_batch1"] > 0
    best = report["formats"]["onnx_fp32"]["best_batch"]
    within = q["map_drop"] <= 0.01 and q["speedup_batch"] >= 1.0
    assert q["used_for_serving"] == within and report["serving_format"] == ("onnx_int8" if within else "onnx_fp32")
    assert q["speedup_batch"] == pytest.approx(report["formats"]["onnx_int8"][f"images_per_s_batch{best}"]
                                               / report["formats"]["onnx_fp32"][f"images_per_s_batch{best}"])
    assert OnnxDetector(work / "models" / "export" / "model.int8.onnx").run(np.zeros((2, 3, 128, 128), np.float32))[0].shape == (2, 100, 4)


def test_a_classifier_is_not_taken_for_a_detector(tmp_path):
    from train.export import export_onnx
    from train.models import build_model

    spec = PreprocessSpec(size=(32, 32))
    path = export_onnx(build_model("small_cnn", 3, width=8).eval(), spec, tmp_path / "model.onnx", 18)
    with pytest.raises(ValueError, match="not a visionops detector"):
        OnnxDetector(path)


def test_torchvision_detector_exports_at_batch_one(tmp_path):
    """SSDlite (NMS inside) through the TorchScript exporter: ONNX Runtime returns PyTorch's boxes."""
    from train.tasks.detection.models import build_detector

    torch.manual_seed(0)
    spec = PreprocessSpec(size=(320, 320))
    net = build_detector("ssdlite320_mobilenet_v3_large", 3, image_size=(320, 320), score_thresh=0.0).eval()
    graph = DetectionGraph(net, spec.size, 50).eval()
    how = export_detector(graph, spec, tmp_path / "ssd.onnx", 17)
    assert how == {"exporter": "torchscript", "batch": 1}
    onnx = OnnxDetector(tmp_path / "ssd.onnx")
    assert onnx.batch == 1
    x = np.random.default_rng(0).normal(size=(2, 3, 320, 320)).astype(np.float32)
    sizes = np.array([[640, 480], [320, 320]], np.float32)
    boxes, scores, labels = onnx.run(x, sizes)  # two images, one at a time
    assert boxes.shape == (2, 50, 4) and labels.dtype == np.int64
    ref = eager_runner(graph)(x, sizes)
    assert np.allclose(scores, ref[1], atol=1e-4)
    top = scores[:, :10] > 0  # the best rows: same boxes (further down, near-equal scores may swap)
    assert np.allclose(boxes[:, :10][top], ref[0][:, :10][top], atol=0.05)
