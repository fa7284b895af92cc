"""The task registry: a task name (`task.name` in config) -> the package holding that task's
specific steps. Classification's steps are still where they always were (train.prepare,
train.module, ...); detection's live in `train.tasks.detection`. The shared stages will ask
`task_package(name)` for the task-specific step; until they do, this is only the map."""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from visionops.errors import VisionopsError

TASKS: dict[str, str] = {
    "classification": "train",
    "detection": "train.tasks.detection",
}


class UnknownTaskError(VisionopsError):
    """`task.name` names no task this version knows."""


def task_package(name: str) -> ModuleType:
    """The package of task `name`; an unknown name fails with the known ones and a close match."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}: choose one of {', '.join(sorted(TASKS))}.{hint}")
    return importlib.import_module(TASKS[name])
