"""Start a server process on 127.0.0.1, wait until it is ready, stop it: the demo loop, the
serving benchmark and the integration tests all run `bentoml serve` (or `mlflow models serve`)
this one way."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent  # bentoml, mlflow and uvicorn of this environment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None,
          timeout: float = 90.0, confirm: int = 1) -> subprocess.Popen:
    """Run `cmd` in its own process group (its output to `log`) and return once `ready_url`
    answers 200 on `confirm` fresh connections in a row (a server whose workers each listen on
    their own socket is ready when every worker is, and a new connection may reach any of them).
    RuntimeError if it exits, fails to start up or times out: with the server's own `error: ...`
    line when it printed one (see serve.startup), else with the log's tail."""
    import httpx

    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{BIN}{os.pathsep}{full_env.get('PATH', '')}"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=full_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    answered = 0
    while time.monotonic() < deadline:
        try:
            answered = answered + 1 if httpx.get(ready_url, timeout=2).status_code == 200 else 0
        except httpx.HTTPError:
            answered = 0
        if answered >= confirm:
            return proc
        if proc.poll() is not None or "Application startup failed" in Path(log).read_text(errors="replace"):
            break
        if not answered:
            time.sleep(0.3)
    stop(proc)
    text = Path(log).read_text(errors="replace")
    what = f"{Path(cmd[0]).name} {' '.join(cmd[1:3])}"
    if line := error_line(text):
        raise RuntimeError(f"{what} did not start: {line} (its log: {log})")
    raise RuntimeError(f"{what} did not become ready at {ready_url}; its log ({log}) ends:\n{text[-3000:]}")


def error_line(text: str) -> str | None:
    """The first `error: ...` line a server printed (serve.startup), without the prefix."""
    m = re.search(r"^error: (.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else None


def bentoml_serve(target: str, port: int, log: Path, env: dict[str, str] | None = None,
                  timeout: float = 90.0) -> subprocess.Popen:
    """`bentoml serve <target>` (a service import path or a bento tag) on 127.0.0.1:<port>,
    returned once all its workers answer (8 fresh connections in a row, see `start`)."""
    return start([str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)],
                 f"http://127.0.0.1:{port}/readyz", log, env, timeout, confirm=8)


def stop(proc: subprocess.Popen, timeout: float = 20.0, grace: float = 5.0) -> None:
    """Stop a server started by `start` and every process under it.

    SIGTERM to its process group; BentoML's arbiter then stops its workers and exits, SIGKILL if
    it has not within `timeout`. BentoML starts each worker in a session of its own, so a worker
    still busy (a request in flight, a stalled upload) would outlive a group kill: the server's
    descendants are collected before any signal, and once the arbiter is gone (nothing can start
    a worker again) those still running get SIGTERM, and SIGKILL after `grace` seconds."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            family += psutil.Process(proc.pid).children(recursive=True)  # started since
        except psutil.NoSuchProcess:
            pass
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
    left = [p for p in family if p.is_running()]
    for p in left:
        _signal(p, signal.SIGTERM)
    _gone, left = psutil.wait_procs(left, timeout=grace)
    for p in left:
        _signal(p, signal.SIGKILL)
    psutil.wait_procs(left, timeout=grace)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _signal(p, sig: int) -> None:  # p: psutil.Process
    import psutil

    try:
        p.send_signal(sig)
    except psutil.NoSuchProcess:
        pass
