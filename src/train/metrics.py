"""Evaluating a classifier: metrics, calibration and the confusion-matrix plot of a split.

The evaluate stage's helpers (`train.evaluate` runs them on the test and validation splits);
export reads its parity inputs with `load_inputs`, the preprocessing serving runs.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from visionops.manifest import Record
from visionops.preprocess import PreprocessSpec, load_batch


def load_inputs(records: list[Record], spec: PreprocessSpec) -> np.ndarray:
    """The evaluation inputs, through exactly the preprocessing serving uses."""
    return load_batch([r.path for r in records], spec)


@torch.inference_mode()
def predict_proba(model: torch.nn.Module, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(inputs), batch_size):
        logits = model(torch.from_numpy(inputs[i : i + batch_size]).to(next(model.parameters()).device))
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins: sum over bins of |accuracy - confidence| * share."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += abs(correct[mask].mean() - conf[mask].mean()) * mask.mean()
    return float(ece)


def classification_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str], prefix: str) -> dict[str, Any]:
    pred = probs.argmax(axis=1)
    idx = list(range(len(labels)))
    precision, recall, _f1, support = precision_recall_fscore_support(y, pred, labels=idx, zero_division=0)
    return {
        f"{prefix}/acc": float(accuracy_score(y, pred)),
        f"{prefix}/f1_macro": float(f1_score(y, pred, labels=idx, average="macro", zero_division=0)),
        f"{prefix}/ece": expected_calibration_error(probs, y),
        f"{prefix}/n": len(y),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "support": int(s)}
            for label, p, r, s in zip(labels, precision, recall, support)
        },
    }


def plot_confusion(y: np.ndarray, pred: np.ndarray, labels: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = confusion_matrix(y, pred, labels=list(range(len(labels))))
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 10 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    if len(labels) <= 20:
        thresh = cm.max() / 2 if cm.size else 0
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > thresh else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate_model(model: torch.nn.Module, inputs: np.ndarray, y: np.ndarray, labels: list[str], split: str,
                   png: Path) -> tuple[dict[str, Any], np.ndarray]:
    """A model on one split: its metrics (`<split>/acc`, ..., per class) and confusion plot; returns
    (metrics, probabilities)."""
    probs = predict_proba(model, inputs)
    m = classification_metrics(probs, y, labels, split)
    plot_confusion(y, probs.argmax(1), labels, png, f"{'test' if split == 'test' else 'validation'} confusion "
                   f"(acc {m[f'{split}/acc']:.3f})")
    return m, probs

