"""Detection's export stage: ONNX with the decoding inside the graph, parity and speed on the test split.

The graph (`DetectionGraph`) takes the preprocessed images and each image's original size and
returns boxes in original-image pixels, scores and labels (the contract: visionops.detection), so
serving only decodes the image, resizes it, runs the graph and keeps the rows above a threshold.
The compact CenterNet exports with a dynamic batch (its decode is a max-pool and a top-k), through
the dynamo exporter; torchvision's detectors (NMS, data-dependent shapes) through the TorchScript
exporter (`dynamo=False`) at batch 1, padded to a fixed number of rows.

Parity on the test split, ONNX Runtime fp32 against eager PyTorch: the difference in COCO mAP
(gate: export.max_map_diff) and the share of PyTorch's boxes scoring at least
export.parity_min_score that ONNX Runtime also returns (same label, IoU >= export.match_iou;
gate: export.min_box_match). int8 (static QDQ, calibrated on train images) is served only when
its mAP is within export.int8.max_map_drop of fp32's and it is at least export.int8.min_speedup
times as fast. Writes what classification's export writes: models/export/{model.onnx,
model.int8.onnx, bundle.json, parity.json}, reports/export/{parity.json (headline), report.json}.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from train.export import decide_int8, quantize_int8
from train.tasks.detection.centernet import CenterNet
from train.tasks.detection.dataset import CocoDetectionDataset, collate, read_split
from train.tasks.detection.evaluation import Detections, coco_metrics, ground_truth
from train.tasks.detection.module import load_detector
from train.tracking import git_commit
from visionops.bundle import ModelBundle
from visionops.detection import EMBEDDING, INPUTS, OUTPUTS, OnnxDetector
from visionops.errors import VisionopsError
from visionops.manifest import data_version, read_labels
from visionops.preprocess import PreprocessSpec


class DetectionGraph(nn.Module):
    """(images (N, C, H, W), orig_size (N, 2) [height, width]) -> boxes (N, K, 4) in original
    pixels, scores (N, K), labels (N, K) int64 [, embedding (N, E): CenterNet's deepest features,
    average-pooled]. `K` = max_detections: fewer detections are padded with score 0."""

    def __init__(self, net: nn.Module, image_size: tuple[int, int], max_detections: int = 100):
        super().__init__()
        self.net = net
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.k = int(max_detections)
        self.centernet = isinstance(net, CenterNet)
        self._features: torch.Tensor | None = None

    @property
    def embedding_dim(self) -> int:
        return int(self.net.stages[-1][0][0].out_channels) if self.centernet else 0

    @contextlib.contextmanager
    def capturing(self) -> Iterator[DetectionGraph]:
        """While exporting or running eagerly: keep the backbone's last stage output (the embedding)."""
        if not self.centernet:
            yield self
            return
        handle = self.net.stages[-1].register_forward_hook(lambda _m, _i, out: setattr(self, "_features", out))
        try:
            yield self
        finally:
            handle.remove()
            self._features = None

    def _scale(self, orig_size: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        h, w = self.image_size
        s = orig_size.to(dtype)
        return torch.stack([s[:, 1] / w, s[:, 0] / h, s[:, 1] / w, s[:, 0] / h], dim=1)[:, None, :]

    def forward(self, images: torch.Tensor, orig_size: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.centernet:
            heat, reg = self.net(images)
            boxes, scores, labels = self.net.decode(heat.float(), reg.float(), self.image_size)
            assert self._features is not None, "run the graph inside `with graph.capturing():`"
            return boxes * self._scale(orig_size, boxes.dtype), scores, labels, self._features.float().mean((2, 3))
        det = self.net.predict(images)[0]  # torchvision: batch 1, NMS inside, sorted by score
        k = self.k
        boxes = torch.cat([det["boxes"], det["boxes"].new_zeros(k, 4)])[:k]
        scores = torch.cat([det["scores"], det["scores"].new_zeros(k)])[:k]
        labels = torch.cat([det["labels"].to(torch.int64), torch.zeros(k, dtype=torch.int64)])[:k]
        return boxes[None] * self._scale(orig_size, boxes.dtype), scores[None], labels[None]


def export_detector(graph: DetectionGraph, spec: PreprocessSpec, path: Path, opset: int) -> dict[str, Any]:
    """Write the graph to `path` (weights inside); returns how: exporter and batch (None: dynamic)."""
    h, w = spec.size
    outputs = [*OUTPUTS, EMBEDDING] if graph.centernet else list(OUTPUTS)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph.eval()
    with warnings.catch_warnings(), graph.capturing():
        warnings.simplefilter("ignore")
        if graph.centernet:
            batch = torch.export.Dim("batch", min=1, max=65536)
            example = (torch.randn(2, spec.channels, h, w), torch.tensor([[h, w], [2 * h, w]], dtype=torch.float32))
            torch.onnx.export(graph, example, str(path), input_names=list(INPUTS), output_names=outputs,
                              opset_version=opset, dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes={"images": {0: batch}, "orig_size": {0: batch}})
            how = {"exporter": "dynamo", "batch": None}
        else:
            # torchvision's post-processing (NMS, top-k) has data-dependent shapes the dynamo
            # exporter refuses; a dynamic batch of its two-stage detectors fails in ONNX Runtime
            # (pytorch/vision#8937): the TorchScript exporter at batch 1.
            example = (torch.randn(1, spec.channels, h, w), torch.tensor([[h, w]], dtype=torch.float32))
            torch.onnx.export(graph, example, str(path), input_names=list(INPUTS), output_names=outputs,
                              opset_version=opset, dynamo=False, verbose=False)
            how = {"exporter": "torchscript", "batch": 1}
    graph.eval()  # a failed or traced export can leave modules in train mode
    return how


def batches(coco: dict[str, Any], spec: PreprocessSpec, batch_size: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images float32 (B, C, H, W), orig_size float32 (B, 2)) through the shared preprocessing."""
    loader = DataLoader(CocoDetectionDataset(coco, spec), batch_size=batch_size, collate_fn=collate)
    for x, targets in loader:
        yield x.numpy(), np.stack([t["orig_size"].numpy() for t in targets]).astype(np.float32)


def as_detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Detections:
    return [{"boxes": torch.from_numpy(np.ascontiguousarray(b, np.float32)), "scores": torch.from_numpy(np.ascontiguousarray(s, np.float32)),
             "labels": torch.from_numpy(np.ascontiguousarray(lb, np.int64))} for b, s, lb in zip(boxes, scores, labels)]


def predict(run: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, ...]], coco: dict[str, Any],
            spec: PreprocessSpec, batch_size: int = 32) -> Detections:
    """Detections (original pixels) of `run(images, orig_size) -> (boxes, scores, labels, ...)` on every image."""
    out: Detections = []
    for x, sizes in batches(coco, spec, batch_size):
        boxes, scores, labels = run(x, sizes)[:3]
        out += as_detections(boxes, scores, labels)
    return out


def eager_runner(graph: DetectionGraph) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, ...]]:
    """The graph in eager PyTorch, one image at a time where the graph takes batch 1."""

    def run(x: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, ...]:
        step = len(x) if graph.centernet else 1
        parts = []
        with torch.inference_mode(), graph.capturing():
            for i in range(0, len(x), step):
                parts.append([t.numpy() for t in graph(torch.from_numpy(x[i : i + step]), torch.from_numpy(sizes[i : i + step]))])
        return tuple(np.concatenate([p[j] for p in parts]) for j in range(3))

    return run


def box_match(reference: Detections, other: Detections, min_score: float, iou: float) -> dict[str, float | int]:
    """The share of `reference`'s boxes scoring at least `min_score` that `other` also returns:
    a box of the same label with IoU >= `iou` (any score), or the same box to 0.01 px (a box of
    zero area, squeezed against the image's edge, has no IoU with anything, itself included)."""
    from torchvision.ops import box_iou

    compared = matched = 0
    for r, o in zip(reference, other, strict=True):
        keep = r["scores"] >= min_score
        rb, rl = r["boxes"][keep], r["labels"][keep]
        compared += len(rb)
        if len(rb) and len(o["boxes"]):
            same = rl[:, None] == o["labels"][None, :]
            equal = (rb[:, None, :] - o["boxes"][None, :, :]).abs().amax(2) <= 0.01
            matched += int((((box_iou(rb, o["boxes"]) >= iou) | equal) & same).any(1).sum())
    return {"boxes_compared": compared, "boxes_matched": matched, "box_match": matched / compared if compared else 1.0}


def throughput(run: Callable[[np.ndarray, np.ndarray], Any], x: np.ndarray, sizes: np.ndarray, batch: int,
               seconds: float = 1.0) -> float:
    """Images per second of `run` at `batch` (repeated until `seconds` have passed, at least twice)."""
    xb = np.concatenate([x] * (1 + batch // max(1, len(x))))[:batch]
    sb = np.concatenate([sizes] * (1 + batch // max(1, len(sizes))))[:batch]
    run(xb, sb)
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        run(xb, sb)
        n += 1
    return n * batch / (time.perf_counter() - t0)


def speed(run: Callable[[np.ndarray, np.ndarray], Any], x: np.ndarray, sizes: np.ndarray, lcfg: Any) -> dict[str, float]:
    """p50/p99 latency at batch 1 and images/s at each of export.latency.batches."""
    x1, s1 = x[:1], sizes[:1]
    for _ in range(int(lcfg.warmup)):
        run(x1, s1)
    times = []
    for _ in range(int(lcfg.runs)):
        t0 = time.perf_counter()
        run(x1, s1)
        times.append(time.perf_counter() - t0)
    out = {"p50_ms_batch1": float(np.percentile(times, 50) * 1000), "p99_ms_batch1": float(np.percentile(times, 99) * 1000)}
    rates = {int(b): throughput(run, x, sizes, int(b), float(lcfg.get("seconds", 1.0))) for b in lcfg.batches}
    out |= {f"images_per_s_batch{b}": r for b, r in rates.items()}
    best = max(rates, key=lambda b: rates[b])
    return {**out, "best_batch": best, "images_per_s_best": rates[best]}


def _scores(m: dict[str, Any]) -> dict[str, float]:
    return {k.split("/", 1)[1]: float(m[k] or 0.0) for k in ("test/map", "test/map_50", "test/map_75")}


def export(cfg: DictConfig) -> dict[str, Any]:
    ckpt = Path(cfg.paths.models) / "checkpoints" / "best.ckpt"
    if not ckpt.exists():
        raise VisionopsError(f"checkpoint {ckpt} not found: train first (`dvc repro train`)")
    model = load_detector(str(ckpt))
    spec = PreprocessSpec.from_dict(model.hparams["preprocess"])
    labels = list(model.hparams["labels"])
    prepared = Path(cfg.paths.prepared)
    if read_labels(prepared) != labels:
        raise VisionopsError("the checkpoint's labels differ from the prepared data: re-run prepare and train")
    ecfg = cfg.export
    k = int(getattr(model.net, "max_detections", ecfg.get("max_detections", 100)))
    graph = DetectionGraph(model.net.eval(), spec.size, k).eval()
    out = Path(cfg.paths.models) / "export"
    fp32 = out / "model.onnx"
    how = export_detector(graph, spec, fp32, int(ecfg.opset))
    task_spec = {
        "inputs": list(INPUTS), "outputs": [*OUTPUTS, *([EMBEDDING] if graph.centernet else [])],
        "box_format": "xyxy", "box_units": "pixels of orig_size", "max_detections": k,
        "score_threshold": float(cfg.task.get("score_threshold", 0.3)), **how,
    }

    test = read_split(prepared / "test.json")
    truth = ground_truth(test)
    eager = eager_runner(graph)
    onnx = OnnxDetector(fp32, task_spec)
    pt_dets = predict(eager, test, spec)
    onnx_dets = predict(onnx.run, test, spec)
    m_pt, _ = coco_metrics(pt_dets, truth, labels, "test")
    m_onnx, _ = coco_metrics(onnx_dets, truth, labels, "test")
    pt, fp = _scores(m_pt), _scores(m_onnx)
    match = box_match(pt_dets, onnx_dets, float(ecfg.parity_min_score), float(ecfg.match_iou))
    map_diff = abs(fp["map"] - pt["map"])
    parity = {
        "images": len(truth), **match, "map_diff": map_diff, "map_50_diff": abs(fp["map_50"] - pt["map_50"]),
        "min_score": float(ecfg.parity_min_score), "match_iou": float(ecfg.match_iou),
        "min_box_match": float(ecfg.min_box_match), "max_map_diff": float(ecfg.max_map_diff),
        "passed": match["box_match"] >= float(ecfg.min_box_match) and map_diff <= float(ecfg.max_map_diff),
    }

    x, sizes = next(batches(test, spec, batch_size=max(int(b) for b in ecfg.latency.batches)))
    formats: dict[str, dict[str, Any]] = {"pytorch": {**pt, **speed(eager, x, sizes, ecfg.latency)},
                                          "onnx_fp32": {**fp, **speed(onnx.run, x, sizes, ecfg.latency)}}
    int8_report: dict[str, Any] = {"enabled": bool(ecfg.int8.enabled)}
    if ecfg.int8.enabled:
        train_split = read_split(prepared / "train.json")
        train_split = {**train_split, "images": train_split["images"][: int(ecfg.int8.calibration_images)]}
        feeds = [{"images": a, "orig_size": s} for a, s in batches(train_split, spec, 16)]
        q = OnnxDetector(quantize_int8(fp32, out / "model.int8.onnx", feeds, **int8_options(fp32)), task_spec)
        q_dets = predict(q.run, test, spec)
        m_q, _ = coco_metrics(q_dets, truth, labels, "test")
        formats["onnx_int8"] = {**_scores(m_q), **speed(q.run, x, sizes, ecfg.latency)}
        agreement = box_match(onnx_dets, q_dets, float(ecfg.parity_min_score), 0.5)["box_match"]
        best = formats["onnx_fp32"]["best_batch"]
        int8_report.update(decide_int8(formats, best, ecfg.int8, agreement, metric="map",
                                       max_drop=float(ecfg.int8.max_map_drop), agreement_name="box_match_with_fp32"))
    serving = "onnx_int8" if int8_report.get("used_for_serving") else "onnx_fp32"
    report = {"parity": parity, "formats": formats, "int8": int8_report, "serving_format": serving,
              "opset": int(ecfg.opset), "threads": torch.get_num_threads(), "task": "detection", **how}

    metrics: dict[str, float] = {}
    reports_eval = Path(cfg.paths.reports) / "evaluate"
    if (reports_eval / "metrics.json").exists():
        metrics = {k2: v for k2, v in json.loads((reports_eval / "metrics.json").read_text()).items()
                   if isinstance(v, (int, float))}
    if (reports_eval / "details.json").exists():
        per_class = json.loads((reports_eval / "details.json").read_text()).get("per_class", {})
        metrics |= {f"test/ap_50/{name}": c["ap_50"] for name, c in per_class.items() if c.get("ap_50") is not None}
    bundle = ModelBundle(
        labels=labels, preprocess=spec, arch=str(model.hparams["net_cfg"]["arch"]),
        embedding_layer=EMBEDDING if graph.centernet else "", embedding_dim=graph.embedding_dim,
        data_version=data_version(prepared), git_commit=git_commit(), metrics=metrics, serving_format=serving,
        files={"onnx_fp32": "model.onnx", "onnx_int8": "model.int8.onnx" if ecfg.int8.enabled else None},
        task="detection", task_spec=task_spec,
    )
    bundle.save(out)
    reports = Path(cfg.paths.reports) / "export"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "parity.json").write_text(json.dumps(export_headline(report), indent=2) + "\n")
    (reports / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    f = formats["onnx_fp32"]
    print(
        f"Exported ONNX (opset {ecfg.opset}, {how['exporter']}, batch {how['batch'] or 'dynamic'}) to {out}/: parity "
        f"{'passed' if parity['passed'] else 'FAILED'} ({match['box_match']:.2%} of {match['boxes_compared']} boxes "
        f"matched, mAP {fp['map']:.4f} vs PyTorch {pt['map']:.4f}); {f['p50_ms_batch1']:.1f} ms at batch 1, "
        f"{f['images_per_s_best']:.0f} images/s at batch {f['best_batch']}; serving format {serving}"
        + (f"; int8 mAP change {-int8_report['map_drop']:+.4f}, {int8_report['speedup_batch']:.2f}x"
           if ecfg.int8.enabled else "")
        + f". Report: {reports}/report.json"
    )
    return report


def export_headline(report: dict[str, Any]) -> dict[str, Any]:
    """What `dvc metrics show` lists for a detector's export: the box match and mAP difference."""
    return {"parity": report["parity"]["box_match"], "map_diff": report["parity"]["map_diff"]}


def int8_options(fp32: Path) -> dict[str, Any]:
    """Quantise the network, not the decoding: the heatmap's sigmoid, the max-pool peak test and
    the top-k stay float (quantised scores tie, and equal neighbours would each count as a peak)."""
    return {"op_types_to_quantize": ["Conv", "Add", "Relu", "Resize", "GlobalAveragePool"]}
