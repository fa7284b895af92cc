"""Packaging: `bentoml build` of the tests' shared champion (tests/conftest.py), GPU and CPU variants, checked as built (no docker
engine here, so the generated Dockerfiles are checked rather than built), and `bentoml serve` of
the built bento answering from the model packed inside it, with the registry out of reach."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from helpers import run_cli
from serve import launch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bentos(tmp_path_factory, champion):
    """The champion packed by `python -m serve.package` (its BentoML home and output here, not in the store)."""
    store = tmp_path_factory.mktemp("bento")
    env = {"MLFLOW_TRACKING_URI": champion.tracking_uri, "BENTOML_HOME": str(store / "bentoml")}
    r = run_cli(["-m", "serve.package", f"out={store / 'out'}"], env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return store, env, json.loads((store / "out" / "bentos.json").read_text())


def test_gpu_variant_targets_nvidia(bentos):
    store, _, built = bentos
    docker = Path(built["bentos"]["gpu"]["dockerfile"]).read_text()
    assert "FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04" in docker
    bento = Path(built["bentos"]["gpu"]["path"])
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime-gpu==1.31.1" in reqs
    svc = (bento / "bento.yaml").read_text()
    assert "gpu: 1" in svc and "VISIONOPS_BENTO_MODEL" in svc
    assert (store / "out" / "visionops-gpu.bento").stat().st_size > 10_000


def test_cpu_variant_and_packed_model(bentos):
    _, _, built = bentos
    docker = Path(built["bentos"]["cpu"]["dockerfile"]).read_text()
    assert "nvidia/cuda" not in docker and "python:3.11" in docker
    bento = Path(built["bentos"]["cpu"]["path"])
    assert "onnxruntime==1.31.1" in (bento / "env" / "python" / "requirements.txt").read_text()
    import tarfile

    with tarfile.open(built["bentos"]["cpu"]["archive"]) as tar:
        names = tar.getnames()
    assert any(n.endswith("models/visionops-digits/v1/artifacts/bundle.json") for n in names), "the model is packed"
    assert any(n.endswith("artifacts/model.onnx") for n in names)
    assert not [n for n in names if "/src/train/" in n], "training code stays out of the serving image"


def test_bentoml_serve_of_the_built_bento(bentos, digits_small, tmp_path):
    _store, _env, built = bentos
    port = launch.free_port()
    # A fresh BentoML home that knows only the exported archive, and an unreachable registry:
    # the bento must answer from the model packed inside it.
    home = tmp_path / "fresh-bentoml"
    run_env = {**os.environ, "BENTOML_HOME": str(home), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
               "VISIONOPS_PREDICTION_LOG": ""}
    imp = subprocess.run([str(Path(sys.executable).parent / "bentoml"), "import", built["bentos"]["cpu"]["archive"]],
                         env=run_env, capture_output=True, text=True, check=False)
    assert imp.returncode == 0, imp.stderr
    proc = launch.bentoml_serve(built["bentos"]["cpu"]["tag"], port, tmp_path / "serve.log", run_env)
    try:
        url = f"http://127.0.0.1:{port}"
        img = min(digits_small.rglob("*.png"))
        r = httpx.post(url + "/classify", files={"image": (img.name, img.read_bytes())})
        assert r.status_code == 200 and r.json()["model_version"] == "1"
    finally:
        launch.stop(proc)
