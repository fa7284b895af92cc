"""`python -m train [experiment=NAME] [key=value ...]`, or `--params params.yaml` under DVC."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from train.config import run_task


def _task(cfg: DictConfig) -> Any:
    from train.pipeline import train

    metrics, _ = train(cfg)
    # Hydra's Optuna sweeper minimises/maximises what the task returns.
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


def main() -> None:
    run_task(_task, task_name="train")


if __name__ == "__main__":
    main()
