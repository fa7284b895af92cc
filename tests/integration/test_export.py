"""Export parity on a tiny model: ONNX fp32 agrees with eager PyTorch on every test image, the
int8 model's accuracy change and speed-up are measured and decide the serving format."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from helpers import make_cfg
from train.export import export
from train.fit import train
from train.module import load_classifier
from train.prepare import prepare
from visionops.bundle import ModelBundle
from visionops.onnx_runtime import OnnxModel

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exported(tmp_path_factory, digits_small):
    tmp = tmp_path_factory.mktemp("export")
    cfg = make_cfg(tmp, digits_small, ["trainer.max_epochs=2", "export.latency.runs=30"])
    prepare(cfg)
    train(cfg)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        report = export(cfg)
    (tmp / "export.out").write_text(out.getvalue())
    return tmp, cfg, report


def test_onnx_parity_with_eager_pytorch(exported):
    tmp, _cfg, report = exported
    p = report["parity"]
    assert p["images"] == 30 and p["top1_agreement"] >= 0.999 and p["passed"]
    assert p["max_abs_logit_diff"] < 1e-3
    # The summary line reports the fp32 parity (int8's agreement is its own number in the report).
    assert f"top-1 agreement {p['top1_agreement']:.4f}" in (tmp / "export.out").read_text()
    assert json.loads((tmp / "reports" / "export" / "report.json").read_text()) == report
    assert json.loads((tmp / "models" / "export" / "parity.json").read_text()) == report, "travels with the model"
    # The DVC metric: the headline only, so `dvc metrics show` stays one screen wide.
    assert json.loads((tmp / "reports" / "export" / "parity.json").read_text()) == {"parity": p["top1_agreement"]}


def test_dynamic_batch_axis_and_embedding_output(exported):
    tmp, _, _ = exported
    onnx = OnnxModel(tmp / "models" / "export" / "model.onnx")
    net = load_classifier(str(tmp / "models" / "checkpoints" / "best.ckpt")).net
    for n in (1, 5, 33):
        x = np.random.default_rng(n).normal(size=(n, 3, 32, 32)).astype(np.float32)
        logits, emb = onnx.run(x)
        with torch.no_grad():
            ref = net.forward_features(torch.from_numpy(x))
        assert logits.shape == (n, 10) and emb.shape == (n, net.embedding_dim)
        assert np.allclose(emb, ref.numpy(), atol=1e-4)


def test_int8_accuracy_and_speed_are_reported(exported):
    tmp, cfg, report = exported
    q = report["int8"]
    assert {"accuracy_drop", "speedup_batch", "used_for_serving", "why"} <= set(q)
    assert set(report["formats"]) == {"pytorch", "onnx_fp32", "onnx_int8"}
    for fmt in report["formats"].values():
        assert 0 <= fmt["accuracy"] <= 1 and fmt["p50_ms_batch1"] > 0 and fmt["images_per_s_batch32"] > 0
    within = q["accuracy_drop"] <= cfg.export.int8.max_accuracy_drop and q["speedup_batch"] >= cfg.export.int8.min_speedup
    assert q["used_for_serving"] == within
    assert report["serving_format"] == ("onnx_int8" if within else "onnx_fp32")
    assert OnnxModel(tmp / "models" / "export" / "model.int8.onnx").predict_proba(
        np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)


def test_bundle_carries_the_contract(exported):
    tmp, _, _report = exported
    b = ModelBundle.load(tmp / "models" / "export")
    assert b.labels == [str(i) for i in range(10)] and b.preprocess.size == (32, 32)
    assert b.embedding_layer == "embedding" and b.embedding_dim == 32 and len(b.data_version) == 16
