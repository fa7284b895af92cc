"""The notebook runs top to bottom against a real MLflow store and draws every run's curves."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import REPO, make_cfg
from train.fit import train
from train.prepare import prepare

pytestmark = pytest.mark.integration


def test_compare_runs_notebook(tmp_path, digits_small, monkeypatch):
    run_names = []
    for lr in ("0.003", "0.01"):
        cfg = make_cfg(tmp_path, digits_small, ["trainer.max_epochs=2", f"model.optimizer.lr={lr}",
                                                f"logger.run_name=lr{lr}"])
        if not run_names:
            prepare(cfg)
        train(cfg)
        run_names.append(f"lr{lr}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("VISIONOPS_NOTEBOOK_OUT", str(tmp_path / "nb"))
    nb = nbformat.read(REPO / "notebooks" / "compare_runs.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    out = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "2 runs compared" in out
    table = nb.cells[2].outputs[0]["data"]["text/plain"]
    assert all(name in table for name in run_names)
    assert (tmp_path / "nb" / "learning_curves.png").stat().st_size > 10_000


def test_make_notebook_opens_it_in_jupyterlab():
    """What `make demo` installs opens the notebook: `make notebook` serves JupyterLab, whose
    contents API hands out compare_runs.ipynb."""
    import json
    import os
    import re
    import signal
    import socket
    import subprocess
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "NOTEBOOK_PORT": str(port)}
    proc = subprocess.Popen(["make", "-s", "-o", ".venv/.installed-stamp", "notebook"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, url, deadline = "", None, time.time() + 90
        while url is None and time.time() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            out += line
            m = re.search(rf"http://127\.0\.0\.1:{port}/lab\?token=(\w+)", line)
            url = m and m.group(0)
        assert url, f"JupyterLab did not start:\n{out[-3000:]}"
        token = url.split("token=")[1]
        # Jupyter Server prints its URL a moment before its socket listens: retry a refused connection.
        api = f"http://127.0.0.1:{port}/api/contents/compare_runs.ipynb?token={token}"
        for _ in range(60):
            try:
                with urllib.request.urlopen(api, timeout=30) as r:
                    nb = json.loads(r.read())
                break
            except urllib.error.URLError as exc:
                if not isinstance(exc.reason, ConnectionRefusedError) or proc.poll() is not None:
                    raise
                time.sleep(0.5)
        assert nb["type"] == "notebook" and nb["content"]["cells"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
