"""Start a server process on 127.0.0.1, wait until it is ready, stop it: the demo loop, the
serving benchmark and the integration tests all run `bentoml serve` (or `mlflow models serve`)
this one way."""

from __future__ import annotations

import os
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
          timeout: float = 90.0) -> subprocess.Popen:
    """Run `cmd` in its own process group (its output to `log`) and return once `ready_url`
    answers 200. RuntimeError with the log's tail if it exits, fails to start up or times out."""
    import httpx

    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{BIN}{os.pathsep}{full_env.get('PATH', '')}"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=full_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or "Application startup failed" in Path(log).read_text(errors="replace"):
            break
        time.sleep(0.3)
    stop(proc)
    raise RuntimeError(f"{Path(cmd[0]).name} {' '.join(cmd[1:3])} did not become ready at {ready_url}; "
                       f"its log ({log}) ends:\n{Path(log).read_text(errors='replace')[-3000:]}")


def bentoml_serve(target: str, port: int, log: Path, env: dict[str, str] | None = None,
                  timeout: float = 90.0) -> subprocess.Popen:
    """`bentoml serve <target>` (a service import path or a bento tag) on 127.0.0.1:<port>."""
    return start([str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)],
                 f"http://127.0.0.1:{port}/readyz", log, env, timeout)


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM to the whole process group (server and workers), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
