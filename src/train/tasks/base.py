"""What a task implements: the task-specific steps the shared stages call.

The stages (prepare, train, evaluate; export and register next) are shared: config, MLflow,
checkpoints, run kinds, reports, error handling. At each point where classification and
detection differ they ask the task (`train.tasks.task_of(cfg)`) for the step:

    prepare(cfg)                       validate and split the data (the prepare stage)
    datamodule(cfg, pin_memory)        the LightningDataModule over the prepared splits
    module(cfg, datamodule, cl)        a fresh LightningModule for those classes
    load(ckpt)                         a trained LightningModule back from its checkpoint, eval mode
    evaluate(cfg, model, out)          judge it on the test and validation splits: an Evaluation

then, for the model that leaves training,

    export(cfg)                        ONNX with the task's outputs, parity and speed (the export stage)
    pyfunc_example(cfg, export_dir)    an input and its output for the registered model's signature
    gate_evaluate(local, prepared, metric, cache)   a registry version's gate metric on the pinned
                                       test split, with what recomputes it on resampled images
    resampled(per_image, idx)          that metric on each resample (rows of image indices)
    parity_summary(parity)             the export parity numbers the registry's gate shows
    model_card(verdict, local)         the registered version's description

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


@dataclass
class GateEvaluation:
    """A registry version's gate metric on the pinned test split, run in its serving format.

    `score`: the metric on every test image; `per_image`: what `Task.resampled` recomputes it
    from on resampled images (the paired bootstrap); `details`: more for the verdict and the model
    card (e.g. AP per class)."""

    version: str
    score: float
    per_image: Any
    images: int
    details: dict[str, Any] = field(default_factory=dict)


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

    @abstractmethod
    def export(self, cfg: DictConfig) -> dict[str, Any]:
        """Export paths.models' best checkpoint to ONNX under paths.models/export (bundle.json,
        parity.json) and write reports/export/{parity.json (headline), report.json}."""

    @abstractmethod
    def pyfunc_example(self, cfg: DictConfig, export_dir: Path) -> tuple[Any, Any]:
        """(input, output) of the exported model on two test images: the MLflow signature."""

    @abstractmethod
    def gate_evaluate(self, local: Any, prepared: Path, metric: str, cache: dict[str, Any]) -> GateEvaluation:
        """Registry version `local` (visionops.model_store.LocalModel) on the pinned test split in
        paths.prepared; `cache` keeps decoded inputs between the versions of one gate."""

    @abstractmethod
    def resampled(self, per_image: Any, idx: Any) -> Any:
        """The gate metric on each resample: `idx` (R, images) image indices -> (R,) scores."""

    @abstractmethod
    def parity_summary(self, parity: dict[str, Any]) -> dict[str, Any]:
        """The export's parity numbers the registry's parity gate reports."""

    @abstractmethod
    def model_card(self, verdict: dict[str, Any], local: Any) -> str:
        """Markdown describing a registered version and its gate verdict."""

    def labels(self, prepared: Path) -> list[str]:
        """The class names of the prepared data, in label order."""
        from visionops.manifest import read_labels

        return read_labels(prepared)
