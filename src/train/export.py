"""The `export` stage: ONNX (fp32 and int8) with parity and speed measured on the test split.

Writes models/export/{model.onnx, model.int8.onnx, bundle.json, parity.json} and
reports/export/{parity.json (headline DVC metrics), report.json (every format's accuracy and speed)}.
Parity: maximum absolute logit difference and top-1 agreement of ONNX fp32 against eager PyTorch
on every test image (gate: export.min_top1_agreement). INT8 (static QDQ quantisation calibrated on
train images) is measured for accuracy change and speed-up, and chosen for serving only when
within export.int8.max_accuracy_drop and at least export.int8.min_speedup.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from train.metrics import load_inputs
from train.module import load_classifier
from train.tracking import git_commit
from visionops.bundle import ModelBundle
from visionops.errors import VisionopsError
from visionops.manifest import data_version, read_labels, read_manifest
from visionops.onnx_runtime import OnnxModel
from visionops.preprocess import PreprocessSpec

log = logging.getLogger(__name__)


class _LogitsAndEmbedding(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.net.forward_features(x)
        return self.net.head(emb), emb


def export_onnx(net: torch.nn.Module, spec: PreprocessSpec, path: Path, opset: int) -> Path:
    """ONNX with a dynamic batch axis, weights inside the file, a pinned opset."""
    import warnings

    wrapper = _LogitsAndEmbedding(net).eval()
    h, w = spec.size
    example = torch.randn(2, spec.channels, h, w)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (example,), str(path), input_names=["input"], output_names=["logits", "embedding"],
            opset_version=opset, dynamo=True, external_data=False, verbose=False,
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=65536)}},
        )
    return path


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calibration[i : i + 32]} for i in range(0, len(calibration), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    pre.unlink(missing_ok=True)
    return out


def latency(fn, x1: np.ndarray, xb: np.ndarray, cfg: Any) -> dict[str, float]:
    """p50/p99 latency at batch 1 and throughput at batch N of a callable on numpy input."""
    for _ in range(int(cfg.warmup)):
        fn(x1)
    times = []
    for _ in range(int(cfg.runs)):
        t0 = time.perf_counter()
        fn(x1)
        times.append(time.perf_counter() - t0)
    fn(xb)
    t0 = time.perf_counter()
    for _ in range(int(cfg.batch_runs)):
        fn(xb)
    per_batch = (time.perf_counter() - t0) / int(cfg.batch_runs)
    return {"p50_ms_batch1": float(np.percentile(times, 50) * 1000), "p99_ms_batch1": float(np.percentile(times, 99) * 1000),
            f"images_per_s_batch{len(xb)}": float(len(xb) / per_batch)}


def decide_int8(formats: dict[str, dict[str, float]], batch: int, limits: Any, agreement: float) -> dict[str, Any]:
    """Serve int8 only when it loses at most `limits.max_accuracy_drop` accuracy against fp32 and
    is at least `limits.min_speedup` times as fast at batch `batch`: the decision, its numbers (with
    int8's top-1 `agreement` with fp32) and why."""
    fp32, int8 = formats["onnx_fp32"], formats["onnx_int8"]
    key = f"images_per_s_batch{batch}"
    drop = fp32["accuracy"] - int8["accuracy"]
    speedup = int8[key] / fp32[key]
    use = drop <= float(limits.max_accuracy_drop) and speedup >= float(limits.min_speedup)
    return {
        "accuracy_drop": float(drop), "speedup_batch": float(speedup),
        "speedup_p50_batch1": fp32["p50_ms_batch1"] / int8["p50_ms_batch1"],
        "top1_agreement_with_fp32": float(agreement),
        "used_for_serving": bool(use),
        "why": ("within tolerance and faster" if use else
                f"accuracy drop {drop:.4f} (max {limits.max_accuracy_drop}) or speed-up {speedup:.2f}x "
                f"(min {limits.min_speedup}) outside the limits"),
    }


def export_headline(report: dict[str, Any]) -> dict[str, Any]:
    """What `dvc metrics show` lists for the export: ONNX fp32's top-1 agreement with eager PyTorch."""
    return {"parity": report["parity"]["top1_agreement"]}


def export(cfg: DictConfig) -> dict[str, Any]:
    ckpt = Path(cfg.paths.models) / "checkpoints" / "best.ckpt"
    if not ckpt.exists():
        raise VisionopsError(f"checkpoint {ckpt} not found: train first (`dvc repro train`)")
    model = load_classifier(str(ckpt))
    net = model.net.eval()
    spec = PreprocessSpec.from_dict(model.hparams["preprocess"])
    labels = list(model.hparams["labels"])
    prepared = Path(cfg.paths.prepared)
    if read_labels(prepared) != labels:
        raise VisionopsError("the checkpoint's labels differ from the prepared data: re-run prepare and train")
    idx = {label: i for i, label in enumerate(labels)}
    test = read_manifest(prepared / "test.csv")
    x = load_inputs(test, spec)
    y = np.asarray([idx[r.label] for r in test])
    ecfg = cfg.export
    out = Path(cfg.paths.models) / "export"
    fp32 = export_onnx(net, spec, out / "model.onnx", int(ecfg.opset))

    with torch.inference_mode():
        eager_logits = torch.cat([net(torch.from_numpy(x[i : i + 256])) for i in range(0, len(x), 256)]).numpy()
    onnx = OnnxModel(fp32)
    onnx_logits = onnx.logits(x)
    agreement = float((eager_logits.argmax(1) == onnx_logits.argmax(1)).mean())
    parity = {
        "images": len(x),
        "max_abs_logit_diff": float(np.abs(eager_logits - onnx_logits).max()),
        "top1_agreement": agreement,
        "min_top1_agreement": float(ecfg.min_top1_agreement),
        "passed": agreement >= float(ecfg.min_top1_agreement),
    }
    x1, xb = x[:1], np.concatenate([x] * (1 + int(ecfg.latency.batch) // max(1, len(x))))[: int(ecfg.latency.batch)]
    formats: dict[str, dict[str, float]] = {}

    def eager(a: np.ndarray) -> Any:
        with torch.inference_mode():
            return net(torch.from_numpy(a))

    formats["pytorch"] = {"accuracy": float((eager_logits.argmax(1) == y).mean()), **latency(eager, x1, xb, ecfg.latency)}
    formats["onnx_fp32"] = {"accuracy": float((onnx_logits.argmax(1) == y).mean()), **latency(onnx.run, x1, xb, ecfg.latency)}
    int8_report: dict[str, Any] = {"enabled": bool(ecfg.int8.enabled)}
    if ecfg.int8.enabled:
        train_records = read_manifest(prepared / "train.csv")[: int(ecfg.int8.calibration_images)]
        int8_path = quantize_int8(fp32, out / "model.int8.onnx", load_inputs(train_records, spec))
        q = OnnxModel(int8_path)
        q_logits = q.logits(x)
        formats["onnx_int8"] = {"accuracy": float((q_logits.argmax(1) == y).mean()), **latency(q.run, x1, xb, ecfg.latency)}
        int8_agreement = float((q_logits.argmax(1) == onnx_logits.argmax(1)).mean())
        int8_report.update(decide_int8(formats, len(xb), ecfg.int8, int8_agreement))
    serving = "onnx_int8" if int8_report.get("used_for_serving") else "onnx_fp32"
    report = {"parity": parity, "formats": formats, "int8": int8_report, "serving_format": serving,
              "opset": int(ecfg.opset), "threads": torch.get_num_threads()}

    eval_metrics = Path(cfg.paths.reports) / "evaluate" / "metrics.json"
    metrics = {}
    if eval_metrics.exists():
        m = json.loads(eval_metrics.read_text())
        metrics = {k: v for k, v in m.items() if isinstance(v, (int, float))}
    with torch.inference_mode():
        emb_dim = int(net.forward_features(torch.from_numpy(x1)).shape[1])
    bundle = ModelBundle(
        labels=labels, preprocess=spec, arch=str(model.hparams["net_cfg"]["arch"]), embedding_layer="embedding",
        embedding_dim=emb_dim, data_version=data_version(prepared), git_commit=git_commit(), metrics=metrics,
        serving_format=serving,
        files={"onnx_fp32": "model.onnx", "onnx_int8": "model.int8.onnx" if ecfg.int8.enabled else None},
    )
    bundle.save(out)
    reports = Path(cfg.paths.reports) / "export"
    reports.mkdir(parents=True, exist_ok=True)
    # reports/export/parity.json is a DVC metric: headline numbers only. The full report (every
    # format's accuracy and latency) is report.json beside it, and travels in the bundle.
    (reports / "parity.json").write_text(json.dumps(export_headline(report), indent=2) + "\n")
    (reports / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    status = "passed" if parity["passed"] else "FAILED"
    print(
        f"Exported ONNX (opset {ecfg.opset}) to {out}/: parity {status} (top-1 agreement {agreement:.4f}, max |dlogit| "
        f"{parity['max_abs_logit_diff']:.2e}); serving format {serving}"
        + (f"; int8 accuracy change {-int8_report['accuracy_drop']:+.4f}, {int8_report['speedup_batch']:.2f}x at batch {len(xb)}"
           if ecfg.int8.enabled else "")
        + f". Report: {reports}/report.json"
    )
    return report


def main() -> None:
    from visionops.config import run_task

    run_task(export, task_name="export")


if __name__ == "__main__":
    main()
