"""The production-log record: what is written for every served prediction, and what the monitor tests.

A record's fields, in the order they are written (one JSON line each, `visionops.prediction_log`):

    IDENTITY       timestamp (UTC, ISO 8601 with microseconds), request_id, model_name, model_version
    STAT_COLUMNS   the image's statistics (`visionops.imagestats`): width ... mean_b
    EMBEDDING      where the model put the image (a list of floats)
    the task's     classification: predicted_label, top_score, probabilities
    IMAGE_PATH     where the image was kept (sampled; null otherwise)

The serving runtime builds records with `build` (`serve.runtime`), the reference stage stores
them as a table (`monitor.reference`), and the drift scorer reads a task's `features` from
either (`monitor.drift`). A new task (detection: counts, classes, scores, box sizes) adds a
TaskSchema and a function giving its outputs; the other fields stay as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from visionops.imagestats import STAT_COLUMNS

IDENTITY = ("timestamp", "request_id", "model_name", "model_version")
EMBEDDING = "embedding"
IMAGE_PATH = "image_path"
# Classification's own fields.
LABEL, SCORE, PROBABILITIES = "predicted_label", "top_score", "probabilities"
DECIMALS = 6  # vectors are rounded: plenty for the monitor, and a record half the size


@dataclass(frozen=True)
class TaskSchema:
    """The fields a task adds to every record (in the order written) and which of them the drift
    monitor tests besides the image statistics and the embedding."""

    task: str
    outputs: tuple[str, ...]
    monitored: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """Every field of the task's records, in the order they are written."""
        return (*IDENTITY, *STAT_COLUMNS, EMBEDDING, *self.outputs, IMAGE_PATH)

    @property
    def features(self) -> tuple[str, ...]:
        """The fields the drift monitor reads: every reference and production table has them."""
        return (*STAT_COLUMNS, EMBEDDING, *self.monitored)


CLASSIFICATION = TaskSchema("classification", outputs=(LABEL, SCORE, PROBABILITIES), monitored=(LABEL, SCORE))
FEATURE_COLUMNS = CLASSIFICATION.features


def now_iso() -> str:
    """A record's timestamp: now, UTC, ISO 8601 with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def vector(values: Any) -> list[float]:
    """An embedding or a probability vector as the record holds it."""
    return np.round(np.asarray(values, np.float64), DECIMALS).tolist()


def classification_outputs(prediction: Mapping[str, Any], probabilities: Any) -> dict[str, Any]:
    """Classification's fields of a record: the top-1 label and score, every class's probability."""
    return {LABEL: prediction["label"], SCORE: prediction["score"], PROBABILITIES: vector(probabilities)}


def build(request_id: str, model_name: str, model_version: str, stats: Mapping[str, float], embedding: Any,
          outputs: Mapping[str, Any], image_path: str | None = None, timestamp: str | None = None) -> dict[str, Any]:
    """One record, its fields in the schema's order (`outputs`: the task's fields, in its order)."""
    return {"timestamp": timestamp or now_iso(), "request_id": request_id, "model_name": model_name,
            "model_version": model_version, **stats, EMBEDDING: vector(embedding), **outputs, IMAGE_PATH: image_path}
