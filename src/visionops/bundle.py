"""The model bundle contract: what travels with a model so anything can run it correctly.

`task` says what the model does and how its ONNX outputs are read. classification: the graph
takes `input` (float32 NCHW after `preprocess`) and returns `logits` and `embedding`.
detection: `task_spec` describes the graph (see visionops.detection): inputs `images` (float32
NCHW after `preprocess`) and `orig_size` (float32 (N, 2): each image's [height, width] as decoded),
outputs `boxes` (N, K, 4) [x1, y1, x2, y2] in those original pixels, `scores` (N, K) best first,
`labels` (N, K) int64 indices into `labels` (and `embedding` where `embedding_dim` > 0); rows whose
score is below `task_spec["score_threshold"]` (the default, a caller may choose another) are not
detections; `task_spec["batch"]` is null for any batch size or the one batch size the graph takes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from visionops.preprocess import PreprocessSpec

BUNDLE_FILE = "bundle.json"


@dataclass
class ModelBundle:
    """Class labels, preprocessing, the embedding the monitor watches, and provenance."""

    labels: list[str]
    preprocess: PreprocessSpec
    arch: str
    embedding_layer: str = "embedding"
    embedding_dim: int = 0
    data_version: str = ""
    git_commit: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    serving_format: str = "onnx_fp32"                       # which file of `files` serving runs
    files: dict[str, str | None] = field(default_factory=dict)  # format -> file name beside bundle.json
    task: str = "classification"                             # bundles from before tasks are classification
    task_spec: dict[str, Any] = field(default_factory=dict)  # what serving needs to run the task (module docstring)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelBundle:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}  # newer bundles may add keys
        known["preprocess"] = PreprocessSpec.from_dict(known["preprocess"])
        return cls(**known)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / BUNDLE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, directory: Path) -> ModelBundle:
        path = Path(directory) / BUNDLE_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is this a visionops model directory?")
        return cls.from_dict(json.loads(path.read_text()))
