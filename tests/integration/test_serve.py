"""The service for real: `bentoml serve` on 127.0.0.1 with a tiny registered model. Answers match
in-process predictions, every hostile upload is a 4xx with a JSON message (never a 5xx, never a
hang) and the server keeps serving, 100 concurrent requests are all answered right and leave
exactly 100 prediction records, and the API key is enforced."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers import build_version
from serve import launch
from serve.runtime import ModelRuntime
from serve.settings import Settings
from visionops.prediction_log import read_log

pytestmark = pytest.mark.integration


class Server:
    """`bentoml serve serve.service:Classifier` on a free port, started and stopped by serve.launch."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env = env
        self.port = launch.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = launch.bentoml_serve("serve.service:Classifier", self.port, log, env)

    def stop(self) -> None:
        launch.stop(self.proc)


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits_small):
    store = tmp_path_factory.mktemp("serve")
    build_version(store, store / "v1", digits_small, ["trainer.max_epochs=3", "model.net.width=16"])
    return store


@pytest.fixture(scope="module")
def server(store):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "VISIONOPS_PREDICTION_LOG": str(store / "log"),
           "VISIONOPS_MAX_BYTES": "200000", "VISIONOPS_MAX_PIXELS": "1000000", "VISIONOPS_KEEP_IMAGES": "0.5"}
    s = Server(env, store / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def in_process(store):
    settings = Settings(tracking_uri=f"sqlite:///{store / 'mlflow.db'}", log_dir=None)
    return ModelRuntime.load(settings)


def _images(digits_small: Path, n: int) -> list[Path]:
    return sorted(digits_small.rglob("*.png"))[:: max(1, 200 // n)][:n]


def _expected(rt: ModelRuntime, path: Path) -> dict:
    x, _ = rt.prepare(path.read_bytes())
    logits, emb = rt.infer(x)
    return {**rt.predictions(logits)[0][0], "embedding": emb[0]}


def test_endpoints_match_in_process_predictions(server, in_process, digits_small):
    for path in _images(digits_small, 5):
        r = httpx.post(server.url + "/classify", files={"image": (path.name, path.read_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        got, want = r.json(), _expected(in_process, path)
        assert got["label"] == want["label"] and got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert [t["label"] for t in got["top_k"]] == [t["label"] for t in want["top_k"]]
        assert got["model_version"] == "1" and len(got["top_k"]) == 5
        e = httpx.post(server.url + "/embed", files={"image": (path.name, path.read_bytes())}).json()
        assert np.allclose(e["embedding"], want["embedding"], atol=1e-4) and e["dim"] == len(want["embedding"])
    paths = _images(digits_small, 4)
    r = httpx.post(server.url + "/classify_batch", files=[("images", (p.name, p.read_bytes())) for p in paths])
    assert r.status_code == 200
    assert [p["label"] for p in r.json()] == [_expected(in_process, p)["label"] for p in paths]


def test_metadata_and_bentoml_endpoints(server):
    meta = httpx.get(server.url + "/metadata").json()
    assert meta["model_name"] == "visionops-digits" and meta["model_version"] == "1"
    assert meta["labels"] == [str(i) for i in range(10)] and meta["input"]["size"] == [32, 32]
    assert {"git_commit", "data_version", "embedding"} <= set(meta)
    assert httpx.post(server.url + "/metadata", json={}).json()["model_version"] == "1"
    assert httpx.get(server.url + "/livez").status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    assert "bentoml_service_request_total" in metrics
    assert any('endpoint="/classify"' in line and 'http_response_code="200"' in line
               for line in metrics.splitlines() if line.startswith("bentoml_service_request_total"))
    assert httpx.get(server.url + "/docs.json").json()["paths"].keys() >= {"/classify", "/classify_batch", "/embed"}


def _png(size: tuple[int, int], color=(0, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _noise_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


HOSTILE = {
    "empty": ({"files": {"image": ("e.png", b"")}}, "empty"),
    "truncated": ({"files": {"image": ("t.png", _noise_png(64)[:300])}}, "corrupt or truncated"),
    "random bytes": ({"files": {"image": ("r.bin", np.random.default_rng(1).bytes(5000))}}, "not a recognised image"),
    "text": ({"files": {"image": ("a.txt", b"just some text\n" * 20)}}, "not a recognised image"),
    "svg": ({"files": {"image": ("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>')}}, "SVG"),
    "oversize": ({"files": {"image": ("big.png", _noise_png(300))}}, "over the limit"),
    "decompression bomb": ({"files": {"image": ("bomb.png", _png((3000, 3000)))}}, "pixels"),
    "misnamed field": ({"files": {"picture": ("p.png", _png((8, 8)))}}, "field 'image'"),
    "missing field": ({"data": {"note": "hello"}, "files": {"other": ("o.txt", b"x")}}, "field 'image'"),
    "json body": ({"json": {"image": "/etc/passwd"}}, "multipart/form-data"),
    "two images in one field": ({"files": [("image", ("a.png", _png((8, 8)))), ("image", ("b.png", _png((8, 8))))]},
                                "send one image"),
    "not multipart at all": ({"content": b"\x89PNG...", "headers": {"content-type": "multipart/form-data"}},
                             "boundary"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_is_a_4xx_with_a_message(server, digits_small, case):
    kwargs, message = HOSTILE[case]
    r = httpx.post(server.url + "/classify", timeout=10, **kwargs)
    assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
    assert message in r.text, r.text
    json.loads(r.text)  # a JSON body
    good = sorted(digits_small.rglob("*.png"))[0]
    after = httpx.post(server.url + "/classify", files={"image": (good.name, good.read_bytes())})
    assert after.status_code == 200 and after.json()["label"] in [str(i) for i in range(10)]


def test_100_concurrent_requests_all_answered_and_logged(server, in_process, digits_small):
    paths = _images(digits_small, 100)
    want = {p: _expected(in_process, p)["label"] for p in paths}
    ids = [f"concurrency-{i:03d}" for i in range(100)]

    def call(i: int) -> tuple[int, str]:
        p = paths[i]
        r = httpx.post(server.url + "/classify", files={"image": (p.name, p.read_bytes())},
                       headers={"x-request-id": ids[i]}, timeout=30)
        assert r.headers.get("x-request-id") == ids[i]
        return r.status_code, r.json()["label"] if r.status_code == 200 else r.text

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, range(100)))
    assert [s for s, _ in results] == [200] * 100, results
    assert [label for _, label in results] == [want[p] for p in paths]
    log = read_log(server.env["VISIONOPS_PREDICTION_LOG"])
    mine = log[log["request_id"].isin(ids)]
    assert len(mine) == 100 and mine["request_id"].nunique() == 100
    row = mine.iloc[0]
    assert {"width", "height", "channels", "brightness", "contrast", "sharpness", "saturation", "mean_r",
            "embedding", "predicted_label", "top_score", "probabilities", "model_version"} <= set(mine.columns)
    assert row["width"] == 8 and row["channels"] == 1 and len(row["probabilities"]) == 10
    kept = mine["image_path"].dropna()
    assert 20 <= len(kept) <= 80, "about half of the images are kept (VISIONOPS_KEEP_IMAGES=0.5)"
    assert all(Path(p).exists() for p in kept)


def test_api_key_is_enforced(store, digits_small):
    s = Server({"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "VISIONOPS_API_KEY": "s3cret",
                "VISIONOPS_PREDICTION_LOG": ""}, store / "server-key.log")
    try:
        img = sorted(digits_small.rglob("*.png"))[0].read_bytes()
        assert httpx.post(s.url + "/classify", files={"image": ("a.png", img)}).status_code == 401
        bad = httpx.post(s.url + "/classify", files={"image": ("a.png", img)}, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and "API key" in bad.json()["error"]
        ok = httpx.post(s.url + "/classify", files={"image": ("a.png", img)}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(s.url + "/readyz").status_code == 200, "health stays open"
    finally:
        s.stop()
