"""The `evaluate` stage: what the best model does on data it was not trained on.

    test split        metrics, calibration and confusion matrix: the stage's headline numbers
    validation split  calibration (`val/ece`) and confusion matrix of the best checkpoint: what
                      training's own per-epoch validation numbers leave out

Writes reports/evaluate/{metrics.json (the headline DVC metrics), details.json (per class),
confusion.csv, confusion.png, predictions.csv} for the test split and {validation.json,
confusion_val.png} for the validation split, and logs them to the training run in MLflow.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from train.metrics import evaluate_model, load_inputs
from train.module import ImageClassifier, load_classifier
from visionops.errors import VisionopsError
from visionops.manifest import Record, read_labels, read_manifest
from visionops.preprocess import PreprocessSpec

HEADLINE = ("test/acc", "test/f1_macro", "test/ece")
VALIDATION_FILE = "validation.json"
VALIDATION_PLOT = "confusion_val.png"


def headline(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in HEADLINE}


def evaluate_split(model: ImageClassifier, prepared: Path, split: str, labels: list[str],
                   png: Path) -> tuple[dict[str, Any], np.ndarray, list[Record], np.ndarray]:
    """The model on one split of the prepared manifests, through the preprocessing serving runs:
    (metrics, probabilities, records, true class indices); the confusion plot goes to `png`."""
    spec = PreprocessSpec.from_dict(model.hparams["preprocess"])
    records = read_manifest(prepared / f"{split}.csv")
    idx = {label: i for i, label in enumerate(labels)}
    y = np.asarray([idx[r.label] for r in records])
    m, probs = evaluate_model(model, load_inputs(records, spec), y, labels, split, png)
    return m, probs, records, y


def evaluate(cfg: DictConfig, checkpoint: str | None = None) -> dict[str, Any]:
    import mlflow

    reports_train = Path(cfg.paths.reports) / "train"
    run_info: dict[str, Any] = {}
    if (reports_train / "run.json").exists():
        run_info = json.loads((reports_train / "run.json").read_text())
    ckpt = checkpoint or run_info.get("best_checkpoint") or str(Path(cfg.paths.models) / "checkpoints" / "best.ckpt")
    if not Path(ckpt).exists():
        raise VisionopsError(f"checkpoint {ckpt} not found: train first (`dvc repro train` or `python -m train`)")

    model = load_classifier(ckpt)
    prepared = Path(cfg.paths.prepared)
    labels = read_labels(prepared)
    if labels != list(model.hparams["labels"]):
        raise VisionopsError(
            f"the checkpoint was trained on labels {model.hparams['labels']} but {prepared} has {labels}: "
            "re-run prepare and train together"
        )
    out = Path(cfg.paths.reports) / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    png = out / "confusion.png"
    m, probs, records, y = evaluate_split(model, prepared, "test", labels, png)
    pred = probs.argmax(1)
    # metrics.json is a DVC metric: the headline numbers only; the per-class table (one column
    # per class and measure in `dvc metrics show`) goes to details.json beside it.
    (out / "metrics.json").write_text(json.dumps(headline(m), indent=2) + "\n")
    (out / "details.json").write_text(json.dumps(m, indent=2) + "\n")
    with open(out / "confusion.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["actual", "predicted"])
        for a, p in zip(y, pred):
            w.writerow([labels[a], labels[p]])
    with open(out / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "predicted", "confidence"])
        for r, p, pr in zip(records, pred, probs):
            w.writerow([r.path, r.label, labels[p], f"{pr.max():.6f}"])

    val_png = out / VALIDATION_PLOT
    val, *_ = evaluate_split(model, prepared, "val", labels, val_png)
    (out / VALIDATION_FILE).write_text(json.dumps(val, indent=2) + "\n")

    run_id = run_info.get("run_id")
    if run_id:
        from visionops.project import tracking_uri

        mlflow.set_tracking_uri(run_info.get("tracking_uri") or tracking_uri(cfg.logger.tracking_uri))
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics({k: v for k, v in m.items() if k != "per_class"})
            # Validation: calibration only. val/acc, val/loss and val/f1_macro are training's
            # per-epoch curves (step = epoch); another point would land on them at step 0.
            mlflow.log_metric("val/ece", val["val/ece"])
            mlflow.log_artifact(str(png), "plots")
            mlflow.log_artifact(str(val_png), "plots")
            mlflow.log_dict(m, "evaluate/metrics.json")
    print(
        f"Test accuracy {m['test/acc']:.4f}, macro F1 {m['test/f1_macro']:.4f}, ECE {m['test/ece']:.4f} "
        f"on {m['test/n']} images (validation ECE {val['val/ece']:.4f}). Results saved to {out}/"
        + (f" and MLflow run {run_id}" if run_id else "")
    )
    return m


def main() -> None:
    from visionops.config import run_task

    run_task(evaluate, task_name="evaluate")


if __name__ == "__main__":
    main()
