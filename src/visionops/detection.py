"""Run an exported detector with ONNX Runtime and read its outputs: no torch, no Lightning.

The graph's contract (also in the bundle's `task_spec`, see visionops.bundle):

    inputs   images     float32 (N, C, H, W): the shared preprocessing's output (visionops.preprocess)
             orig_size  float32 (N, 2): each image's [height, width] in pixels as decoded, before the
                        resize to (H, W); boxes come back in these pixels. Pass (H, W) for boxes in
                        input pixels.
    outputs  boxes      float32 (N, K, 4) [x1, y1, x2, y2], inside [0, width] x [0, height]
             scores     float32 (N, K), each image's best first; padding rows score 0
             labels     int64 (N, K), indices into the bundle's `labels`
             embedding  float32 (N, E) pooled deepest features, for drift monitoring (when E > 0)

K is fixed (`max_detections`). A row is a detection when its score reaches a threshold (the
bundle's `score_threshold` unless the caller chooses one). Graphs whose `batch` is 1 (torchvision's
detectors) are run one image at a time by `OnnxDetector`, so callers never see the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visionops.onnx_runtime import OnnxModel

INPUTS = ("images", "orig_size")
OUTPUTS = ("boxes", "scores", "labels")
EMBEDDING = "embedding"
Detection = dict[str, Any]  # {"box": [x1, y1, x2, y2], "score": float, "label": str}


class OnnxDetector:
    """An exported detector: `run` gives the raw (boxes, scores, labels) arrays, `detect` the
    per-image lists of detections."""

    def __init__(self, path: str | Path, task_spec: dict[str, Any] | None = None, threads: int | None = None,
                 providers: list[str] | None = None):
        self.model = OnnxModel(path, threads=threads, providers=providers)
        self.spec = dict(task_spec or {})
        self.session = self.model.session
        self.path = self.model.path
        names = {o.name for o in self.session.get_outputs()}
        missing = [n for n in OUTPUTS if n not in names]
        if missing or [i.name for i in self.session.get_inputs()] != list(INPUTS):
            raise ValueError(f"{path} is not a visionops detector: it needs inputs {list(INPUTS)} and outputs "
                             f"{list(OUTPUTS)}, it has {[i.name for i in self.session.get_inputs()]} and {sorted(names)}")
        self.has_embedding = EMBEDDING in names
        shape = self.session.get_inputs()[0].shape
        self.batch = shape[0] if isinstance(shape[0], int) else None  # None: any batch size
        self.input_size = (int(shape[2]), int(shape[3]))

    def _run(self, x: np.ndarray, sizes: np.ndarray, outputs: Sequence[str]) -> list[np.ndarray]:
        feeds = {"images": np.ascontiguousarray(x, np.float32), "orig_size": np.ascontiguousarray(sizes, np.float32)}
        return self.session.run(list(outputs), feeds)

    def run(self, images: np.ndarray, orig_size: np.ndarray | None = None, batch_size: int = 64,
            outputs: Sequence[str] = OUTPUTS) -> list[np.ndarray]:
        """The graph's `outputs` for any number of images (run `batch_size`, or the graph's fixed
        batch, at a time); `orig_size` None: boxes in input pixels."""
        n = len(images)
        if orig_size is None:
            orig_size = np.tile(np.asarray(self.input_size, np.float32), (n, 1))
        orig_size = np.asarray(orig_size, np.float32).reshape(n, 2)
        step = self.batch or max(1, batch_size)
        parts = [self._run(images[i : i + step], orig_size[i : i + step], outputs) for i in range(0, n, step)]
        if not parts:
            return [np.zeros((0,), np.float32) for _ in outputs]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(outputs))]

    def embed(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """The pooled features the monitor watches (float32 (N, E))."""
        if not self.has_embedding:
            raise ValueError(f"{self.path} exports no {EMBEDDING!r} output")
        return self.run(images, batch_size=batch_size, outputs=(EMBEDDING,))[0]

    def detect(self, images: np.ndarray, orig_size: np.ndarray | None, labels: Sequence[str],
               score_threshold: float | None = None) -> list[list[Detection]]:
        """Per image, its detections scoring at least `score_threshold` (the bundle's default if None)."""
        threshold = float(self.spec.get("score_threshold", 0.3) if score_threshold is None else score_threshold)
        boxes, scores, classes = self.run(images, orig_size)
        return to_detections(boxes, scores, classes, labels, threshold)


def to_detections(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, labels: Sequence[str],
                  score_threshold: float) -> list[list[Detection]]:
    """(N, K, 4), (N, K), (N, K) arrays -> per image a list of {box, score, label}, best first."""
    out = []
    for b, s, c in zip(boxes, scores, classes):
        keep = np.flatnonzero(s >= score_threshold)
        keep = keep[np.argsort(-s[keep], kind="stable")]
        out.append([{"box": [round(float(v), 2) for v in b[k]], "score": float(s[k]), "label": str(labels[int(c[k])])}
                    for k in keep])
    return out


def orig_sizes(images: Sequence[Any]) -> np.ndarray:
    """float32 (N, 2) [height, width] of decoded PIL images: the graph's `orig_size` input."""
    return np.asarray([[im.size[1], im.size[0]] for im in images], np.float32).reshape(-1, 2)
