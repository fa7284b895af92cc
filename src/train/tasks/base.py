"""What a task implements: the task-specific steps the shared stages call.

The stages (prepare, train, evaluate; export and register next) are shared: config, MLflow,
checkpoints, run kinds, reports, error handling. At each point where classification and
detection differ they ask the task (`train.tasks.task_of(cfg)`) for the step:

    prepare(cfg)                       validate and split the data (the prepare stage)
    datamodule(cfg, pin_memory)        the LightningDataModule over the prepared splits
    module(cfg, datamodule, cl)        a fresh LightningModule for those classes
    load(ckpt)                         a trained LightningModule back from its checkpoint, eval mode
    evaluate(cfg, model, out)          judge it on the test and validation splits: an Evaluation

and names what differs in the reports: the per-epoch metrics of the learning curves (`history`),
the last epoch's numbers training reports (`last_epoch`), the evaluate stage's headline metrics
(`headline`, the DVC metric) and the test metric the registry's gate compares (`gate_metric`).
Which validation metric checkpoints and early stopping follow is config
(`callbacks.checkpoint.monitor`, set by the task's conf/task/<name>.yaml).

Adding a task is a subclass, an entry in `train.tasks.TASKS` and a conf/task/<name>.yaml.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


@dataclass
class Evaluation:
    """What the evaluate stage writes and logs for a task.

    `metrics`: every test number (written to details.json; its numeric entries go to MLflow);
    `headline`: the few that reports/evaluate/metrics.json (a DVC metric) holds; `validation`:
    the best checkpoint on the validation split (validation.json); `mlflow_extra`: numbers logged
    to MLflow besides the numeric top-level `metrics` (not the per-epoch validation curves training
    already logged, which another point would overwrite at step 0);
    `artifacts`: files logged to the run, as (path, artifact folder); `summary`: the stage's line.
    """

    metrics: dict[str, Any]
    headline: dict[str, Any]
    validation: dict[str, Any]
    summary: str
    mlflow_extra: dict[str, float] = field(default_factory=dict)
    artifacts: list[tuple[Path, str]] = field(default_factory=list)


class Task(ABC):
    name: str
    history: tuple[str, ...]
    last_epoch: tuple[str, ...]
    headline: tuple[str, ...]
    gate_metric: str

    @abstractmethod
    def prepare(self, cfg: DictConfig) -> dict[str, Any]:
        """Validate data.root and write the splits to paths.prepared (and reports/prepare/)."""

    @abstractmethod
    def datamodule(self, cfg: DictConfig, pin_memory: bool = False) -> Any:
        """The LightningDataModule over paths.prepared; after `setup()` it has `labels`."""

    @abstractmethod
    def module(self, cfg: DictConfig, datamodule: Any, channels_last: bool = False) -> Any:
        """A new LightningModule for the datamodule's classes, built from cfg.model."""

    @abstractmethod
    def load(self, ckpt_path: str, map_location: str = "cpu") -> Any:
        """The LightningModule of a checkpoint, in eval mode, without downloading any weights."""

    @abstractmethod
    def evaluate(self, cfg: DictConfig, model: Any, out: Path) -> Evaluation:
        """The model on the test and validation splits; task-specific files go under `out`."""

    def labels(self, prepared: Path) -> list[str]:
        """The class names of the prepared data, in label order."""
        from visionops.manifest import read_labels

        return read_labels(prepared)
