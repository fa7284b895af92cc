"""Detection in the registry: a version's mAP on the pinned test split, resampled for the gate's
paired bootstrap, the registered model's signature, and its model card with AP per class.

The gate runs each version as production will (its serving-format ONNX through ONNX Runtime, the
shared preprocessing, boxes in each image's own pixels) on `<prepared>/test.json`, matches its
detections once (train.tasks.detection.ap: COCO's matching, the same numbers as faster-coco-eval),
and recomputes the metric (registry.gate.primary_metric: map_50, map or map_75) on every
bootstrap resample of the images from those matches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from train.tasks.base import GateEvaluation
from train.tasks.detection.ap import METRIC_THRESHOLDS, Matches, average_precision, match, mean_ap, resample_weights
from visionops.errors import VisionopsError
from visionops.manifest import read_labels
from visionops.model_store import LocalModel, ModelStoreError

METRIC_NAMES = {"map": "mAP@[.5:.95]", "map_50": "mAP@0.5", "map_75": "mAP@0.75"}


def _numpy(dets: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
    return [{k: np.asarray(v) for k, v in d.items()} for d in dets]


def gate_evaluate(local: LocalModel, prepared: Path, metric: str, cache: dict[str, Any]) -> GateEvaluation:
    """The version's `metric` on the pinned test split; `per_image` holds its matches at the
    metric's IoU thresholds; `details` mAP, mAP@0.5, mAP@0.75 and AP per class."""
    from train.tasks.detection.dataset import read_split
    from train.tasks.detection.evaluation import ground_truth
    from train.tasks.detection.export import batches

    if metric not in METRIC_THRESHOLDS:
        raise VisionopsError(f"registry.gate.primary_metric={metric} is not a detection metric (choose one of "
                             f"{', '.join(METRIC_THRESHOLDS)}); a detection project's commands take task=detection")
    labels = read_labels(prepared)
    if list(local.bundle.labels) != labels:
        raise VisionopsError(
            f"version {local.version} was trained on labels {local.bundle.labels}, the test split has {labels}: "
            "the versions are not comparable; promote with force=true reason=... if intended")
    test = read_split(prepared / "test.json")
    spec = local.bundle.preprocess
    key = "detection:" + json.dumps(spec.to_dict(), sort_keys=True)
    if key not in cache:
        cache[key] = (list(batches(test, spec)), _numpy(ground_truth(test)))
    inputs, truth = cache[key]
    try:
        detector = local.load()
    except ModelStoreError as exc:
        raise VisionopsError(str(exc)) from exc
    preds = []
    for x, sizes in inputs:
        boxes, scores, classes = detector.run(x, sizes)
        preds += [{"boxes": b, "scores": s, "labels": c} for b, s, c in zip(boxes, scores, classes)]
    matches = match(preds, truth, len(labels))
    ap = average_precision(matches)[0]  # (IoU thresholds, classes)
    summary = {"map": float(mean_ap(ap[None])[0]), "map_50": float(mean_ap(ap[None, :1])[0]),
               "map_75": float(mean_ap(ap[None, 5:6])[0])}
    with np.errstate(all="ignore"):
        per_class = {name: {"objects": int(matches.gt[:, k].sum()),
                            "ap": None if np.isnan(ap[:, k]).all() else float(np.nanmean(ap[:, k])),
                            "ap_50": None if np.isnan(ap[0, k]) else float(ap[0, k])}
                     for k, name in enumerate(labels)}
    return GateEvaluation(local.version, summary[metric], matches.at(METRIC_THRESHOLDS[metric]), len(truth),
                          {**summary, "per_class": per_class})


def resampled(per_image: Matches, idx: np.ndarray) -> np.ndarray:
    """mAP (at the thresholds `per_image` was matched at) on each resample of the images."""
    return mean_ap(average_precision(per_image, resample_weights(idx, per_image.images)))


def parity_summary(parity: dict[str, Any]) -> dict[str, Any]:
    return {"box_match": parity.get("box_match"), "map_diff": parity.get("map_diff")}


def pyfunc_example(cfg: DictConfig, export_dir: Path) -> tuple[dict[str, np.ndarray], list[list[dict[str, Any]]]]:
    """Two test images with their original sizes, and the detections the model returns for them."""
    from train.tasks.detection.dataset import read_split
    from train.tasks.detection.export import batches
    from visionops.bundle import ModelBundle
    from visionops.detection import OnnxDetector

    bundle = ModelBundle.load(export_dir)
    test = read_split(Path(cfg.paths.prepared) / "test.json")
    test = {**test, "images": test["images"][:2]}
    x, sizes = next(batches(test, bundle.preprocess, 2))
    detector = OnnxDetector(export_dir / "model.onnx", bundle.task_spec)
    return {"images": x, "orig_size": sizes}, detector.detect(x, sizes, bundle.labels)


def _f(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def model_card(verdict: dict[str, Any], local: LocalModel) -> str:
    from train.decision import gate_rows

    b, m, spec = local.bundle, local.bundle.metrics, local.bundle.task_spec
    metric = verdict.get("primary_metric", "map_50")
    champ = verdict.get("champion")
    details = verdict.get("details", {})
    mine = details.get("challenger", {}).get("per_class", {})
    theirs = details.get("champion", {}).get("per_class", {})
    classes = "\n".join(f"| {name} | {c['objects']} | {_f(c['ap'])} | {_f(c['ap_50'])} | "
                        f"{_f(theirs.get(name, {}).get('ap_50')) if theirs else '-'} |" for name, c in mine.items())
    outputs = ", ".join(f"`{o}`" for o in spec.get("outputs", []))
    return f"""# {local.name} version {local.version}

**Decision:** {verdict['decision']}{f" (reason: {verdict['reason']})" if verdict.get('reason') else ''}

| | |
|---|---|
| task | object detection |
| architecture | {b.arch} |
| classes | {len(b.labels)}: {', '.join(b.labels[:20])}{' ...' if len(b.labels) > 20 else ''} |
| input | `images` {b.preprocess.channels}x{b.preprocess.size[0]}x{b.preprocess.size[1]}, mean {list(b.preprocess.mean)}, std {list(b.preprocess.std)}; `orig_size` [height, width] of each image |
| outputs | {outputs}: up to {spec.get('max_detections')} boxes per image, [x1, y1, x2, y2] in the image's own pixels; detections score at least {spec.get('score_threshold')} (default) |
| batch | {spec.get('batch') or 'any size'} ({spec.get('exporter')} exporter) |
| embedding for monitoring | {f"`{b.embedding_layer}`, {b.embedding_dim} dims" if b.embedding_dim else 'none'} |
| data version | {b.data_version} |
| git commit | {b.git_commit} |
| test mAP@[.5:.95] / mAP@0.5 / mAP@0.75 (evaluate stage) | {_f(m.get('test/map'))} / {_f(m.get('test/map_50'))} / {_f(m.get('test/map_75'))} |
| serving format | {b.serving_format} |
| gate {METRIC_NAMES.get(metric, metric)} (challenger vs champion) | {_f(verdict['challenger'].get(metric))} vs {f"{_f(champ.get(metric))} (v{champ['version']})" if champ else 'none'} |

## AP per class (pinned test split, serving format)

| class | objects | AP@[.5:.95] | AP@0.5 | champion AP@0.5 |
|---|---|---|---|---|
{classes}

## Gates

| gate | result | details |
|---|---|---|
{gate_rows(verdict)}

Intended use: finding objects of these classes in images like those of data version {b.data_version}.
Classes with few test objects have wide uncertainty; production images are watched for drift by the
monitor job.
"""
