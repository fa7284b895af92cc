"""Detection's prepare step: validate and split a COCO folder, write the splits and the statistics.

`prepare_coco` is the step with plain arguments; `prepare(cfg)` reads them from the Hydra config
(`data.root`, `data.split.{val,test,seed}`, `data.validation.min_per_class`, `data.on_invalid`,
optional `data.split_files`, `paths.prepared`, `paths.reports`) and, for the bundled dataset
(`data.name=digits_det`), generates it first when it is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from train.tasks.detection.coco import validate_and_split
from train.tasks.detection.stats import write_prepared, write_reports


def prepare_coco(
    root: str | Path,
    prepared_dir: str | Path,
    reports_dir: str | Path,
    *,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 42,
    min_per_class: int = 1,
    on_invalid: str = "fail",
    split_files: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Validate and split the COCO dataset at `root`; write `<prepared_dir>/{train,val,test}.json`,
    `labels.json` and the statistics under `reports_dir`; print one summary line; return the summary."""
    prepared = validate_and_split(root, val=val, test=test, seed=seed, min_per_class=min_per_class,
                                  on_invalid=on_invalid, split_files=split_files)
    write_prepared(prepared, Path(prepared_dir))
    summary = write_reports(prepared, Path(reports_dir))
    sizes = summary["split_sizes"]
    print(f"Prepared {summary['images']} images with {summary['objects']} objects in {summary['classes']} classes "
          f"(train {sizes['train']}, val {sizes['val']}, test {sizes['test']}; {summary['dropped_images']} images "
          f"dropped, {summary['clipped_boxes']} boxes clipped). Splits in {prepared_dir}/, statistics in {reports_dir}/")
    return summary


def prepare(cfg: Any) -> dict[str, Any]:
    """`prepare_coco` with its arguments from the config (see the module docstring)."""
    data = cfg.data
    root = Path(str(data.root))
    if data.name == "digits_det" and not (root / "annotations.json").exists():
        from train.tasks.detection.synth import generate

        generate(root)
    split_files = data.get("split_files")
    return prepare_coco(
        root, Path(cfg.paths.prepared), Path(cfg.paths.reports) / "prepare",
        val=float(data.split.val), test=float(data.split.test), seed=int(data.split.seed),
        min_per_class=int(data.validation.min_per_class), on_invalid=str(data.get("on_invalid", "fail")),
        split_files=dict(split_files) if split_files else None,
    )
