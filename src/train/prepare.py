"""The `prepare` stage: validate an ImageFolder tree and write a deterministic stratified split.

Checks every image decodes (corrupt files are named), class counts against a minimum, exact
duplicates by content hash, and that no image lands in two splits. Writes
data/prepared/{train,val,test}.csv (path, label, sha256) + labels.json, and dataset statistics
under reports/prepare/ (stats.json: the headline DVC metrics; dataset.json: the detail).
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from train.runs import SOURCE_FILE, data_source
from visionops.errors import VisionopsError
from visionops.images import ImageDecodeError, decode_image, is_image_file
from visionops.manifest import SPLITS, Record, sha256_file, write_manifest

log = logging.getLogger(__name__)


class DataValidationError(VisionopsError):
    """The data root cannot become a dataset as it is: the message names the images or classes to fix."""


def _display_path(p: Path) -> str:
    """Paths inside the repo are stored relative to it, so manifests survive a move of the repo."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p.resolve())


def scan(root: Path, channels: int, on_corrupt: str = "fail") -> tuple[list[Record], dict[str, Any]]:
    """Decode every image under root/<class>/; return good records and scan statistics."""
    root = Path(root)
    if not root.is_dir():
        raise DataValidationError(
            f"data root {root} is not a folder: point data.root at an ImageFolder tree "
            "(<root>/<class name>/<images>)"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataValidationError(f"{root} has no class folders: expected <root>/<class name>/<images>")
    files = [(f, d.name) for d in class_dirs for f in sorted(d.rglob("*")) if f.is_file()]
    skipped_other = [f for f, _ in files if not is_image_file(f)]
    files = [(f, c) for f, c in files if is_image_file(f)]
    records: list[Record] = []
    corrupt: list[tuple[str, str]] = []
    sizes: Counter[tuple[int, int]] = Counter()
    modes: Counter[str] = Counter()
    for path, label in tqdm(files, desc="validate images", unit="img", leave=False):
        try:
            img = decode_image(path, channels=channels)
        except ImageDecodeError as exc:
            corrupt.append((_display_path(path), str(exc)))
            continue
        sizes[img.size] += 1
        modes[img.mode] += 1
        records.append(Record(_display_path(path), label, sha256_file(path)))
    if corrupt and on_corrupt == "fail":
        listing = "\n".join(f"  {p}: {why}" for p, why in corrupt[:20])
        more = f"\n  ... and {len(corrupt) - 20} more" if len(corrupt) > 20 else ""
        raise DataValidationError(
            f"{len(corrupt)} image(s) failed to decode:\n{listing}{more}\n"
            "Fix or remove them, or set data.validation.on_corrupt=skip to leave them out."
        )
    widths = [w for (w, _h), n in sizes.items() for _ in range(n)]
    heights = [h for (_w, h), n in sizes.items() for _ in range(n)]
    stats = {
        "files_seen": len(files) + len(skipped_other),
        "non_image_files_ignored": len(skipped_other),
        "corrupt_skipped": len(corrupt),
        "corrupt_files": [p for p, _ in corrupt],
        "classes": [d.name for d in class_dirs],
        "image_width": {"min": min(widths, default=0), "max": max(widths, default=0)},
        "image_height": {"min": min(heights, default=0), "max": max(heights, default=0)},
        "distinct_sizes": len(sizes),
        "decoded_modes": dict(modes),
    }
    return records, stats


def deduplicate(records: list[Record], on_duplicate: str = "drop") -> tuple[list[Record], list[dict[str, Any]]]:
    """Exact duplicates by sha256. Keeps the first copy (by path); copies with different labels
    are all dropped, since nobody can say which label is right."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.sha256].append(r)
    dups = [g for g in groups.values() if len(g) > 1]
    if dups and on_duplicate == "fail":
        listing = "\n".join("  " + ", ".join(r.path for r in g) for g in dups[:10])
        raise DataValidationError(
            f"{len(dups)} group(s) of byte-identical images:\n{listing}\n"
            "Remove the copies, or set data.validation.on_duplicate=drop to keep one of each."
        )
    kept, report = [], []
    for g in groups.values():
        g = sorted(g, key=lambda r: r.path)
        if len({r.label for r in g}) > 1:
            report.append({"sha256": g[0].sha256, "paths": [r.path for r in g], "action": "dropped: conflicting labels"})
            continue
        kept.append(g[0])
        if len(g) > 1:
            report.append({"sha256": g[0].sha256, "paths": [r.path for r in g], "action": f"kept {g[0].path}"})
    return sorted(kept, key=lambda r: r.path), report


def check_class_counts(records: list[Record], classes: list[str], min_per_class: int) -> dict[str, int]:
    counts = Counter(r.label for r in records)
    empty = [c for c in classes if counts[c] == 0]
    if empty:
        raise DataValidationError(
            f"class folder(s) with no usable images: {', '.join(empty)}. Add images or remove the folder."
        )
    small = {c: counts[c] for c in classes if counts[c] < min_per_class}
    if small:
        listing = ", ".join(f"{c} ({n})" for c, n in small.items())
        raise DataValidationError(
            f"class(es) below data.validation.min_per_class={min_per_class}: {listing}. "
            "Add images, merge classes, or lower the minimum."
        )
    return {c: counts[c] for c in classes}


def split(records: list[Record], val: float, test: float, seed: int) -> dict[str, list[Record]]:
    """Deterministic stratified split: same records and seed give the same manifests."""
    records = sorted(records, key=lambda r: r.path)
    labels = [r.label for r in records]
    rest, test_set = train_test_split(records, test_size=test, stratify=labels, random_state=seed)
    rest_labels = [r.label for r in rest]
    train_set, val_set = train_test_split(
        rest, test_size=val / (1.0 - test), stratify=rest_labels, random_state=seed
    )
    return {
        "train": sorted(train_set, key=lambda r: r.path),
        "val": sorted(val_set, key=lambda r: r.path),
        "test": sorted(test_set, key=lambda r: r.path),
    }


def check_disjoint(splits: dict[str, list[Record]]) -> None:
    seen: dict[str, str] = {}
    for name, recs in splits.items():
        for r in recs:
            other = seen.get(r.sha256)
            if other is not None and other != name:
                raise DataValidationError(
                    f"image {r.path} (sha256 {r.sha256[:12]}) is in both the {other} and {name} splits"
                )
            seen[r.sha256] = name


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The dataset's numbers `dvc metrics show` lists: its size and classes (what validation removed
    is in dataset.json and the stage's summary line)."""
    return {"images": summary["images"], "classes": summary["classes"]}


def prepare(cfg: DictConfig) -> dict[str, Any]:
    data = cfg.data
    root = Path(data.root)
    if data.name == "digits" and not root.exists():
        from train.raw import write_digits

        write_digits(root)
    v = data.validation
    records, stats = scan(root, int(data.channels), on_corrupt=str(v.on_corrupt))
    records, dup_report = deduplicate(records, on_duplicate=str(v.on_duplicate))
    counts = check_class_counts(records, stats["classes"], int(v.min_per_class))
    splits = split(records, float(data.split.val), float(data.split.test), int(data.split.seed))
    check_disjoint(splits)

    out = Path(cfg.paths.prepared)
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        write_manifest(out / f"{name}.csv", splits[name])
    (out / "labels.json").write_text(json.dumps({"labels": stats["classes"]}, indent=2) + "\n")
    # Which data config these manifests come from: a run with other data prepares its own.
    (out / SOURCE_FILE).write_text(json.dumps(data_source(data), indent=2) + "\n")

    reports = Path(cfg.paths.reports) / "prepare"
    reports.mkdir(parents=True, exist_ok=True)
    per_split = {name: dict(sorted(Counter(r.label for r in recs).items())) for name, recs in splits.items()}
    summary = {
        "images": len(records),
        "classes": len(stats["classes"]),
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "duplicates_removed": sum(len(d["paths"]) - (0 if "conflicting" in d["action"] else 1) for d in dup_report),
        "corrupt_skipped": stats["corrupt_skipped"],
    }
    # stats.json is a DVC metric: headline numbers only, so `dvc metrics show` stays one screen
    # wide; the per-class counts, the scan listing and the duplicates go to dataset.json.
    (reports / "stats.json").write_text(json.dumps(headline(summary), indent=2) + "\n")
    (reports / "dataset.json").write_text(
        json.dumps({**summary, "class_counts": counts, "per_split": per_split, "scan": stats, "duplicates": dup_report}, indent=2)
        + "\n"
    )
    with open(reports / "class_counts.csv", "w") as fh:
        fh.write("class,split,count\n")
        for name, c in per_split.items():
            fh.writelines(f"{label},{name},{n}\n" for label, n in c.items())
    print(
        f"Prepared {summary['images']} images in {summary['classes']} classes "
        f"(train {summary['split_sizes']['train']}, val {summary['split_sizes']['val']}, "
        f"test {summary['split_sizes']['test']}; {summary['duplicates_removed']} duplicates removed, "
        f"{summary['corrupt_skipped']} corrupt skipped). Manifests in {out}/, statistics in {reports}/"
    )
    return summary


def main() -> None:
    from visionops.config import run_task

    run_task(prepare, task_name="prepare")


if __name__ == "__main__":
    main()
