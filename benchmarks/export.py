"""Export formats side by side: eager PyTorch, ONNX fp32, ONNX int8 on the same test split.

For each format: test accuracy, p50 latency at batch 1, throughput at batch 32, and ratios
against eager PyTorch, all measured in this process. Uses the pipeline's trained checkpoint
(models/checkpoints/best.ckpt; run `make demo` first) or trains nothing itself.

    .venv/bin/python benchmarks/export.py [model=small_cnn]   # model=resnet18 trains one quickly first
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from train.export import export
from visionops.cli import parse_key_values
from visionops.config import compose

USAGE = "usage: benchmarks/export.py [model=small_cnn]"


def main(argv: list[str] | None = None) -> None:
    try:
        args = parse_key_values(sys.argv[1:] if argv is None else argv, {"model": "small_cnn"}, USAGE)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    model = str(args["model"])
    overrides = ["export.latency.runs=500", "export.latency.batch_runs=100"]
    if model != "small_cnn":
        from train.fit import train

        work = Path("outputs/bench_export") / model
        overrides += [f"model={model}", f"paths.models={work}", f"paths.reports={work / 'reports'}", "trainer=cpu",
                      "trainer.max_epochs=3", "trainer.enable_progress_bar=false", "logger.log_system_metrics=false",
                      "logger.experiment_name=benchmarks"]
        train(compose(overrides))
    else:
        # the pipeline's checkpoint, exported into a scratch folder (models/export stays as DVC wrote it)
        import shutil

        if not Path("models/checkpoints/best.ckpt").exists():
            sys.exit("no trained model: run `make demo` first")
        work = Path("outputs/bench_export") / model
        shutil.copytree("models/checkpoints", work / "checkpoints", dirs_exist_ok=True)
        overrides += [f"paths.models={work}", f"paths.reports={work / 'reports'}"]
    report = export(compose(overrides))
    f = report["formats"]
    base = f["pytorch"]
    print(f"\nExport formats: {model}, {report['parity']['images']} test images, {report['threads']} threads")
    print(f"| {'format':<12} | {'test acc':>8} | {'p50 ms (b=1)':>12} | {'img/s (b=32)':>12} | {'latency vs torch':>16} | {'throughput vs torch':>19} |")
    print(f"|{'-' * 14}|{'-' * 10}|{'-' * 14}|{'-' * 14}|{'-' * 18}|{'-' * 21}|")
    for name in ("pytorch", "onnx_fp32", "onnx_int8"):
        m = f[name]
        print(f"| {name:<12} | {m['accuracy']:>8.4f} | {m['p50_ms_batch1']:>12.3f} | {m['images_per_s_batch32']:>12.0f} | "
              f"{base['p50_ms_batch1'] / m['p50_ms_batch1']:>15.2f}x | {m['images_per_s_batch32'] / base['images_per_s_batch32']:>18.2f}x |")
    print(f"parity: top-1 agreement {report['parity']['top1_agreement']:.4f}, max |dlogit| "
          f"{report['parity']['max_abs_logit_diff']:.2e}; serving format: {report['serving_format']} "
          f"({report['int8'].get('why', '')})")


if __name__ == "__main__":
    main()
