"""The model bundle contract: what travels with a model so anything can run it correctly."""

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
