"""Serving throughput and latency: this service vs `mlflow models serve` vs the in-process limit.

One image per request, closed-loop clients at concurrency 1, 8 and 32 (an aiohttp load generator
in its own process, on this same machine), for the default small CNN and resnet18, all in one run:
  (a) visionops: `bentoml serve serve.service:Classifier` (multipart upload, prediction log on);
  (b) `mlflow models serve` of the same registered version (JSON tensor, preprocessed by the client,
      which is what an MLflow user would run instead);
  (c) in-process: decode + preprocess + inference at the best batch size (the limit).
Also: the service's CPU time per request outside the model.

    .venv/bin/python benchmarks/serve.py [seconds=5] [models=small_cnn,resnet18] [workers=2]
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# This file is named serve.py: keep its folder off the import path so `import serve` is the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORK = ROOT / "outputs" / "bench_serve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_models(archs: list[str]) -> dict[str, str]:
    """A registered version per architecture in a benchmark store (trained once, reused)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import build_version

    store = WORK / "store"
    versions_file = store / "versions.json"
    versions = json.loads(versions_file.read_text()) if versions_file.exists() else {}
    data_root = ROOT / "data" / "raw" / "digits"
    if not data_root.exists():
        from train.raw import write_digits

        write_digits(data_root)
    for arch in archs:
        if arch not in versions:
            extra = ["model.net.width=32", "trainer.max_epochs=8"] if arch == "small_cnn" else \
                [f"model={arch}", "trainer.max_epochs=2"]
            extra += [f"registry.model_name=bench-{arch.replace('_', '-')}", "registry.gate.latency_budget_ms=1000"]
            verdict = build_version(store, store / arch, data_root, extra)
            versions[arch] = f"models:/{verdict['model']}/{verdict['challenger']['version']}"
            versions_file.write_text(json.dumps(versions))
    return versions


def load_client(url: str, kind: str, payload: bytes, concurrency: int, seconds: float, queue: mp.Queue) -> None:
    """Closed-loop clients: each sends the next request when its last one is answered."""
    import aiohttp

    async def main() -> None:
        lat: list[float] = []
        codes: dict[int, int] = {}
        stop = time.perf_counter() + seconds
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=conn) as session:
            async def worker() -> None:
                while time.perf_counter() < stop:
                    t0 = time.perf_counter()
                    if kind == "multipart":
                        form = aiohttp.FormData()
                        form.add_field("image", payload, filename="x.png", content_type="image/png")
                        resp = await session.post(url, data=form)
                    else:
                        resp = await session.post(url, data=payload, headers={"Content-Type": "application/json"})
                    await resp.read()
                    lat.append(time.perf_counter() - t0)
                    codes[resp.status] = codes.get(resp.status, 0) + 1
            t_start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - t_start
        queue.put({"lat": lat, "codes": codes, "elapsed": elapsed})

    asyncio.run(main())


def measure(url: str, kind: str, payload: bytes, concurrency: int, seconds: float, pids: list[int]) -> dict:
    import psutil

    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass

    def cpu() -> float:
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    q: mp.Queue = mp.Queue()
    warm = mp.Process(target=load_client, args=(url, kind, payload, concurrency, 1.0, q))
    warm.start(); q.get(); warm.join()
    c0 = cpu()
    p = mp.Process(target=load_client, args=(url, kind, payload, concurrency, seconds, q))
    p.start(); r = q.get(); p.join()
    server_cpu = cpu() - c0
    lat = np.asarray(r["lat"]) * 1000
    ok = r["codes"].get(200, 0)
    return {"rps": ok / r["elapsed"], "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "errors": sum(v for k, v in r["codes"].items() if k != 200), "n503": r["codes"].get(503, 0),
            "server_cpu_ms_per_req": 1000 * server_cpu / max(1, ok)}


def start(cmd: list[str], env: dict, ready: str, log: Path) -> subprocess.Popen:
    import httpx

    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, env={**os.environ, **env, "PATH": f"{BIN}:{os.environ['PATH']}"}, stdout=fh,
                            stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(300):
        try:
            if httpx.get(ready, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"{cmd[:3]} did not start; see {log}")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except Exception:
        os.killpg(proc.pid, signal.SIGKILL)


def in_process(uri: str, tracking: str, png: bytes, seconds: float) -> tuple[float, float, int]:
    """Images/s of decode + preprocess + inference at the best batch size; model ms per image there."""
    from serve.runtime import ModelRuntime
    from serve.settings import Settings

    rt = ModelRuntime.load(Settings(model_uri=uri, tracking_uri=tracking, log_dir=None))
    best = (0.0, 0.0, 1)
    for bs in (1, 8, 32, 64, 128):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            x = np.concatenate([rt.prepare(png)[0] for _ in range(bs)])
            rt.infer(x)
            n += bs
        ips = n / (time.perf_counter() - t0)
        xs = np.concatenate([rt.prepare(png)[0] for _ in range(bs)])
        t1 = time.perf_counter()
        for _ in range(5):
            rt.infer(xs)
        model_ms = (time.perf_counter() - t1) / 5 / bs * 1000
        if ips > best[0]:
            best = (ips, model_ms, bs)
    return best


def main() -> None:
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    seconds = float(args.get("seconds", 5))
    archs = args.get("models", "small_cnn,resnet18").split(",")
    workers = args.get("workers", "2")
    WORK.mkdir(parents=True, exist_ok=True)
    versions = ensure_models(archs)
    tracking = f"sqlite:///{WORK / 'store' / 'mlflow.db'}"
    png = sorted((ROOT / "data" / "raw" / "digits" / "3").glob("*.png"))[0].read_bytes()
    rows = []
    for arch in archs:
        uri = versions[arch]
        limit_ips, model_ms, best_bs = in_process(uri, tracking, png, seconds)
        from serve.runtime import ModelRuntime
        from serve.settings import Settings

        rt = ModelRuntime.load(Settings(model_uri=uri, tracking_uri=tracking, log_dir=None))
        tensor = json.dumps({"inputs": rt.prepare(png)[0].tolist()}).encode()
        port_a, port_b = free_port(), free_port()
        a = start([str(BIN / "bentoml"), "serve", "serve.service:Classifier", "--host", "127.0.0.1", "--port", str(port_a)],
                  {"MLFLOW_TRACKING_URI": tracking, "VISIONOPS_MODEL_URI": uri, "VISIONOPS_WORKERS": workers,
                   "VISIONOPS_PREDICTION_LOG": str(WORK / "log")}, f"http://127.0.0.1:{port_a}/readyz", WORK / "bentoml.log")
        res_a = {c: measure(f"http://127.0.0.1:{port_a}/classify", "multipart", png, c, seconds, [a.pid]) for c in (1, 8, 32)}
        stop(a)
        b = start([str(BIN / "mlflow"), "models", "serve", "-m", uri, "-h", "127.0.0.1", "-p", str(port_b),
                   "--env-manager", "local", "--workers", workers], {"MLFLOW_TRACKING_URI": tracking},
                  f"http://127.0.0.1:{port_b}/ping", WORK / "mlflow.log")
        res_b = {c: measure(f"http://127.0.0.1:{port_b}/invocations", "json", tensor, c, seconds, [b.pid]) for c in (1, 8, 32)}
        stop(b)
        for c in (1, 8, 32):
            ra, rb = res_a[c], res_b[c]
            rows.append((arch, c, ra, rb, limit_ips, model_ms, best_bs))
    print(f"\nServing benchmark: one image per request, {seconds:.0f} s per cell, {workers} server workers, "
          f"client on the same {os.cpu_count()}-core machine")
    print("| model | conc. | visionops req/s | p50 ms | p99 ms | 503s | mlflow serve req/s | p50 ms | p99 ms |"
          " vs mlflow | in-process img/s (batch) | vs in-process | server CPU ms/req outside model |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for arch, c, ra, rb, lim, mms, bs in rows:
        print(f"| {arch} | {c} | {ra['rps']:.0f} | {ra['p50']:.2f} | {ra['p99']:.2f} | {ra['n503']} | {rb['rps']:.0f} | "
              f"{rb['p50']:.2f} | {rb['p99']:.2f} | {ra['rps'] / max(rb['rps'], 1e-9):.2f}x | {lim:.0f} ({bs}) | "
              f"{ra['rps'] / lim:.2f}x | {max(0.0, ra['server_cpu_ms_per_req'] - mms):.2f} |")


if __name__ == "__main__":
    main()
