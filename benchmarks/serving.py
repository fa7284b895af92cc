"""Serving throughput and latency: this service vs `mlflow models serve` vs the in-process limit.

One image per request, closed-loop clients at concurrency 1, 8 and 32 (wrk, a C load generator,
one thread, on this same machine), for the default small CNN and resnet18, all in one run:
  (a) visionops: `bentoml serve serve.service:Classifier` (multipart upload, prediction log on);
  (b) `mlflow models serve` of the same registered version (JSON tensor, preprocessed by the client,
      which is what an MLflow user would run instead);
  (c) in-process: decode + preprocess + inference at the best batch size (the limit).
Also: the service's CPU time per request outside the model.

    .venv/bin/python benchmarks/serving.py [seconds=5] [repeats=3] [models=small_cnn,resnet18] [workers=2]

Needs wrk (apt-get install wrk).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "outputs" / "bench_serve"
USAGE = "usage: benchmarks/serving.py [seconds=5] [repeats=3] [models=small_cnn,resnet18] [workers=2]"
DEFAULTS = {"seconds": "5", "repeats": "3", "models": "small_cnn,resnet18", "workers": "2"}


def ensure_models(archs: list[str]) -> dict[str, str]:
    """A registered version per architecture in a benchmark store (trained once, reused)."""
    from train.build import build_version

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


WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local codes = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do codes[k] = (codes[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(codes) do table.insert(parts, string.format('"%d": %d', k, v)) end
  io.write(string.format('WRK {"p50_us": %d, "p99_us": %d, "duration_us": %d, "errors": %d, "codes": {%s}}\\n',
    latency:percentile(50), latency:percentile(99), summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    table.concat(parts, ", ")))
end
"""


def request_body(kind: str, payload: bytes) -> tuple[bytes, str]:
    if kind == "json":
        return payload, "application/json"
    boundary = "visionopsbench"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def wrk(url: str, kind: str, payload: bytes, concurrency: int, seconds: float) -> dict:
    """Closed-loop load from wrk (C, one thread): each connection sends its next request when the
    last is answered. Returns req/s (200s only), p50/p99 ms and the status counts."""
    body, ctype = request_body(kind, payload)
    (WORK / "body.bin").write_bytes(body)
    script = WORK / "wrk.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{ctype}"\n'
                      f'local f = io.open("{WORK / "body.bin"}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
                      + WRK_SCRIPT)
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out[out.index("WRK ") + 4 :].splitlines()[0])
    codes = {int(k): v for k, v in r["codes"].items()}
    return {"rps": codes.get(200, 0) / (r["duration_us"] / 1e6), "p50": r["p50_us"] / 1000, "p99": r["p99_us"] / 1000,
            "codes": codes, "socket_errors": r["errors"], "ok": codes.get(200, 0)}


def measure(url: str, kind: str, payload: bytes, concurrency: int, seconds: float, pids: list[int],
            repeats: int) -> dict:
    """The median of `repeats` runs (each opens fresh connections, which the server's workers
    share out unevenly from run to run), with the server's CPU time per answered request."""
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

    wrk(url, kind, payload, concurrency, 1)  # warm-up
    runs = []
    for _ in range(repeats):
        c0 = cpu()
        r = wrk(url, kind, payload, concurrency, seconds)
        r["server_cpu_ms_per_req"] = 1000 * (cpu() - c0) / max(1, r["ok"])
        runs.append(r)
    runs.sort(key=lambda r: r["rps"])
    best = dict(runs[len(runs) // 2])
    best["n503"] = sum(r["codes"].get(503, 0) for r in runs)
    best["errors"] = sum(sum(v for k, v in r["codes"].items() if k != 200) + r["socket_errors"] for r in runs)
    best["spread"] = (runs[0]["rps"], runs[-1]["rps"])
    return best


def in_process(uri: str, tracking: str, png: bytes, seconds: float) -> tuple[float, float, int]:
    """Images/s of decode + preprocess + inference in one process at the best batch size (the
    limit), and the model's ms per image there: the shared package's decoder and preprocessing and
    the ONNX file the server runs, ONNX Runtime on all cores; no HTTP, no statistics, no log."""
    from serve.runtime import ModelRuntime
    from serve.settings import Settings
    from visionops.preprocess import load_batch

    rt = ModelRuntime.load(Settings(model_uri=uri, tracking_uri=tracking, log_dir=None))
    best = (0.0, 0.0, 1)
    for bs in (1, 8, 32, 64, 128):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            rt.infer(load_batch([png] * bs, rt.spec))
            n += bs
        ips = n / (time.perf_counter() - t0)
        xs = load_batch([png] * bs, rt.spec)
        t1 = time.perf_counter()
        for _ in range(5):
            rt.infer(xs)
        model_ms = (time.perf_counter() - t1) / 5 / bs * 1000
        if ips > best[0]:
            best = (ips, model_ms, bs)
    return best


def main(argv: list[str] | None = None) -> None:
    from serve import launch
    from visionops.cli import parse_key_values

    try:
        args = parse_key_values(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
        seconds, repeats = float(args["seconds"]), int(args["repeats"])
        archs, workers = str(args["models"]).split(","), str(int(args["workers"]))
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    if shutil.which("wrk") is None:
        sys.exit("benchmarks/serving.py needs the wrk load generator: apt-get install wrk (or brew install wrk)")
    WORK.mkdir(parents=True, exist_ok=True)
    versions = ensure_models(archs)
    tracking = f"sqlite:///{WORK / 'store' / 'mlflow.db'}"
    png = min((ROOT / "data" / "raw" / "digits" / "3").glob("*.png")).read_bytes()
    rows = []
    for arch in archs:
        uri = versions[arch]
        limit_ips, model_ms, best_bs = in_process(uri, tracking, png, seconds)
        from serve.runtime import ModelRuntime
        from serve.settings import Settings

        rt = ModelRuntime.load(Settings(model_uri=uri, tracking_uri=tracking, log_dir=None))
        tensor = json.dumps({"inputs": rt.prepare(png).x.tolist()}).encode()
        port_a, port_b = launch.free_port(), launch.free_port()
        a = launch.bentoml_serve("serve.service:Classifier", port_a, WORK / "bentoml.log",
                                 {"MLFLOW_TRACKING_URI": tracking, "VISIONOPS_MODEL_URI": uri, "VISIONOPS_WORKERS": workers,
                                  "VISIONOPS_PREDICTION_LOG": str(WORK / "log")})
        res_a = {c: measure(f"http://127.0.0.1:{port_a}/classify", "multipart", png, c, seconds, [a.pid], repeats)
                 for c in (1, 8, 32)}
        launch.stop(a)
        b = launch.start([str(launch.BIN / "mlflow"), "models", "serve", "-m", uri, "-h", "127.0.0.1", "-p", str(port_b),
                          "--env-manager", "local", "--workers", workers], f"http://127.0.0.1:{port_b}/ping",
                         WORK / "mlflow.log", {"MLFLOW_TRACKING_URI": tracking})
        res_b = {c: measure(f"http://127.0.0.1:{port_b}/invocations", "json", tensor, c, seconds, [b.pid], repeats)
                 for c in (1, 8, 32)}
        launch.stop(b)
        for c in (1, 8, 32):
            rows.append((arch, c, res_a[c], res_b[c], limit_ips, model_ms, best_bs))
    print(f"\nServing benchmark: one image per request, wrk (1 thread) on the same {os.cpu_count()}-core machine, "
          f"{workers} server workers; median of {repeats} runs of {seconds:.0f} s per cell (the range in brackets)")
    print("| model | conc. | visionops req/s | p50 / p99 ms | 503s | mlflow serve req/s | p50 / p99 ms |"
          " vs mlflow | in-process img/s (batch) | vs in-process | server CPU ms/req outside model |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for arch, c, ra, rb, lim, mms, bs in rows:
        print(f"| {arch} | {c} | {ra['rps']:.0f} ({ra['spread'][0]:.0f}–{ra['spread'][1]:.0f}) | {ra['p50']:.2f} / {ra['p99']:.2f} "
              f"| {ra['n503']} | {rb['rps']:.0f} ({rb['spread'][0]:.0f}–{rb['spread'][1]:.0f}) | {rb['p50']:.2f} / {rb['p99']:.2f} "
              f"| {ra['rps'] / max(rb['rps'], 1e-9):.2f}x | {lim:.0f} ({bs}) | {ra['rps'] / lim:.2f}x "
              f"| {max(0.0, ra['server_cpu_ms_per_req'] - mms):.2f} |")
    bad = [(arch, c, ra["errors"]) for arch, c, ra, *_ in rows if ra["errors"]]
    if bad:
        print("non-200 answers or socket errors from visionops:", bad)


if __name__ == "__main__":
    main()
