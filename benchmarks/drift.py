"""Drift monitor: detection power and false-alarm rate over many windows, and the job's cost.

(a) Clean windows (test-split images, which the champion never trained on: distinct images when
the window fits in the 270-image pool, resampled with replacement for bigger windows) and corrupted ones (every `monitor.corruptions` type at severities 1-5) of 200 and
1000 records, scored with the monitor's own `Scorer` + `verdict` against thresholds calibrated
for each window size with the monitor's own `calibrate_table`. (b) Wall time and peak RSS of the
real job (`monitor.job.run_job`, one subprocess each) on production logs of 1k, 10k, 100k records.

    .venv/bin/python benchmarks/drift.py [windows=50] [clean=1000] [sizes=200,1000] [seed=0] [quick=false] [pool=holdout|test]

pool=holdout (the default) trains a benchmark-only champion on a smaller split so that ~990 digits stay unseen,
enough for 1000-record clean windows of (nearly) distinct images.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)  # conf/, data/ and mlflow.db are found from the repository root
WORK = ROOT / "outputs" / "bench_drift"
SINCE = datetime(2026, 1, 1, tzinfo=UTC)
UNTIL = SINCE + timedelta(hours=1)
SEVERITIES = (1, 2, 3, 4, 5)
VARIANTS = 4  # seeded variants per (image, corruption, severity); identical ones are featurised once
TARGET_FA, TARGET_DET, TARGET_SIZE, TARGET_SEV = 0.05, 0.95, 1000, 3
SHORT = {"image_stats": "stats", "embedding": "emb", "predicted_class": "class", "confidence": "conf"}
USAGE = ("usage: benchmarks/drift.py [windows=50] [clean=1000] [sizes=200,1000] [seed=0] [quick=false] "
         "[pool=holdout|test]")
DEFAULTS = {"windows": None, "clean": None, "sizes": "200,1000", "seed": "0", "quick": "false", "pool": "holdout"}
JOB_DEFAULTS = {"_job": None, "max_records": None, "html": "0", "pool": "test", "seed": "0"}

import numpy as np

from visionops.config import compose as _compose

# Extra config for every compose() of this benchmark: empty = the repository's champion and
# reference; `pool=holdout` points everything at a benchmark-only store (see holdout_store()).
OVERRIDES: list[str] = []


def compose(extra: list[str] | None = None):
    return _compose([*OVERRIDES, *(extra or [])])


def holdout_store(seed: int) -> list[str]:
    """A champion trained on a smaller split so that ~990 digits stay unseen (test = 55%): enough
    distinct, never-trained-on images for 1000-record clean windows without resampling a small pool."""
    from monitor.reference import build_reference
    from train.build import build_version

    store = WORK / "holdout"
    extra = ["data.split.test=0.55", "data.split.val=0.15", f"data.split.seed={seed}", "model.net.width=32",
             "trainer.max_epochs=20", "registry.model_name=bench-holdout", "registry.gate.latency_budget_ms=1000"]
    over = [f"paths.prepared={store / 'prepared'}", f"logger.tracking_uri=sqlite:///{store / 'mlflow.db'}",
            "registry.model_name=bench-holdout", f"monitor.reference_dir={store / 'reference'}",
            "data.split.test=0.55", "data.split.val=0.15", f"data.split.seed={seed}"]
    if not (store / "reference" / "calibration.json").exists():
        data_root = ROOT / "data" / "raw" / "digits"
        if not data_root.exists():
            from train.raw import write_digits

            write_digits(data_root)
        with redirect_stdout(sys.stderr):
            build_version(store, store / "v1", data_root, extra)
            build_reference(_compose(over))
    return over


def job_cfg(log_dir: Path, max_records: int, html: bool):
    return compose([f"monitor.log_dir={log_dir}", f"monitor.since={SINCE:%Y-%m-%dT%H:%M:%SZ}",
                    f"monitor.until={UNTIL:%Y-%m-%dT%H:%M:%SZ}", f"monitor.max_records={max_records}",
                    f"monitor.html_report={str(html).lower()}", "monitor.email.on=never", "monitor.workspace=null",
                    f"monitor.reports_dir={WORK / 'reports'}", f"monitor.keep_drifted_to={WORK / 'incoming'}"])


def pool(seed: int):
    """Every distinct (test image, corruption, severity, variant) through the serving runtime, once.
    Returns (Features of all rows, {(corruption, severity): per-image lists of row indices}, clean records)."""
    import pandas as pd

    from monitor.corruptions import CORRUPTIONS, corrupt_bytes
    from monitor.drift import features
    from monitor.reference import load_runtime
    from visionops.manifest import read_manifest

    cfg = compose()
    rt = load_runtime(cfg)
    images = [Path(r.path).read_bytes() for r in read_manifest(Path(cfg.paths.prepared) / "test.csv")]
    uploads, groups = [], {}
    for c in CORRUPTIONS:
        for s in ((0,) if c == "none" else SEVERITIES):
            per_image = []
            for i, data in enumerate(images):
                seen: dict[bytes, int] = {}
                for v in range(1 if c == "none" else VARIANTS):
                    png = data if c == "none" else corrupt_bytes(data, c, s, seed=[seed, i, s, v, CORRUPTIONS.index(c)])
                    if png not in seen:
                        seen[png] = len(uploads)
                        uploads.append(png)
                per_image.append(list(seen.values()))
            groups[(c, s)] = per_image
    _, records = rt.run(uploads, [f"bench-{k}" for k in range(len(uploads))], batch_size=256)
    feats = features(pd.DataFrame(records), rt.bundle.labels)
    clean = [records[r[0]] for r in groups[("none", 0)]]
    return feats, groups, clean, len(images)


def window(groups, key, n_img: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A window of `size` uploads: distinct images, as real traffic is, while the pool has enough;
    resampled (with replacement) only for windows larger than the pool of unseen images."""
    per_image = groups[key]
    images = rng.permutation(n_img)[:size] if size <= n_img else rng.integers(0, n_img, size)
    return np.asarray([per_image[i][rng.integers(len(per_image[i]))] for i in images])


def detection(feats, groups, n_img: int, sizes: list[int], windows: int, clean_windows: int, seed: int):
    from monitor.drift import SIGNALS, Scorer, features, verdict
    from monitor.reference import calibrate_table, load_reference

    cfg = compose()
    table, stored = load_reference(cfg)
    labels = list(stored["labels"])
    out = {}
    for size in sizes:
        m = cfg.monitor.copy()
        m.window_size = size
        cal = calibrate_table(table, labels, m)  # exactly what `python -m monitor.reference` would write
        scorer = Scorer(features(table, labels), len(labels), gamma=float(cal["gamma"]))
        rng = np.random.default_rng([seed, size])
        res = {"calibration": cal}
        for key in groups:
            n = clean_windows if key[0] == "none" else windows
            hits, fired = 0, dict.fromkeys(SIGNALS, 0)
            for _ in range(n):
                v = verdict(scorer.score(feats.take(window(groups, key, n_img, size, rng))), cal)
                hits += v["drift_detected"]
                for s in SIGNALS:
                    fired[s] += v["signals"][s]["drifted"]
            res[key] = (hits / n, {s: k / n for s, k in fired.items()}, n)
        out[size] = res
    return out


def signals(fired: dict[str, float]) -> str:
    return " · ".join(f"{SHORT[s]} {v:.0%}".replace("%", "") for s, v in fired.items())


def detection_tables(res) -> str:
    lines = []
    for size, r in res.items():
        cal = r["calibration"]
        lines += [(f"\n### Windows of {size} records (thresholds calibrated for {size}: {cal['scheme']} splits of the "
                   f"{cal['reference_records']}-image reference; reference-vs-reference false alarms "
                   f"{cal['check_false_alarm_rate']:.1%})\n"),
                  ("| corruption | " + " | ".join(f"sev {s}" for s in SEVERITIES) + " | signals firing at sev 1 (%) "
                   "| signals firing at sev 3 (%) |"), "|---|" + "---|" * (len(SEVERITIES) + 2)]
        fa, fired, n = r[("none", 0)]
        mark = "✓" if fa <= TARGET_FA else "✗"
        lines.append(f"| **clean: false alarms** ({n} windows, target ≤{TARGET_FA:.0%}) | {fa:.1%} {mark} |"
                     + " |" * (len(SEVERITIES) - 1) + f" {signals(fired)} | |")
        for c in dict.fromkeys(k[0] for k in r if k != "calibration" and k[0] != "none"):
            cells = []
            for s in SEVERITIES:
                rate = r[(c, s)][0]
                target = size == TARGET_SIZE and s >= TARGET_SEV
                cells.append(f"{rate:.0%}" + ((" ✓" if rate >= TARGET_DET else " ✗") if target else ""))
            lines.append(f"| {c} | " + " | ".join(cells) + f" | {signals(r[(c, 1)][1])} | {signals(r[(c, 3)][1])} |")
    return "\n".join(lines)


def write_log(directory: Path, n: int, clean: list[dict], seed: int) -> None:
    from visionops.prediction_log import PredictionLog

    shutil.rmtree(directory, ignore_errors=True)
    log, rng, step = PredictionLog(directory), np.random.default_rng(seed), 3600.0 / n
    pick = rng.integers(0, len(clean), n)
    for start in range(0, n, 10_000):
        log.write({**clean[pick[j]], "request_id": f"bench-{j:07d}",
                   "timestamp": (SINCE + timedelta(seconds=j * step)).isoformat(timespec="microseconds")}
                  for j in range(start, min(n, start + 10_000)))
    log.close()
    for f in directory.glob("predictions-*.jsonl"):  # the records are of SINCE's day: so is their file's name
        f.rename(f.with_name(f"predictions-{SINCE:%Y%m%d}-" + f.name.split("-", 2)[2]))


def child(n: int, max_records: int, html: bool) -> None:
    """One job run in this (fresh) process: prints a JSON line with its time and peak RSS."""
    import pandas  # noqa: F401  - imported before the baseline, as the job's CLI would have it

    from monitor.job import run_job

    def status(key: str) -> int:  # kB, from /proc/self/status
        return int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith(key)))

    cfg = job_cfg(WORK / f"log_{n}", max_records, html)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM: the peak below is the job's, not the imports'
    base = status("VmRSS:")
    t0 = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        result = run_job(cfg)
    print(json.dumps({"s": time.perf_counter() - t0, "rss": status("VmHWM:"), "base": base,
                      "used": result["records"]["used"], "verdict": result["verdict"]}))


def run_child(n: int, max_records: int, html: bool, seed: int) -> dict:
    p = subprocess.run([sys.executable, __file__, f"_job={n}", f"max_records={max_records}", f"html={int(html)}",
                        f"pool={'holdout' if OVERRIDES else 'test'}", f"seed={seed}"],
                       check=False, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"job on {n} records failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def cost_table(clean: list[dict], seed: int) -> str:
    cap = int(compose().monitor.max_records)
    rows, done = [], {}
    for n in (1_000, 10_000, 100_000):
        t0 = time.perf_counter()
        write_log(WORK / f"log_{n}", n, clean, seed)
        mb = sum(f.stat().st_size for f in (WORK / f"log_{n}").glob("*.jsonl")) / 2**20
        print(f"  wrote {n} records ({mb:.0f} MiB) in {time.perf_counter() - t0:.1f} s", flush=True)
        runs = [("capped", cap, False)] + ([("capped + HTML report", cap, True)] if n == 1_000 else [])
        skip = ""
        if n > cap:
            est = done[max(done)] * (n / max(done)) ** 2 if done else 0.0
            gib = 3 * 8 * n * n / 2**30  # rbf(window, window): an n x n float64 kernel and its temporaries
            if est > 60 or gib > 8:
                skip = f"| {n:,} | uncapped | skipped: ~{est:.0f} s, ~{gib:,.0f} GiB for the n×n kernel (quadratic) | | |"
            else:
                runs.append(("uncapped", n, False))
        for label, mr, html in runs:
            r = run_child(n, mr, html, seed)
            if label == "uncapped" or (n <= cap and not html):
                done[n] = r["s"]  # the uncapped cost at n: extrapolated quadratically to the next n
            rows.append(f"| {n:,} | {label} ({r['used']:,} tested) | {r['s']:.2f} | {r['rss'] / 1024:.0f} | "
                        f"{(r['rss'] - r['base']) / 1024:.0f} |")
            print(f"  {n} {label}: {r['s']:.2f} s, {r['verdict']}", flush=True)
        rows += [skip] if skip else []
    return "\n".join([(f"\nmonitor.max_records={cap}: bigger windows are sampled down to {cap} records before "
                       "scoring (capped runs); uncapped runs test every record.\n"),
                      "| records in window | run | job wall time (s) | peak RSS during the job (MiB) | peak above RSS at start (MiB) |",
                      "|---|---|---|---|---|", *rows])


def main(argv: list[str] | None = None) -> None:
    from visionops.cli import parse_key_values

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_job="):  # one job in a fresh process, started by run_child
        job = parse_key_values(argv, JOB_DEFAULTS, USAGE)
        if job["pool"] == "holdout":
            OVERRIDES[:] = holdout_store(int(job["seed"]))
        return child(int(job["_job"]), int(job["max_records"]), job["html"] == "1")
    try:
        args = parse_key_values(argv, DEFAULTS, USAGE)
        quick = str(args["quick"]).lower() in ("1", "true", "yes")
        windows = int(args["windows"] or (10 if quick else 50))
        clean_windows = int(args["clean"] or (200 if quick else 1000))  # the false-alarm rate needs many
        sizes = [int(s) for s in str(args["sizes"]).split(",")]
        seed = int(args["seed"])
        if args["pool"] not in ("holdout", "test"):
            raise ValueError(f"pool= takes holdout or test, got {args['pool']!r}\n{USAGE}")
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    WORK.mkdir(parents=True, exist_ok=True)
    if args["pool"] == "holdout":
        OVERRIDES[:] = holdout_store(seed)
    t0 = time.perf_counter()
    feats, groups, clean, n_img = pool(seed)
    print(f"Featurised {len(feats)} distinct uploads ({n_img} test images x corruptions x severities x <= {VARIANTS} "
          f"variants) through ModelRuntime in {time.perf_counter() - t0:.0f} s", flush=True)
    t1 = time.perf_counter()
    res = detection(feats, groups, n_img, sizes, windows, clean_windows, seed)
    print(f"Scored {sum(v[2] for r in res.values() for k, v in r.items() if k != 'calibration')} windows in "
          f"{time.perf_counter() - t1:.0f} s", flush=True)
    print("\n## Detection rate (share of windows with verdict 'drift detected')")
    print(f"Targets: ≤{TARGET_FA:.0%} false alarms on clean windows; ≥{TARGET_DET:.0%} detection at severity "
          f"≥{TARGET_SEV} with {TARGET_SIZE}-record windows (✓/✗). {windows} windows per corruption and severity. "
          "Signals: stats = image statistics, emb = embeddings, class = predicted class, conf = confidence.")
    print(detection_tables(res))
    grow = ", ".join(f"x{np.sqrt((2 / n_img + 1 / n) / (1 / n_img + 1 / n)):.2f} at n={n}" for n in sizes)
    print(f"\nNote: clean windows resample only the {n_img} test images, so each carries the test split's own sampling "
          "deviation on top of its own; calibration models windows drawn from the whole population. Expected "
          f"inflation of the scaled KS scores: sqrt((2/{n_img} + 1/n) / (1/{n_img} + 1/n)) = {grow}. The false-alarm "
          "rates above overstate what fresh production traffic would give.")
    print("\n## Job cost (`run_job`, one fresh subprocess each; peak RSS = VmHWM, reset after the imports)")
    print(cost_table(clean, seed))
    print(f"\nTotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
