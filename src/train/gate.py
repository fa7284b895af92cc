"""The champion/challenger gate: a registry version against the current champion.

Both are evaluated in their serving format on the same pinned test split (the task's metric,
registry.gate.primary_metric: classification's accuracy, detection's mAP; with a paired-bootstrap
interval of the difference over images), with the export's parity and the latency budget. The
task (the version's bundle says which, `train.tasks`) runs a version and computes its metric; the
rest is shared. A challenger whose classes differ from the champion's is not comparable:
`check_labels` refuses it before registration, with the fix in one line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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


def mean_of_resamples(per_image: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """A per-image 0/1 (or any per-image number) averaged over each resample: accuracy."""
    return per_image.astype(np.float64)[idx].mean(1)


def paired_bootstrap(new: Any, old: Any, samples: int, confidence: float, seed: int,
                     score: Callable[[Any, np.ndarray], np.ndarray] = mean_of_resamples,
                     images: int | None = None) -> dict[str, float]:
    """Confidence interval of metric(new) - metric(old), resampling the test images (paired: the
    same draws for both). `score(per_image, idx)` computes the metric on each resample (rows of
    image indices); the default, the mean, is accuracy for per-image correctness."""
    rng = np.random.default_rng(seed)
    n = len(new) if images is None else images
    diffs = np.empty(samples)
    for start in range(0, samples, 500):
        idx = rng.integers(0, n, size=(min(500, samples - start), n))
        diffs[start : start + len(idx)] = score(new, idx) - score(old, idx)
    every = np.arange(n)[None, :]
    alpha = (1 - confidence) / 2
    return {"diff": float(score(new, every)[0] - score(old, every)[0]), "ci_low": float(np.quantile(diffs, alpha)),
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
    from train.tasks import get_task

    g = cfg.registry.gate
    metric = str(g.primary_metric)
    task = get_task(challenger.bundle.task)
    prepared = Path(cfg.paths.prepared)
    cache: dict[str, Any] = {}
    new = task.gate_evaluate(challenger, prepared, metric, cache)
    checks: dict[str, dict[str, Any]] = {}
    parity = challenger.parity.get("parity", {})
    checks["parity"] = {"passed": bool(parity.get("passed", False)) or not g.require_parity,
                        **task.parity_summary(parity), "required": g.require_parity}
    fmt = challenger.bundle.serving_format
    p50 = challenger.parity.get("formats", {}).get(fmt, {}).get("p50_ms_batch1")
    checks["latency"] = {"passed": p50 is not None and p50 <= float(g.latency_budget_ms), "p50_ms_batch1": p50,
                         "budget_ms": float(g.latency_budget_ms), "format": fmt}
    verdict: dict[str, Any] = {
        "model": challenger.name, "challenger": {"version": challenger.version, metric: new.score},
        "champion": None, "primary_metric": metric, "tolerance": float(g.tolerance), "test_images": new.images,
    }
    old = None
    if champion is None:
        checks["metric"] = {"passed": True, "reason": "no champion yet: the first version becomes champion"}
    elif champion.bundle.task != challenger.bundle.task:
        verdict["champion"] = {"version": champion.version, metric: float("nan")}
        checks["comparable"] = {"passed": False, "differs": "task", "reason": (
            f"the champion (version {champion.version}) is a {champion.bundle.task} model, this one a "
            f"{challenger.bundle.task} model: register it under its own name (registry.model_name=<name>)")}
    elif list(champion.bundle.labels) != list(challenger.bundle.labels):
        # Metrics on different label sets do not compare: only a forced promotion moves champion.
        verdict["champion"] = {"version": champion.version, metric: float("nan")}
        checks["comparable"] = {"passed": False, "reason": label_change(
            challenger.name, champion.version, list(champion.bundle.labels), list(challenger.bundle.labels))}
    else:
        old = task.gate_evaluate(champion, prepared, metric, cache)
        ci = paired_bootstrap(new.per_image, old.per_image, int(g.bootstrap_samples), float(g.confidence), int(g.seed),
                              score=task.resampled, images=new.images)
        verdict["champion"] = {"version": champion.version, metric: old.score}
        checks["metric"] = {"passed": ci["ci_low"] >= -float(g.tolerance), **ci}
    if new.details:
        verdict["details"] = {"challenger": new.details, **({"champion": old.details} if old is not None else {})}
    verdict["gates"] = checks
    verdict["passed"] = all(c["passed"] for c in checks.values())
    return verdict
