"""`make mlflow-ui` and `make evidently-ui` for real: the launcher starts MLflow's and Evidently's
UIs on a free port, prints its ready line only once the page answers (MLflow's opening the model
training view, where the runs and the registry are), and Ctrl-C / SIGTERM stops the whole server."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from helpers import REPO
from serve import launch

pytestmark = pytest.mark.integration


class Launcher:
    """`python -m visionops.webui ...` with its output read line by line as it comes."""

    def __init__(self, args: list[str], cwd):
        self.proc = subprocess.Popen([sys.executable, "-u", "-m", "visionops.webui", *args], cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()

    def wait_for(self, text: str, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, "the launcher exited:\n" + "".join(self.seen)
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} after {timeout} s:\n" + "".join(self.seen))

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stops_answering(url: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _answers(url):
            return True
        time.sleep(0.5)
    return False


def test_mlflow_ui_says_ready_only_when_its_page_answers_in_the_model_training_view(tmp_path):
    port = launch.free_port()
    base = f"http://127.0.0.1:{port}"
    ui = Launcher(["mlflow", f"port={port}", f"store=sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path)
    try:
        ui.wait_for("Starting the MLflow UI")
        assert not _answers(f"{base}/")  # the server is only starting: saying "ready" now would be wrong
        line = ui.wait_for("MLflow UI ready at")
        assert _answers(f"{base}/") and "<title>MLflow</title>" in httpx.get(f"{base}/").text
        assert f"{base}/#/experiments?workflowType=machine_learning" in line
    finally:
        code = ui.terminate()
    assert code == 0 and _stops_answering(f"{base}/")


def test_evidently_ui_says_ready_and_links_each_projects_dashboard(tmp_path):
    from evidently.ui.workspace import Workspace

    project = Workspace.create(str(tmp_path / "workspace")).create_project("visionops")
    port = launch.free_port()
    base = f"http://127.0.0.1:{port}"
    ui = Launcher(["evidently", f"port={port}", f"workspace={tmp_path / 'workspace'}"], tmp_path)
    try:
        ui.wait_for("Starting the Evidently UI")
        ui.wait_for("Evidently UI ready at")
        assert _answers(f"{base}/api/version")
        line = ui.wait_for("project visionops:", timeout=30)
        assert line.strip().endswith(f"{base}/projects/{project.id}") and _answers(f"{base}/projects/{project.id}")
    finally:
        code = ui.terminate()
    assert code == 0 and _stops_answering(f"{base}/api/version")


def test_a_busy_port_is_a_one_line_error():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "visionops.webui", "evidently", f"port={port}"], cwd=REPO,
                           capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: port {port} is in use (another UI still running?); pick another: EVIDENTLY_PORT=<port> make evidently-ui"]


def test_make_targets_use_the_launcher():
    r = subprocess.run(["make", "-n", "mlflow-ui", "evidently-ui"], cwd=REPO, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "-m visionops.webui mlflow port=5000" in r.stdout
    assert "-m visionops.webui evidently port=" in r.stdout and "workspace=monitoring/workspace" in r.stdout
