"""`python -m train`: train an image classifier with PyTorch Lightning, tracked in MLflow.

Composes conf/ with Hydra (`python -m train experiment=digits_resnet18 trainer.max_epochs=5`),
trains on the prepared split (running the prepare step first if needed), keeps the best and last
checkpoints, and ends with one line saying where the model, the metrics and the MLflow run are.
Ad-hoc runs, `debug=` presets and sweeps write under outputs/train/<time>/; only the pipeline's
train stage (`python -m train --params params.yaml`, run by `dvc repro`) writes models/ and reports/.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from visionops.config import run_task


def _task(cfg: DictConfig) -> Any:
    from train.runs import isolate

    cfg = isolate(cfg)
    where = "the pipeline's models/ and reports/" if cfg.run_kind == "pipeline" else f"{cfg.run_dir}/"
    # Importing PyTorch, Lightning and MLflow takes ~10 s: say so before the silence.
    print(f"visionops: {cfg.run_kind} run, {cfg.model.arch} on {cfg.data.name}, outputs to {where}; "
          "loading PyTorch, Lightning and MLflow...", flush=True)
    from train.fit import train

    metrics, _ = train(cfg)
    # Hydra's Optuna sweeper minimises/maximises what the task returns.
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


def main() -> None:
    run_task(_task, task_name="train", description=__doc__)


if __name__ == "__main__":
    main()
