"""export's int8 decision on its own: served only when close enough in accuracy and faster."""

from __future__ import annotations

from types import SimpleNamespace

from train.export import decide_int8

LIMITS = SimpleNamespace(max_accuracy_drop=0.005, min_speedup=1.0)


def _formats(int8_acc: float, int8_speed: float) -> dict:
    return {"onnx_fp32": {"accuracy": 0.98, "p50_ms_batch1": 0.2, "images_per_s_batch32": 5000.0},
            "onnx_int8": {"accuracy": int8_acc, "p50_ms_batch1": 0.1, "images_per_s_batch32": int8_speed}}


def test_int8_is_served_when_within_tolerance_and_faster():
    d = decide_int8(_formats(0.978, 9000.0), 32, LIMITS, agreement=0.996)
    assert d["used_for_serving"] and d["why"] == "within tolerance and faster"
    assert d["speedup_batch"] == 1.8 and d["speedup_p50_batch1"] == 2.0 and d["top1_agreement_with_fp32"] == 0.996


def test_int8_is_not_served_when_it_loses_accuracy_or_is_slower():
    assert not decide_int8(_formats(0.96, 9000.0), 32, LIMITS, 0.97)["used_for_serving"]
    slower = decide_int8(_formats(0.98, 4000.0), 32, LIMITS, 1.0)
    assert not slower["used_for_serving"] and "speed-up 0.80x" in slower["why"]
