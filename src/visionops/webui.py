"""Start a web UI (MLflow's or Evidently's) in the foreground and say when its page answers.

    python -m visionops.webui mlflow [port=5000] [store=<the project's mlflow.db>]
    python -m visionops.webui evidently [port=8000] [workspace=monitoring/workspace]

Both servers print "running on http://..." well before the page answers (MLflow 3.17 with its
defaults: ~25 s later on a quiet 2-core machine), so this waits until the page answers and then
prints one line, `<name> ready at <url>`. MLflow runs with one worker and without its job runner
(it only runs GenAI evaluation jobs): on the shared 2-core machine here its page answered after
15-17 s instead of 64-81 s. The MLflow link opens the "Model training" view, where the runs and
the Model registry are (MLflow 3 opens in its GenAI view otherwise; the choice is the browser's,
the `workflowType` query parameter overrides it). Ctrl-C stops the server and all it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from visionops.cli import parse_key_values

USAGE = ("usage: python -m visionops.webui mlflow [port=5000] [store=<the project's mlflow.db>]\n"
         "       python -m visionops.webui evidently [port=8000] [workspace=monitoring/workspace]")
DEFAULTS = {"mlflow": {"port": "5000", "store": None, "host": "127.0.0.1"},  # store: the project's
            "evidently": {"port": "8000", "workspace": "monitoring/workspace", "host": "127.0.0.1"}}
# MLflow 3 keeps the GenAI / model-training choice per browser; this query parameter overrides it.
MLFLOW_PAGE = "#/experiments?workflowType=machine_learning"
BIN = Path(sys.executable).parent


def command(ui: str, opts: dict[str, str]) -> tuple[list[str], dict[str, str], str, str]:
    """(argv, extra environment, the URL to wait for, the URL to open) of a UI."""
    base = f"http://{opts['host']}:{opts['port']}"
    if ui == "mlflow":
        argv = [str(BIN / "mlflow"), "ui", "--backend-store-uri", opts["store"], "--host", opts["host"],
                "--port", opts["port"], "--workers", "1"]
        return argv, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, f"{base}/", f"{base}/{MLFLOW_PAGE}"
    argv = [str(BIN / "evidently"), "ui", "--workspace", opts["workspace"], "--host", opts["host"],
            "--port", opts["port"]]
    return argv, {}, f"{base}/api/version", f"{base}/"


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def evidently_projects(base: str) -> list[str]:
    """'name: dashboard URL' of each project of a running Evidently UI (best effort)."""
    import json

    try:
        with urllib.request.urlopen(f"{base}/api/projects", timeout=5) as r:
            return [f"{p['name']}: {base}/projects/{p['id']}" for p in json.load(r)]
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        return []


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its workers too), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run(ui: str, opts: dict[str, str]) -> int:
    name = {"mlflow": "MLflow UI", "evidently": "Evidently UI"}[ui]
    argv, env, ready_url, open_url = command(ui, opts)
    if not port_free(opts["host"], int(opts["port"])):
        print(f"error: port {opts['port']} is in use (another UI still running?); pick another: "
              f"{'MLFLOW_PORT' if ui == 'mlflow' else 'EVIDENTLY_PORT'}=<port> make {ui}-ui", file=sys.stderr)
        return 2
    if ui == "evidently" and not Path(opts["workspace"]).exists():
        print(f"note: no workspace at {opts['workspace']} yet: the drift job creates it (make monitor, make demo)")
    wait = {"mlflow": "~15 s", "evidently": "a few seconds"}[ui]
    print(f"Starting the {name} on port {opts['port']}; waiting for its page ({wait})...", flush=True)
    # Its own process group: Ctrl-C here stops the server and every process it started.
    proc = subprocess.Popen(argv, env={**os.environ, **env}, start_new_session=True)
    signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: the `finally` below stops the server
    started = time.monotonic()
    try:
        while not answers(ready_url):
            if proc.poll() is not None:
                print(f"error: the {name} exited with code {proc.returncode} before its page answered "
                      "(its messages are above)", file=sys.stderr)
                return 2
            time.sleep(0.5)
        print(f"{name} ready at {open_url} ({time.monotonic() - started:.0f} s; Ctrl-C stops it)", flush=True)
        if ui == "evidently":
            for line in evidently_projects(open_url.rstrip("/")):
                print(f"  project {line}", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in DEFAULTS:
        print(f"error: say which UI: mlflow or evidently\n{USAGE}", file=sys.stderr)
        return 2
    try:
        opts = parse_key_values(argv[1:], DEFAULTS[argv[0]], USAGE)
        int(str(opts["port"]))
        if argv[0] == "mlflow" and not opts["store"]:
            from visionops.project import find_root, local_store

            opts["store"] = local_store(find_root())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run(argv[0], {k: str(v) for k, v in opts.items()})


if __name__ == "__main__":
    sys.exit(main())
