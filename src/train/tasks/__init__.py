"""The task registry: a task name (`task.name` in config, chosen with `task=detection`) -> its
implementation, a `train.tasks.base.Task`. The shared stages ask `task_of(cfg)` for each
task-specific step (see `base`). Classification's code is where it always was (train.datamodule,
train.module, train.metrics); `train.tasks.classification` only points the stages at it.
Detection's code lives in one package, `train.tasks.detection`.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from train.tasks.base import Evaluation, Task
from visionops.errors import VisionopsError

__all__ = ["TASKS", "Evaluation", "Task", "UnknownTaskError", "get_task", "task_name", "task_of"]

# name -> "module:attribute" of the Task instance (imported on first use: detection's modules
# stay unloaded in a classification run).
TASKS: dict[str, str] = {
    "classification": "train.tasks.classification:TASK",
    "detection": "train.tasks.detection.task:TASK",
}
DEFAULT = "classification"


class UnknownTaskError(VisionopsError):
    """`task.name` names no task this version knows."""


def get_task(name: str) -> Task:
    """The task called `name`; an unknown name fails with the known ones and a close match."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}: choose one of {', '.join(sorted(TASKS))}.{hint}")
    module, attr = TASKS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def task_name(cfg: Any) -> str:
    """`cfg.task.name`; configs from before tasks existed (an old params.yaml) are classification."""
    task = cfg.get("task") if hasattr(cfg, "get") else None
    return str(task.get("name", DEFAULT)) if task else DEFAULT


def task_of(cfg: Any) -> Task:
    return get_task(task_name(cfg))
