"""The whole loop in one command (the end of `make demo`): serve the champion, send a clean and
then a corrupted window of traffic, run the drift job on each, and say what happened.

    python -m monitor.demo [corruption=gaussian_noise] [severity=4] [n=200] [port=0]

Traffic is drawn from the test split (images the model never trained on, like production);
the corrupted window is the same kind of images through `monitor.corruptions`.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from visionops.manifest import read_manifest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _serve(port: int, log_dir: Path, out: Path) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "VISIONOPS_PREDICTION_LOG": str(log_dir), "VISIONOPS_KEEP_IMAGES": "0.25",
           "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}")}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "bentoml"), "serve", "serve.service:Classifier",
                             "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=open(out, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    _stop(proc)
    raise SystemExit(f"error: the service did not start; see {out}")


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    from monitor.__main__ import run_job
    from monitor.simulate import main as simulate

    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    corruption, severity, n = args.get("corruption", "gaussian_noise"), args.get("severity", "4"), args.get("n", "200")
    cfg = OmegaConf.load("params.yaml")
    port = int(args.get("port", 0)) or _free_port()
    run_dir = Path("logs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    log_dir = run_dir / "predictions"
    traffic = Path(tempfile.mkdtemp(prefix="visionops-traffic-"))
    for i, r in enumerate(read_manifest(Path(cfg.paths.prepared) / "test.csv")):
        dst = traffic / r.label / f"{i:05d}{Path(r.path).suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(r.path, dst)
    print(f"\n== the loop: serving the champion on http://127.0.0.1:{port}, production log in {log_dir}/ ==")
    run_dir.mkdir(parents=True, exist_ok=True)
    proc = _serve(port, log_dir, run_dir / "server.log")
    results = {}
    try:
        for name, corr in (("clean", "none"), (f"{corruption} severity {severity}", corruption)):
            since = math.floor(time.time())
            time.sleep(1.0)
            code = simulate([f"url=http://127.0.0.1:{port}", f"input={traffic}", f"n={n}", "rate=0", f"corruption={corr}",
                             f"severity={severity}", "seed=0"])
            if code != 0:
                raise SystemExit("error: the traffic simulator failed")
            time.sleep(1.0)
            until = math.ceil(time.time())
            job = OmegaConf.merge(cfg, OmegaConf.create({"monitor": {
                "log_dir": str(log_dir), "since": _stamp(since), "until": _stamp(until), "last": None}}))
            print(f"\n-- drift job on the {name} window --")
            results[name] = run_job(job)
    finally:
        _stop(proc)
        shutil.rmtree(traffic, ignore_errors=True)
    clean, bad = list(results.values())
    print("\n== monitoring verdicts ==")
    print(f"clean window:     {clean['verdict']}" + ("  (as it should be: no alarm)" if not clean.get("drift_detected") else "  (a false alarm)"))
    print(f"corrupted window: {bad['verdict']}" + ("  (the corruption was caught)" if bad.get("drift_detected") else "  (missed)"))
    emails = sorted(Path(cfg.monitor.email.outbox).glob(f"{bad['window']['name']}*.eml"))
    if emails:
        print(f"drift email: {emails[-1]} (no SMTP server configured: set monitor.email.smtp_host to send it)")


if __name__ == "__main__":
    main()
