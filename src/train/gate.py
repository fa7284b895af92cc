"""The champion/challenger gate: a registry version against the current champion.

Both are evaluated in their serving format on the same pinned test manifest (accuracy, with a
paired-bootstrap interval of the difference), with the export's parity and the latency budget.
A challenger whose classes differ from the champion's is not comparable: `check_labels` refuses it
before registration, with the fix in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from visionops.errors import VisionopsError
from visionops.manifest import read_labels, read_manifest
from visionops.model_store import LocalModel, ModelStoreError
from visionops.preprocess import PreprocessSpec, load_batch


@dataclass
class Evaluation:
    version: str
    correct: np.ndarray
    accuracy: float


def evaluate_version(local: LocalModel, prepared: Path, inputs: dict[str, np.ndarray] | None = None) -> Evaluation:
    """Accuracy of a version's serving format on the pinned test manifest, per image. `inputs`
    keeps the decoded test set per preprocessing spec, so versions that share one decode it once."""
    labels = read_labels(prepared)
    if list(local.bundle.labels) != labels:
        raise VisionopsError(
            f"version {local.version} was trained on labels {local.bundle.labels}, the test manifest has {labels}: "
            "the versions are not comparable; promote with force=true reason=... if intended"
        )
    idx = {label: i for i, label in enumerate(labels)}
    records = read_manifest(prepared / "test.csv")
    spec: PreprocessSpec = local.bundle.preprocess
    key = json.dumps(spec.to_dict(), sort_keys=True)
    cache = inputs if inputs is not None else {}
    if key not in cache:
        cache[key] = load_batch([r.path for r in records], spec)
    x = cache[key]
    try:
        probs = local.load().predict_proba(x)
    except ModelStoreError as exc:
        raise VisionopsError(str(exc)) from exc
    correct = probs.argmax(1) == np.asarray([idx[r.label] for r in records])
    return Evaluation(local.version, correct, float(correct.mean()))


def paired_bootstrap(new: np.ndarray, old: np.ndarray, samples: int, confidence: float, seed: int) -> dict[str, float]:
    """Confidence interval of accuracy(new) - accuracy(old), resampling images (paired)."""
    rng = np.random.default_rng(seed)
    n = len(new)
    diffs = np.empty(samples)
    a, b = new.astype(np.float64), old.astype(np.float64)
    for start in range(0, samples, 500):
        idx = rng.integers(0, n, size=(min(500, samples - start), n))
        diffs[start : start + len(idx)] = a[idx].mean(1) - b[idx].mean(1)
    alpha = (1 - confidence) / 2
    return {"diff": float(a.mean() - b.mean()), "ci_low": float(np.quantile(diffs, alpha)),
            "ci_high": float(np.quantile(diffs, 1 - alpha)), "confidence": confidence, "samples": samples}


def _few(labels: list[str], n: int = 8) -> str:
    return ", ".join(labels[:n]) + (f" and {len(labels) - n} more" if len(labels) > n else "")


def label_change(name: str, champion_version: str, old: list[str], new: list[str]) -> str:
    """One line: how a model's classes differ from the champion's, and what to do about it."""
    added = [label for label in new if label not in old]
    removed = [label for label in old if label not in new]
    diff = "; ".join(part for part in (
        f"{len(added)} new ({_few(added)})" if added else "",
        f"{len(removed)} missing ({_few(removed)})" if removed else "",
        "the same classes in another order" if not added and not removed else "") if part)
    return (f"this model's {len(new)} classes differ from those of the champion of {name} (version "
            f"{champion_version}, {len(old)} classes): {diff}. Another dataset is another model: register it under "
            f"its own name with data.name=<name> (registered as visionops-<name>) or registry.model_name=<name>, "
            f"e.g. `dvc exp run -S data.name=flowers ...`. The same project with a changed label set: "
            f"registry.allow_label_change=true registers it as challenger, then `python -m train.promote "
            f"version=<N> force=true reason=\"...\"` makes it champion.")


def check_labels(cfg: DictConfig, champion: LocalModel | None, labels: list[str]) -> None:
    """Refuse, before a version is created, a model whose classes differ from the champion's."""
    if champion is None or list(champion.bundle.labels) == list(labels) or cfg.registry.get("allow_label_change"):
        return
    raise VisionopsError(label_change(champion.name, champion.version, list(champion.bundle.labels), list(labels)))


def gate(cfg: DictConfig, challenger: LocalModel, champion: LocalModel | None) -> dict[str, Any]:
    """Every gate's verdict for a challenger against the current champion (None: first version)."""
    g = cfg.registry.gate
    prepared = Path(cfg.paths.prepared)
    inputs: dict[str, np.ndarray] = {}
    new = evaluate_version(challenger, prepared, inputs)
    checks: dict[str, dict[str, Any]] = {}
    parity = challenger.parity.get("parity", {})
    checks["parity"] = {"passed": bool(parity.get("passed", False)) or not g.require_parity,
                        "top1_agreement": parity.get("top1_agreement"), "required": g.require_parity}
    fmt = challenger.bundle.serving_format
    p50 = challenger.parity.get("formats", {}).get(fmt, {}).get("p50_ms_batch1")
    checks["latency"] = {"passed": p50 is not None and p50 <= float(g.latency_budget_ms), "p50_ms_batch1": p50,
                         "budget_ms": float(g.latency_budget_ms), "format": fmt}
    verdict: dict[str, Any] = {
        "model": challenger.name, "challenger": {"version": challenger.version, "accuracy": new.accuracy},
        "champion": None, "primary_metric": g.primary_metric, "tolerance": float(g.tolerance), "test_images": len(new.correct),
    }
    if champion is None:
        checks["metric"] = {"passed": True, "reason": "no champion yet: the first version becomes champion"}
    elif list(champion.bundle.labels) != list(challenger.bundle.labels):
        # Accuracies on different label sets do not compare: only a forced promotion moves champion.
        verdict["champion"] = {"version": champion.version, "accuracy": float("nan")}
        checks["comparable"] = {"passed": False, "reason": label_change(
            challenger.name, champion.version, list(champion.bundle.labels), list(challenger.bundle.labels))}
    else:
        old = evaluate_version(champion, prepared, inputs)
        ci = paired_bootstrap(new.correct, old.correct, int(g.bootstrap_samples), float(g.confidence), int(g.seed))
        verdict["champion"] = {"version": champion.version, "accuracy": old.accuracy}
        checks["metric"] = {"passed": ci["ci_low"] >= -float(g.tolerance), **ci}
    verdict["gates"] = checks
    verdict["passed"] = all(c["passed"] for c in checks.values())
    return verdict
