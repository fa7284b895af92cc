"""The `monitor.reference` stage: what "no drift" looks like for the champion.

    python -m monitor.reference [--params params.yaml | Hydra overrides, e.g. monitor.window_size=300]

1. Features of the validation split (``<paths.prepared>/<monitor.reference_split>.csv``) with the
   champion, computed exactly as serving computes them: ``serve.runtime.ModelRuntime.run`` decodes,
   takes the image statistics, preprocesses, infers and builds the production-log record
   (``visionops.records``) of every image. Saved as ``<monitor.reference_dir>/reference.parquet``
   (the production log's columns but the timestamp, plus the true ``label`` and the image ``path``).
2. Calibration: the drift scores (``monitor.drift``, the same functions the job runs) of
   ``calibration_splits`` random no-drift splits of the reference into windows of ``window_size``
   records; each signal's threshold is the (1 - level) quantile of its scores. Saved as
   ``<monitor.reference_dir>/calibration.json`` with the model name and version.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from monitor.drift import MonitorError, Scorer, calibrate, features
from visionops.manifest import read_labels, read_manifest
from visionops.records import FEATURE_COLUMNS

log = logging.getLogger("visionops.monitor")

REFERENCE_FILE = "reference.parquet"
CALIBRATION_FILE = "calibration.json"


def model_uri(cfg: Any) -> str:
    """monitor.model_uri, else $VISIONOPS_MODEL_URI, else the config's champion (visionops.project)."""
    from visionops import project

    return project.model_uri(cfg.monitor.get("model_uri"), registry=cfg.registry)


def tracking_uri(cfg: Any) -> str:
    """logger.tracking_uri, else $MLFLOW_TRACKING_URI, else the project's store (visionops.project)."""
    from visionops import project

    return project.tracking_uri(cfg.logger.get("tracking_uri"))


def load_runtime(cfg: Any) -> Any:
    """The serving runtime of the configured model (no prediction log, no kept images)."""
    from serve.runtime import ModelRuntime
    from serve.settings import Settings
    from visionops.model_store import ModelStoreError

    try:
        return ModelRuntime.load(Settings(model_uri=model_uri(cfg), tracking_uri=tracking_uri(cfg), log_dir=None,
                                          keep_images=0.0))
    except ModelStoreError as exc:
        raise MonitorError(str(exc)) from exc


def extract(rt: Any, paths: list[Path], batch_size: int = 64) -> list[dict[str, Any]]:
    """Production-log records of images, through the serving runtime's one operation."""
    from serve.runtime import UploadError

    try:
        return rt.run(paths, [f"reference-{i:06d}" for i in range(len(paths))], batch_size)[1]
    except UploadError as exc:
        raise MonitorError(f"reference image {paths[exc.index]} cannot be used: {exc.reason}") from exc


def reference_dir(cfg: Any) -> Path:
    return Path(cfg.monitor.reference_dir)


def build_reference(cfg: Any) -> dict[str, Any]:
    """Reference features + calibration for the configured model. Returns calibration.json's content."""
    import pandas as pd

    m = cfg.monitor
    prepared = Path(cfg.paths.prepared)
    manifest = prepared / f"{m.reference_split}.csv"
    try:
        recs = read_manifest(manifest)
        labels = read_labels(prepared)
    except (FileNotFoundError, ValueError) as exc:
        raise MonitorError(str(exc)) from exc
    if len(recs) < 20:
        raise MonitorError(f"{manifest} has {len(recs)} images: the reference needs at least 20")
    cap = int(m.get("max_reference_records") or 0)
    if cap and len(recs) > cap:  # kernel matrices grow with its square: a seeded sample is enough
        keep = np.sort(np.random.default_rng(int(m.seed)).choice(len(recs), cap, replace=False))
        recs = [recs[int(i)] for i in keep]
    t0 = time.perf_counter()
    rt = load_runtime(cfg)
    if [str(v) for v in rt.bundle.labels] != [str(v) for v in labels]:
        raise MonitorError(f"{rt.name} v{rt.version} predicts {rt.bundle.labels}, but {prepared} has labels {labels}: "
                           "build the reference from the data the model was trained on")
    # The log's columns minus the serving time: the same model and split give the same file.
    table = pd.DataFrame(extract(rt, [Path(r.path) for r in recs])).drop(columns=["timestamp"])
    table["label"] = [r.label for r in recs]
    table["path"] = [r.path for r in recs]
    t_features = time.perf_counter() - t0

    out = reference_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / REFERENCE_FILE, index=False)
    t1 = time.perf_counter()
    cal = calibrate_table(table, rt.bundle.labels, m)
    cal.update({
        "model_name": rt.name, "model_version": str(rt.version), "model_uri": model_uri(cfg),
        "labels": [str(v) for v in rt.bundle.labels], "embedding_dim": len(table["embedding"].iloc[0]),
        "reference_split": str(m.reference_split), "reference_file": REFERENCE_FILE,
        "reference_accuracy": float((table["predicted_label"].astype(str) == table["label"].astype(str)).mean()),
    })
    t_cal = time.perf_counter() - t1
    (out / CALIBRATION_FILE).write_text(json.dumps(cal, indent=2))
    print(f"Reference: {len(table)} {m.reference_split} images with {rt.name} v{rt.version} -> {out / REFERENCE_FILE}")
    how = (f"windows of {cal['window_size']} records" if cal["scheme"] == "disjoint" else
           f"splits of the reference into disjoint halves (size-free scores, for windows of {cal['window_size']})")
    print(f"Features in {t_features:.1f} s; calibrated in {t_cal:.1f} s on {cal['splits']} no-drift {how}: "
          f"false alarms {cal['check_false_alarm_rate']:.1%} on fresh splits (target {cal['false_alarm_rate']:.0%})")
    for s, v in cal["signals"].items():
        print(f"  {s:16s} threshold {v['threshold']:.4g}  (no-drift median {v['null_median']:.4g})")
    print(f"-> {out / CALIBRATION_FILE}")
    return cal


def calibrate_table(table: Any, labels: list[str], m: Any) -> dict[str, Any]:
    ref = features(table, labels)
    scorer = Scorer(ref, len(labels))
    return calibrate(scorer, int(m.window_size), int(m.calibration_splits), float(m.false_alarm_rate),
                     str(m.correction), int(m.seed))


def load_reference(cfg: Any) -> tuple[Any, dict[str, Any]]:
    """(reference table, calibration) with errors that say which stage to run."""
    import pandas as pd

    d = reference_dir(cfg)
    ref_file, cal_file = d / REFERENCE_FILE, d / CALIBRATION_FILE
    if not ref_file.exists() or not cal_file.exists():
        raise MonitorError(f"no reference in {d}/ ({REFERENCE_FILE} and {CALIBRATION_FILE}): build it with "
                           "`python -m monitor.reference` (or `dvc repro` of the monitor reference stage)")
    try:
        cal = json.loads(cal_file.read_text())
        table = pd.read_parquet(ref_file)
    except (OSError, ValueError) as exc:
        raise MonitorError(f"the reference in {d}/ is unreadable ({exc}): rebuild it with `python -m monitor.reference`") from exc
    missing = [c for c in FEATURE_COLUMNS if c not in table.columns]
    if missing or "signals" not in cal:
        raise MonitorError(f"the reference in {d}/ is incomplete (missing {missing or 'thresholds'}): "
                           "rebuild it with `python -m monitor.reference`")
    return table, cal


def main() -> None:
    from visionops.config import run_task

    run_task(build_reference, "monitor.reference")


if __name__ == "__main__":
    main()
