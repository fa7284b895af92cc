"""The Evidently report of one window: what a person opens after a drift email.

Sections: the job's verdict (window, model version, each signal's calibrated score and threshold:
`monitor.dashboard`), data drift of the image statistics (DataDriftPreset), embedding drift
(EmbeddingsDrift), prediction drift (predicted class and top-1 probability) and data quality
(shares of tiny, huge, grayscale, near-black and blurred images, window vs reference). Saved as a
self-contained report.html and added as a run to the local Evidently workspace, whose project
dashboard plots the verdicts over time (`evidently ui --workspace monitoring/workspace`).

The verdict does not come from here: Evidently's own tests use fixed p-value thresholds; the
job's verdict uses the calibrated thresholds of `monitor.drift` (in drift.json and the email).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from monitor.drift import QUALITY_FLAGS, quality_flags
from visionops.imagestats import STAT_COLUMNS

EMBEDDINGS_NAME = "img_emb"


def evidently_frame(df: Any, q: Any) -> Any:
    """A log or reference table as flat columns: statistics, emb_0..emb_k, prediction, quality flags."""
    import pandas as pd

    emb = np.stack([np.asarray(e, dtype=np.float64) for e in df["embedding"]])
    out = pd.DataFrame(df[list(STAT_COLUMNS)].to_numpy(dtype=np.float64), columns=list(STAT_COLUMNS))
    out = pd.concat([out, pd.DataFrame(emb, columns=[f"emb_{i}" for i in range(emb.shape[1])])], axis=1)
    out["predicted_label"] = df["predicted_label"].astype(str).to_numpy()
    out["top_score"] = df["top_score"].to_numpy(dtype=np.float64)
    flags = quality_flags(df.reset_index(drop=True), q)
    for k in QUALITY_FLAGS:
        out[f"{k}_image"] = flags[k].astype(np.float64).to_numpy()
    return out


def embedding_method(name: str, threshold: float | None = None) -> Any:
    """Evidently's embedding drift method by name. For mmd, `threshold` is on Evidently's unscaled MMD²."""
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import distance, mmd, model, ratio

    if name == "mmd":
        return mmd(threshold=threshold) if threshold is not None else mmd()
    if name == "model":
        return model(bootstrap=True)
    if name == "distance":
        return distance(bootstrap=True)
    if name == "ratio":
        return ratio()
    raise ValueError(f"monitor.embedding_method must be one of mmd, model, distance, ratio; got {name!r}")


def build(reference: Any, current: Any, q: Any, method: str = "mmd", mmd_threshold: float | None = None,
          name: str | None = None, timestamp: datetime | None = None, metadata: dict[str, Any] | None = None,
          tags: Sequence[str] = (), job: dict[str, Any] | None = None) -> Any:
    """Run the Evidently report of `current` (a window of the log) against `reference`; a Snapshot.
    `job` (the drift job's result) adds its verdict, scores and thresholds as the first section."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift, MeanValue, RowCount, ValueDrift
    from evidently.presets import DataDriftPreset

    from monitor import dashboard

    ref, cur = evidently_frame(reference, q), evidently_frame(current, q)
    emb_cols = [c for c in ref.columns if c.startswith("emb_")]
    flag_cols = [f"{k}_image" for k in QUALITY_FLAGS]
    definition = DataDefinition(
        numerical_columns=[*STAT_COLUMNS, "top_score", *emb_cols, *flag_cols],
        categorical_columns=["predicted_label"],
        embeddings={EMBEDDINGS_NAME: emb_cols},
    )
    metrics = [
        *(dashboard.job_metrics(job) if job else []),
        RowCount(),
        DataDriftPreset(columns=list(STAT_COLUMNS)),
        EmbeddingsDrift(embeddings_name=EMBEDDINGS_NAME, drift_method=embedding_method(method, mmd_threshold)),
        ValueDrift(column="predicted_label"),
        ValueDrift(column="top_score"),
        *[MeanValue(column=c) for c in flag_cols],
    ]
    report = Report(metrics, metadata=dict(metadata or {}), tags=list(tags))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy/pandas warnings on constant columns (8x8 images: width is constant)
        return report.run(current_data=Dataset.from_pandas(cur, data_definition=definition),
                          reference_data=Dataset.from_pandas(ref, data_definition=definition),
                          additional_data={dashboard.JOB_DATA: dashboard.job_table(job)} if job else None,
                          timestamp=timestamp, name=name)


def build_summary(job: dict[str, Any], name: str, timestamp: datetime, metadata: dict[str, Any],
                  tags: Sequence[str]) -> Any:
    """A run of the job's numbers alone (no HTML report, or too few records for one): the
    dashboard's points for this window. A Snapshot."""
    from evidently import Report

    from monitor import dashboard

    table = dashboard.job_table(job)
    return Report(dashboard.job_metrics(job), metadata=dict(metadata), tags=list(tags)).run(
        current_data=table, additional_data={dashboard.JOB_DATA: table}, timestamp=timestamp, name=name)


def save_html(snapshot: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    return path


def add_to_workspace(snapshot: Any, workspace: str | Path, project: str, name: str) -> tuple[str, str]:
    """Add the snapshot to the local workspace's project (created if missing, with the drift
    panels on its dashboard), replacing an earlier run of the same window. Returns the project's
    and the run's ids (the Evidently UI shows the run at /projects/<project>/reports/<run>)."""
    from evidently.ui.workspace import Workspace

    from monitor import dashboard

    ws = Workspace.create(str(workspace))
    found = ws.search_project(project)
    proj = found[0] if found else ws.create_project(project, description="visionops production drift")
    dashboard.ensure_panels(ws, proj.id)
    for run_id in ws.list_runs(proj.id):
        try:
            old = ws.get_run(proj.id, run_id)
        except Exception:  # noqa: BLE001 - an unreadable old run is left alone
            old = None
        if old is not None and old.name == name:
            ws.delete_run(proj.id, run_id)
    ref = ws.add_run(proj.id, snapshot, name=name)
    return str(proj.id), str(ref.id)
