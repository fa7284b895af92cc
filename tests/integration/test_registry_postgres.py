"""Beyond one machine: the same register / promote / load-by-alias code against a real
`mlflow server` with a PostgreSQL backend store and a shared artifact root, on 127.0.0.1.

PostgreSQL is Debian's package (`.ci/run` installs it when missing); this test starts its own
throw-away cluster and server, and skips, saying so, only where PostgreSQL is not installed.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import build_version, run_cli
from serve import launch
from visionops.model_store import fetch

pytestmark = pytest.mark.integration


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it for CI")
    base = Path(tempfile.mkdtemp(prefix="visionops-pg-", dir="/tmp"))
    os.chmod(base, 0o777)
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    os.chmod(sock, 0o777)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    subprocess.run(_as_postgres([initdb, "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True)
    port = launch.free_port()
    subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-w", "-l", str(base / "pg.log"), "-o",
                                 f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("shared-artifacts")
    port = launch.free_port()
    # MLflow's job runner (GenAI evaluation jobs, trace archival: nothing the registry uses) stays off:
    # it is a second process started beside the server that took ~12 s to stop.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # A file, not a pipe (a full pipe would block the server), open for the server's whole life: closed below.
    log = open(artifacts.parent / "mlflow-server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", postgres,
         "--artifacts-destination", str(artifacts), "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError("mlflow server exited:\n" + (artifacts.parent / "mlflow-server.log").read_text()[-3000:])
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not answer /health within 120 s")
    yield url, artifacts
    import signal

    os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker processes
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def test_register_promote_and_load_by_alias_on_a_server(mlflow_server, tmp_path, digits_small):
    url, artifacts = mlflow_server
    server = ["logger.tracking_uri=" + url]
    v1 = build_version(tmp_path, tmp_path / "v1", digits_small, [*server, "trainer.max_epochs=2"])
    assert v1["decision"] == "promoted to champion"
    v2 = build_version(tmp_path, tmp_path / "v2", digits_small,
                       [*server, "trainer.max_epochs=1", "trainer.limit_train_batches=1"])
    champion = fetch("models:/visionops-digits@champion", tracking_uri=url)
    assert champion.version == "1"

    r = run_cli(["-m", "train.promote", f"version={2}", "force=true", "reason=server test", *server,
                 f"paths.prepared={tmp_path / 'prepared'}", f"paths.reports={tmp_path / 'promote'}"])
    assert r.returncode == 0, r.stderr[-3000:]
    champion = fetch("models:/visionops-digits@champion", tracking_uri=url)
    assert champion.version == "2" and champion.bundle.labels == [str(i) for i in range(10)]
    assert champion.load().predict_proba(__import__("numpy").zeros((1, 3, 32, 32), "float32")).shape == (1, 10)
    assert any(artifacts.rglob("model.onnx")), "artifacts went to the server's shared artifact root"
    assert v2["decision"].startswith("kept as challenger")
