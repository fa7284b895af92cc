"""The serving runtime's CPU cost per request outside the model: prepare (decode, statistics,
preprocess) and finish (predictions, the production-log record, the log write), in-process.

What the service spends on each request besides HTTP and the model call; a small CNN (width 8,
untrained: the steps' cost does not depend on the weights) on the bundled 8x8 digit PNGs, the
prediction log on, no image kept. CPU time (process_time) per request, best and median of
`repeats` runs of `requests` requests each: a busy machine stretches wall time, not CPU time.

    .venv/bin/python benchmarks/runtime_steps.py [requests=2000] [repeats=9]
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
USAGE = "usage: benchmarks/runtime_steps.py [requests=2000] [repeats=9]"


def toy_model(d: Path) -> Path:
    """A packaged model directory (what a bento carries) with a small CNN of 10 classes."""
    from train.export import export_onnx
    from train.models import build_model
    from visionops.bundle import ModelBundle
    from visionops.preprocess import PreprocessSpec

    spec = PreprocessSpec()
    export_onnx(build_model("small_cnn", 10, width=8).eval(), spec, d / "artifacts" / "model.onnx", 18)
    ModelBundle(labels=[str(i) for i in range(10)], preprocess=spec, arch="small_cnn", embedding_dim=32,
                files={"onnx_fp32": "model.onnx", "onnx_int8": None}).save(d / "artifacts")
    (d / "VERSION").write_text("1")
    (d / "NAME").write_text("bench")
    return d


def per_request(fn, requests: int, repeats: int) -> tuple[float, float]:
    """(best, median) CPU microseconds per call of fn(i)."""
    for i in range(min(300, requests)):
        fn(i)
    runs = []
    for _ in range(repeats):
        gc.collect()
        t = time.process_time()
        for i in range(requests):
            fn(i)
        runs.append((time.process_time() - t) / requests * 1e6)
    return min(runs), statistics.median(runs)


def main(argv: list[str] | None = None) -> None:
    from visionops.cli import parse_key_values

    try:
        args = parse_key_values(sys.argv[1:] if argv is None else argv, {"requests": "2000", "repeats": "9"}, USAGE)
        requests, repeats = int(str(args["requests"])), int(str(args["repeats"]))
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    from serve.runtime import ModelRuntime
    from serve.settings import Settings
    from train.raw import write_digits

    with tempfile.TemporaryDirectory(prefix="visionops-bench-") as tmp:
        work = Path(tmp)
        write_digits(work / "digits")
        pngs = [p.read_bytes() for p in sorted((work / "digits").rglob("*.png"))[:200]]
        rt = ModelRuntime.load(Settings(log_dir=str(work / "log"), keep_images=0.0, threads=1),
                               model_dir=toy_model(work / "model"))
        logits, emb = rt.infer(rt.prepare(pngs[0]).x)
        ready = [rt.prepare(png, f"r{i}", ".png") for i, png in enumerate(pngs)]
        steps = {
            "prepare + finish": lambda i: rt.finish([rt.prepare(pngs[i % 200], f"r{i}", ".png")], logits, emb),
            "prepare": lambda i: rt.prepare(pngs[i % 200], f"r{i}", ".png"),
            "finish": lambda i: rt.finish([ready[i % 200]], logits, emb),
        }
        print(f"| step | CPU µs per request, best | median ({repeats} runs of {requests}) |\n|---|---|---|")
        for name, fn in steps.items():
            best, median = per_request(fn, requests, repeats)
            print(f"| {name} | {best:.0f} | {median:.0f} |")


if __name__ == "__main__":
    main()
