"""The service for real: `bentoml serve` on 127.0.0.1 with the tests' shared champion (a small
registered model, tests/conftest.py). Answers match
in-process predictions, every hostile upload is a 4xx with a JSON message (never a 5xx, never a
hang) and the server keeps serving, 100 concurrent requests are all answered right and leave
exactly 100 prediction records, and the API key is enforced. The docs page and BentoML's own
Python client; limits that keep a worker's memory and metrics bounded; stalled and oversized
uploads; request ids; a full disk refused with 503s and nothing lost or torn in the log."""

from __future__ import annotations

import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from serve import launch
from serve.runtime import ModelRuntime
from serve.settings import Settings
from visionops.prediction_log import read_log

pytestmark = pytest.mark.integration


class Server:
    """`bentoml serve serve.service:Classifier` on a free port, started and stopped by serve.launch.
    Its own BENTOML_HOME, so its /metrics are not mixed with another server's."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env = {"BENTOML_HOME": str(log.with_suffix(".bentoml")), **env}
        self.log = log
        self.port = launch.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = launch.bentoml_serve("serve.service:Classifier", self.port, log, self.env)

    def workers(self) -> list[psutil.Process]:
        return [p for p in psutil.Process(self.proc.pid).children(recursive=True)
                if "_bentoml_impl.worker.service" in p.cmdline()]

    def stop(self) -> None:
        launch.stop(self.proc)


@pytest.fixture(scope="module")
def store(champion) -> str:
    """The tracking URI of the shared champion's store (read only)."""
    return champion.tracking_uri


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """This module's servers' logs, prediction logs and BentoML homes."""
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def server(store, out):
    env = {"MLFLOW_TRACKING_URI": store, "VISIONOPS_PREDICTION_LOG": str(out / "log"),
           "VISIONOPS_MAX_BYTES": "200000", "VISIONOPS_MAX_PIXELS": "1000000", "VISIONOPS_KEEP_IMAGES": "0.5"}
    s = Server(env, out / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def in_process(store):
    return ModelRuntime.load(Settings(tracking_uri=store, log_dir=None))


def _images(digits_small: Path, n: int) -> list[Path]:
    return sorted(digits_small.rglob("*.png"))[:: max(1, 200 // n)][:n]


def _expected(rt: ModelRuntime, path: Path) -> dict:
    (pred,), (rec,) = rt.run([path.read_bytes()], ["expected"])
    return {**pred, "embedding": rec["embedding"]}


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
    good = min(digits_small.rglob("*.png"))
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


def test_api_key_is_enforced(store, out, digits_small):
    s = Server({"MLFLOW_TRACKING_URI": store, "VISIONOPS_API_KEY": "s3cret",
                "VISIONOPS_PREDICTION_LOG": "", "VISIONOPS_METRICS_NEED_KEY": "1"}, out / "server-key.log")
    try:
        img = min(digits_small.rglob("*.png")).read_bytes()
        assert httpx.post(s.url + "/classify", files={"image": ("a.png", img)}).status_code == 401
        bad = httpx.post(s.url + "/classify", files={"image": ("a.png", img)}, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and "API key" in bad.json()["error"]
        ok = httpx.post(s.url + "/classify", files={"image": ("a.png", img)}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(s.url + "/readyz").status_code == 200, "health stays open"
        assert httpx.get(s.url + "/").status_code == 200, "docs stay open"
        # VISIONOPS_METRICS_NEED_KEY=1 puts /metrics behind the key too.
        assert httpx.get(s.url + "/metrics").status_code == 401
        assert httpx.get(s.url + "/metadata").status_code == 401
        metrics = httpx.get(s.url + "/metrics", headers={"Authorization": "Bearer s3cret"})
        assert metrics.status_code == 200 and "bentoml_service_request_total" in metrics.text
    finally:
        s.stop()


# --- What a new user meets: the docs page, the server log, BentoML's Python client -------------------

def test_docs_page_and_spec_describe_this_service(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "<title>visionops: visionops-digits version 1</title>" in page.text
    spec = httpx.get(server.url + "/docs.json")
    info = spec.json()["info"]
    assert info["title"] == "visionops: visionops-digits version 1" and info["version"] == "1"
    assert "visionops-digits" in info["description"] and "POST /classify" in info["description"]
    assert "BentoML" not in info["description"]
    # Nothing on the page or in the spec is fetched from another host (BentoML's pull Google Tag
    # Manager and five badge hosts): it works offline.
    for text in (page.text, spec.text):
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text) and "shields.io" not in text
        assert "googletagmanager" not in text and "badgen" not in text
    paths = spec.json()["paths"]
    assert "get" in paths["/metadata"] and "post" in paths["/classify"]
    assert "413" in paths["/classify"]["post"]["responses"]
    assert httpx.get(server.url + "/static_content/swagger-ui-bundle.js").status_code == 200, "the page's script"


def test_server_log_names_the_loaded_model(server):
    text = server.log.read_text()
    assert re.search(r"Loaded model visionops-digits version 1 \(.*\) from models:/visionops-digits@champion", text), \
        text[-2000:]


def test_bentoml_python_client_classifies(server, in_process, digits_small):
    import bentoml

    path = _images(digits_small, 1)[0]
    with bentoml.SyncHTTPClient(server.url) as client:
        got = client.classify(image=path)
        batch = client.classify_batch(images=[path, path])
        meta = client.metadata()
    assert got["label"] == _expected(in_process, path)["label"] and got["model_version"] == "1"
    assert [p["label"] for p in batch] == [got["label"]] * 2
    assert meta["model_name"] == "visionops-digits"


# --- Error answers ------------------------------------------------------------------------------------

def test_more_than_1000_parts_is_a_4xx_with_an_error_object(server):
    # Starlette's parser refuses more than 1,000 parts and BentoML turned that into a 500.
    files = [("images", ("a.png", b"x"))] * 1001
    r = httpx.post(server.url + "/classify_batch", files=files, timeout=30)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert "1001 images" in r.json()["error"] and "VISIONOPS_MAX_BATCH_IMAGES" in r.json()["error"]


def test_every_error_body_is_an_object_with_error(server, digits_small):
    good = _images(digits_small, 1)[0].read_bytes()
    answers = {
        "unknown path": httpx.get(server.url + "/nope"),
        "wrong method": httpx.get(server.url + "/classify"),
        "wrong method on BentoML's route": httpx.put(server.url + "/metadata"),
        "bad JSON to BentoML's route": httpx.post(server.url + "/metadata", content=b"{",
                                                  headers={"content-type": "application/json"}),
        "too many images": httpx.post(server.url + "/classify_batch", files=[("images", ("a.png", good))] * 65),
        "a bad image in a batch": httpx.post(server.url + "/classify_batch",
                                             files=[("images", ("a.png", good)), ("images", ("b.png", b"nope"))]),
        "no images in a batch": httpx.post(server.url + "/classify_batch", files={"other": ("a.png", good)}),
    }
    for case, r in answers.items():
        assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
        body = r.json()
        assert isinstance(body, dict) and isinstance(body["error"], str) and body["error"], (case, body)
    assert "image 2 of 2" in answers["a bad image in a batch"].json()["error"]
    # Client errors are the client's: the server log gets no traceback for them.
    assert "Traceback" not in server.log.read_text()


def test_random_and_mangled_bodies_never_get_a_5xx(server, digits_small):
    """The gate's own multipart parser, fuzzed through the real server: 4xx (or a 200 when the
    mangling left a valid image), never a 5xx, and the server keeps serving."""
    import random

    rng = random.Random(0)
    good = _images(digits_small, 1)[0].read_bytes()
    valid = (b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
             b"Content-Type: image/png\r\n\r\n" + good + b"\r\n--XyZ--\r\n")
    statuses = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for i in range(300):
            body = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(body))
                if rng.random() < 0.5:
                    body[at] = rng.randrange(256)
                else:
                    del body[at : at + rng.randint(1, 30)]
            if i % 10 == 0:
                body = bytearray(rng.randbytes(rng.randint(0, 2000)))
            path = rng.choice(["/classify", "/classify_batch", "/embed"])
            r = client.post(path, content=bytes(body), headers={"content-type": "multipart/form-data; boundary=XyZ"})
            statuses.append(r.status_code)
            assert r.status_code < 500, (path, bytes(body)[:200], r.status_code, r.text)
            assert isinstance(r.json(), list if r.status_code == 200 and path == "/classify_batch" else dict)
    assert statuses.count(400) > 200
    assert httpx.post(server.url + "/classify", files={"image": ("a.png", good)}).status_code == 200


def test_unknown_paths_do_not_grow_metrics(server):
    before = len(httpx.get(server.url + "/metrics").text)
    with httpx.Client(base_url=server.url) as client:
        for i in range(500):
            assert client.get(f"/scan/{i}").status_code == 404
    metrics = httpx.get(server.url + "/metrics").text
    # BentoML labelled every raw path: 500 new series of each metric (~1.9 MB; 2,000 made 7.5 MB).
    assert len(metrics) - before < 20_000, len(metrics) - before
    assert "/scan/" not in metrics
    assert any('endpoint="/{unknown}"' in line and 'http_response_code="404"' in line
               for line in metrics.splitlines() if line.startswith("bentoml_service_request_total"))


# --- Limits, request ids and a full disk: a one-worker server with small limits --------------------------

@pytest.fixture(scope="module")
def strict(store, out):
    env = {"MLFLOW_TRACKING_URI": store, "VISIONOPS_PREDICTION_LOG": str(out / "strict-log"),
           "VISIONOPS_WORKERS": "1", "VISIONOPS_MAX_BYTES": "2000000", "VISIONOPS_BODY_TIMEOUT_S": "2",
           "VISIONOPS_KEEP_IMAGES": "1"}
    s = Server(env, out / "strict.log")
    yield s
    s.stop()


def _raw(server: Server, head: str, body_chunks, wait: float = 15.0) -> tuple[bytes, int]:
    """Send a request over a plain socket, a chunk at a time, and stop as soon as the server
    answers. Returns (the answer, body bytes sent before it came)."""
    import select
    import socket

    sock = socket.create_connection(("127.0.0.1", server.port), timeout=wait)
    sent, answer = 0, b""
    try:
        sock.sendall(head.encode())
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except OSError:  # the server closed the connection: its answer is waiting
                break
            sent += len(chunk)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
            if b"\r\n\r\n" in answer and b"content-length" in answer.lower():
                head_end = answer.index(b"\r\n\r\n") + 4
                length = int(re.search(rb"content-length: (\d+)", answer, re.IGNORECASE).group(1))
                if len(answer) >= head_end + length:
                    break
    finally:
        sock.close()
    return answer, sent


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _peak_rss(proc: psutil.Process) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_single_image_upload_stops_at_the_image_limit(strict):
    """A 100 MB upload to /classify (chunked: no content-length to refuse it by) is cut off with a
    413 once it passes the image limit; the worker neither reads it all nor holds it."""
    worker, = strict.workers()
    peak = _peak_rss(worker)
    head = ("POST /classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n")
    mib = b"x" * (1 << 20)
    chunked = (b"%x\r\n%s\r\n" % (len(mib), mib) for _ in range(100))
    answer, sent = _raw(strict, head, chunked)
    assert _status(answer) == 413 and b"VISIONOPS_MAX_BYTES" in answer, answer[:500]
    # The server stopped at ~2 MB (plus what the sockets buffer); it read all 100 MB before
    # (single-image routes shared the 64-image batch cap of 129 MB).
    assert sent < 40 << 20, sent
    assert _peak_rss(worker) - peak < 40 << 20, (_peak_rss(worker) - peak) >> 20
    # A declared length over the limit is refused before any of the body is read.
    answer, _ = _raw(strict, "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 300000000\r\n"
                             "Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n", [])
    assert _status(answer) == 413 and b"over the limit of 2016384 bytes for /embed" in answer, answer


def test_stalled_upload_is_the_clients_408(strict):
    import time

    head = ("POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n"
            "Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n")
    t0 = time.monotonic()
    answer, _ = _raw(strict, head, [b"--XyZ\r\n" + b"x" * 100])  # ... and then nothing
    assert _status(answer) == 408 and b"VISIONOPS_BODY_TIMEOUT_S" in answer, answer
    assert time.monotonic() - t0 < 10, "the body timeout (2 s here), not the 30 s request timeout's 504"


def test_request_ids_are_bounded_and_kept_images_never_overwritten(strict, digits_small):
    paths = _images(digits_small, 8)
    # The same id sent twice, and ids that a file name would make alike, each keep their own image.
    ids = ["same-id", "same-id", "a.b", "a_b", "a-b", "A.B", "x" * 128, "a..b"]
    for rid, path in zip(ids, paths, strict=True):
        r = httpx.post(strict.url + "/classify", files={"image": (path.name, path.read_bytes())},
                       headers={"x-request-id": rid})
        assert r.status_code == 200 and r.headers["x-request-id"] == rid, r.text
    log = read_log(strict.env["VISIONOPS_PREDICTION_LOG"])
    mine = log[log["request_id"].isin(ids)]
    assert len(mine) == len(ids) and mine["image_path"].nunique() == len(ids)
    kept = {Path(p).read_bytes() for p in mine["image_path"]}
    assert kept == {p.read_bytes() for p in paths}, "every record points at its own request's image"
    for bad in ["a/b", "x" * 129, "has space", "ünï", "../etc"]:
        r = httpx.post(strict.url + "/classify", files={"image": ("a.png", paths[0].read_bytes())},
                       headers={"x-request-id": bad.encode()})
        assert r.status_code == 400 and "1 to 128 characters" in r.json()["error"], (bad, r.text)


def test_full_disk_is_a_503_and_loses_nothing(strict, digits_small):
    """The worker's file-size limit (RLIMIT_FSIZE) set just past its log's end: the next record
    fits only partly, as on a disk that fills mid-write. Then the limit is lifted (space returns)."""
    import resource

    log_dir = Path(strict.env["VISIONOPS_PREDICTION_LOG"])
    path = _images(digits_small, 1)[0]

    def send(prefix: str, n: int) -> list[httpx.Response]:
        return [httpx.post(strict.url + "/classify", files={"image": (path.name, path.read_bytes())},
                           headers={"x-request-id": f"{prefix}-{i}"}) for i in range(n)]

    assert [r.status_code for r in send("before", 5)] == [200] * 5
    worker, = strict.workers()
    log_file, = log_dir.glob(f"predictions-*-{worker.pid}.jsonl")
    soft, hard = resource.prlimit(worker.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(worker.pid, resource.RLIMIT_FSIZE, (log_file.stat().st_size + 100, hard))
    try:
        failed = send("full", 5)
        assert [r.status_code for r in failed] == [503] * 5, [(r.status_code, r.text) for r in failed]
        assert all("prediction log" in r.json()["error"] for r in failed)
        assert httpx.get(strict.url + "/readyz").status_code == 503
    finally:
        resource.prlimit(worker.pid, resource.RLIMIT_FSIZE, (soft, hard))
    assert httpx.get(strict.url + "/readyz").status_code == 200, "space is back: ready again"
    assert [r.status_code for r in send("after", 5)] == [200] * 5
    lines = [line for f in log_dir.glob("predictions-*.jsonl") for line in f.read_bytes().splitlines()]
    records = [json.loads(line) for line in lines]  # every line whole: none torn, none glued
    ids = [r["request_id"] for r in records]
    assert [i for i in ids if i.startswith(("before-", "full-", "after-"))] == \
        [f"before-{i}" for i in range(5)] + [f"after-{i}" for i in range(5)], "each 200 has its record; no 503 has one"
    kept = {p.name for p in (log_dir / "images").iterdir()}
    assert not [k for k in kept if k.startswith("full-")], "the refused requests' images are not kept"
    assert "cannot write the prediction log" in strict.log.read_text()
