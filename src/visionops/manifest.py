"""Dataset manifests: the CSV files (path, label, sha256) that pin a split of a dataset."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")
FIELDS = ("path", "label", "sha256")


@dataclass(frozen=True)
class Record:
    path: str
    label: str
    sha256: str


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(path: Path, records: Iterable[Record]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(FIELDS)
        for r in records:
            writer.writerow([r.path, r.label, r.sha256])


def read_manifest(path: Path) -> list[Record]:
    if not path.exists():
        raise FileNotFoundError(
            f"manifest {path} not found: run the prepare stage first (`dvc repro prepare` or "
            "`python -m train.prepare`)"
        )
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(FIELDS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"manifest {path} lacks columns {sorted(missing)}")
        return [Record(row["path"], row["label"], row["sha256"]) for row in reader]


def read_labels(prepared_dir: Path) -> list[str]:
    return list(json.loads((Path(prepared_dir) / "labels.json").read_text())["labels"])


def data_version(prepared_dir: Path) -> str:
    """A short hash of the manifests and label list: the version of the data a model saw."""
    h = hashlib.sha256()
    for name in [*(f"{s}.csv" for s in SPLITS), "labels.json"]:
        p = Path(prepared_dir) / name
        if p.exists():
            h.update(name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]
