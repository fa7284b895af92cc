"""The `evaluate` stage: what the best model does on data it was not trained on.

    test split        the task's metrics: the stage's headline numbers
    validation split  the best checkpoint's numbers that training's per-epoch validation leaves
                      out (classification: calibration `val/ece` and the confusion matrix)

Shared by every task: finds the best checkpoint, checks it was trained on the prepared classes,
writes reports/evaluate/{metrics.json (the headline DVC metrics), details.json (everything, per
class), validation.json} and logs them, with the task's plots, to the training run in MLflow.
What is measured, and the task's own files, come from the task (`train.tasks`): classification
writes confusion.csv, confusion.png, predictions.csv and confusion_val.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from train.tasks import task_of
from visionops.errors import VisionopsError

VALIDATION_FILE = "validation.json"


def evaluate(cfg: DictConfig, checkpoint: str | None = None) -> dict[str, Any]:
    import mlflow

    reports_train = Path(cfg.paths.reports) / "train"
    run_info: dict[str, Any] = {}
    if (reports_train / "run.json").exists():
        run_info = json.loads((reports_train / "run.json").read_text())
    ckpt = checkpoint or run_info.get("best_checkpoint") or str(Path(cfg.paths.models) / "checkpoints" / "best.ckpt")
    if not Path(ckpt).exists():
        raise VisionopsError(f"checkpoint {ckpt} not found: train first (`dvc repro train` or `python -m train`)")

    task = task_of(cfg)
    model = task.load(ckpt)
    prepared = Path(cfg.paths.prepared)
    labels = task.labels(prepared)
    if labels != list(model.hparams["labels"]):
        raise VisionopsError(
            f"the checkpoint was trained on labels {model.hparams['labels']} but {prepared} has {labels}: "
            "re-run prepare and train together"
        )
    out = Path(cfg.paths.reports) / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    ev = task.evaluate(cfg, model, out)
    m = ev.metrics
    # metrics.json is a DVC metric: the headline numbers only; the per-class table (one column
    # per class and measure in `dvc metrics show`) goes to details.json beside it.
    (out / "metrics.json").write_text(json.dumps(ev.headline, indent=2) + "\n")
    (out / "details.json").write_text(json.dumps(m, indent=2) + "\n")
    (out / VALIDATION_FILE).write_text(json.dumps(ev.validation, indent=2) + "\n")

    run_id = run_info.get("run_id")
    if run_id:
        from visionops.project import tracking_uri

        mlflow.set_tracking_uri(run_info.get("tracking_uri") or tracking_uri(cfg.logger.tracking_uri))
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics({k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
            if ev.mlflow_extra:
                mlflow.log_metrics(ev.mlflow_extra)
            for path, folder in ev.artifacts:
                mlflow.log_artifact(str(path), folder)
            mlflow.log_dict(m, "evaluate/metrics.json")
    print(f"{ev.summary}. Results saved to {out}/" + (f" and MLflow run {run_id}" if run_id else ""))
    return m


def main() -> None:
    from visionops.config import run_task

    run_task(evaluate, task_name="evaluate")


if __name__ == "__main__":
    main()
