"""The whole loop in one command (the end of `make demo`): serve the champion, send a clean and
then a corrupted window of traffic, run the drift job on each, and say what happened.

    python -m monitor.demo [corruption=gaussian_noise] [severity=4] [n=200] [port=0]

Traffic is drawn from the test split (images the model never trained on, like production);
the corrupted window is the same kind of images through `monitor.corruptions`.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import OmegaConf

from serve import launch
from visionops.cli import parse_key_values
from visionops.manifest import read_manifest

DEFAULTS = {"corruption": "gaussian_noise", "severity": "4", "n": "200", "port": "0"}
USAGE = "usage: python -m monitor.demo [corruption=gaussian_noise] [severity=4] [n=200] [port=0]"


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main() -> None:
    from monitor.job import run_job
    from monitor.reference import model_uri, tracking_uri
    from monitor.simulate import main as simulate

    try:
        args = parse_key_values(sys.argv[1:], DEFAULTS, USAGE)
        port = int(str(args["port"])) or launch.free_port()
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    corruption, severity, n = args["corruption"], args["severity"], args["n"]
    cfg = OmegaConf.load("params.yaml")
    run_dir = Path("logs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    log_dir = run_dir / "predictions"
    traffic = Path(tempfile.mkdtemp(prefix="visionops-traffic-"))
    for i, r in enumerate(read_manifest(Path(cfg.paths.prepared) / "test.csv")):
        dst = traffic / r.label / f"{i:05d}{Path(r.path).suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(r.path, dst)
    print(f"\n== the loop: serving the champion on http://127.0.0.1:{port}, production log in {log_dir}/ ==")
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {"VISIONOPS_PREDICTION_LOG": str(log_dir), "VISIONOPS_KEEP_IMAGES": "0.25",
           "VISIONOPS_MODEL_URI": model_uri(cfg), "MLFLOW_TRACKING_URI": tracking_uri(cfg)}
    try:
        proc = launch.bentoml_serve("serve.service:Classifier", port, run_dir / "server.log", env)
    except RuntimeError as exc:
        raise SystemExit(f"error: the service did not start: {exc}") from None
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
        launch.stop(proc)
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
