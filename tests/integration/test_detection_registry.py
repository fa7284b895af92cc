"""A detection project in the registry for real (a temporary MLflow SQLite store, the session's
three detectors: tests/conftest.py `detectors`): its own registered name, a gate on mAP@0.5 with a
paired bootstrap over the pinned test images (a worse detector is refused, a better one promoted),
a model card with AP per class, a pyfunc that returns boxes; promote, rollback and bad input behave
as for classification."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from helpers import DETECTOR, run_cli

pytestmark = pytest.mark.integration
NAME = "visionops-digits_easy"


def _champion(client) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def _promote(store: Path, root: Path, *args: str):
    own = [a for a in DETECTOR if a.startswith(("task=", "data="))]
    return run_cli(["-m", "train.promote", *args, *own, f"data.root={root}",
                    f"logger.tracking_uri=sqlite:///{store / 'mlflow.db'}", f"paths.prepared={store / 'prepared'}",
                    f"paths.reports={store / 'promote'}"])


def test_the_first_detector_becomes_champion_under_its_own_name(detectors):
    _, _, client, (v1, _, _) = detectors
    assert v1["model"] == NAME and v1["decision"] == "promoted to champion" and v1["champion"] is None
    assert v1["primary_metric"] == "map_50" and v1["test_images"] == 45
    assert {m.name for m in client.search_registered_models()} == {NAME}


def test_a_better_detector_is_promoted(detectors):
    store, _, client, (v1, v2, _) = detectors
    assert v2["passed"] and v2["decision"] == "promoted to champion" and v2["champion"]["version"] == "1"
    assert set(v2["gates"]) == {"parity", "latency", "metric"}
    g = v2["gates"]["metric"]
    assert g["samples"] == 1000 and 0 < g["ci_low"] <= g["diff"] <= g["ci_high"]
    assert g["diff"] == pytest.approx(v2["challenger"]["map_50"] - v1["challenger"]["map_50"])
    assert v2["challenger"]["map_50"] > 0.8
    assert v2["gates"]["parity"]["box_match"] >= 0.99
    assert _champion(client) == "2"
    # The gate ran the registered ONNX model; the evaluate stage, PyTorch: the same mAP.
    evaluated = json.loads((store / "v2" / "reports" / "evaluate" / "metrics.json").read_text())
    assert v2["challenger"]["map_50"] == pytest.approx(evaluated["test/map_50"], abs=1e-4)


def test_a_worse_detector_is_refused(detectors):
    _, _, client, (_, _, v3) = detectors
    assert v3["passed"] is False and v3["decision"] == "kept as challenger: failed metric"
    assert v3["gates"]["metric"]["ci_high"] < 0 and v3["champion"]["version"] == "2"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "3"


def test_model_card_has_ap_per_class(detectors):
    store, _, client, _ = detectors
    card = client.get_model_version(NAME, "2").description
    assert card == (store / "v2" / "reports" / "register" / "model_card.md").read_text()
    assert card.startswith(f"# {NAME} version 2") and "| task | object detection |" in card
    rows = [line for line in card.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert len(rows) == 2 and all(len(r.split("|")) == 7 for r in rows)
    details = json.loads((store / "v2" / "reports" / "register" / "verdict.json").read_text())["details"]
    assert set(details["challenger"]["per_class"]) == {"0", "1"} and "champion" in details
    assert sum(c["objects"] for c in details["challenger"]["per_class"].values()) > 0
    mv = client.get_model_version(NAME, "2")
    assert {"git_commit", "data_version", "run_id", "config_hash"} <= set(mv.tags)


def test_pyfunc_returns_boxes_per_image(detectors):
    """What `mlflow models serve` runs: per image, its detections in its own pixels."""
    from train.tasks.detection.dataset import read_split
    from train.tasks.detection.export import batches
    from visionops.preprocess import PreprocessSpec

    store, _, client, _ = detectors
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    spec = PreprocessSpec(size=(128, 128), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x, sizes = next(batches(read_split(store / "prepared" / "test.json"), spec, 6))
    big = sizes * 2
    out = model.predict({"images": x, "orig_size": big})
    assert len(out) == 6 and sum(len(per) for per in out) > 0
    for per in out:
        for d in per:
            assert set(d) == {"box", "score", "label"} and d["label"] in ("0", "1") and d["score"] >= 0.3
            assert 0 <= d["box"][0] <= d["box"][2] <= 256 and 0 <= d["box"][1] <= d["box"][3] <= 256
    strict = model.predict({"images": x, "orig_size": big}, params={"score_threshold": 0.9})
    assert sum(map(len, strict)) <= sum(map(len, out))
    assert model.metadata.get_input_schema().input_names() == ["images", "orig_size"]


def test_promote_refuses_a_worse_one_forces_with_a_reason_and_rolls_back(detectors):
    store, root, client, _ = detectors
    r = _promote(store, root, "version=3")
    assert r.returncode == 0 and "kept as challenger" in r.stdout and _champion(client) == "2"
    r = _promote(store, root, "version=3", "force=true")
    assert r.returncode == 2 and "needs a reason" in r.stderr and _champion(client) == "2"
    r = _promote(store, root, "version=3", "force=true", "reason=incident-7")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _champion(client) == "3" and client.get_model_version(NAME, "3").tags["promotion.forced_reason"] == "incident-7"
    card = (store / "promote" / "register" / "model_card.md").read_text()
    assert "promoted to champion (forced)" in card and "| 0 |" in card
    r = _promote(store, root, "version=2")  # roll back: v2 beats v3, so the gate passes
    assert r.returncode == 0 and _champion(client) == "2"


@pytest.mark.parametrize("args, message", [
    (["version=9"], "has no version 9"),
    (["version=1", "registry.model_name=no-such-model"], "no registered model 'no-such-model'"),
    (["version=1", "registry.gate.primary_metric=accuracy"], "is not a detection metric"),
])
def test_bad_input_is_a_clear_error_and_moves_nothing(detectors, args, message):
    store, root, client, _ = detectors
    r = _promote(store, root, *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert _champion(client) == "2"

