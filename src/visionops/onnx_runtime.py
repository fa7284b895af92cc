"""Run an exported visionops model with ONNX Runtime: no torch, no Lightning.

The exported graph takes `input` (float32 NCHW, the shared preprocessing's output) and returns
`logits` and `embedding`. Serving, the registry gate and the MLflow pyfunc flavour all run
models through this one class.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def available_providers(prefer_gpu: bool = True) -> list[str]:
    """CUDA first where onnxruntime-gpu and a GPU are present, the CPU always."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    order = (["CUDAExecutionProvider"] if prefer_gpu else []) + ["CPUExecutionProvider"]
    return [p for p in order if p in have]


class OnnxModel:
    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"ONNX model {path} not found")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or default_threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers or available_providers())
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ValueError(f"{path} is not a loadable ONNX model ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0][:200]})") from exc
        self.path = path
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 NCHW -> (logits, embedding)."""
        logits, embedding = self.session.run(["logits", "embedding"], {self.input_name: np.ascontiguousarray(x, np.float32)})
        return logits, embedding

    def logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits of any number of inputs, run `batch_size` at a time."""
        out = [self.run(x[i : i + batch_size])[0] for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def predict_proba(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return softmax(self.logits(x, batch_size))


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[dict[str, object]]:
    """The k most probable labels of one probability vector, best first (ties: lower index first)."""
    return [{"label": labels[int(i)], "score": float(probs[i])} for i in np.argsort(-probs, kind="stable")[:k]]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
