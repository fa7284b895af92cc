"""Drift over time in the Evidently UI: the drift job's own numbers in every window's run, and the
project dashboard's panels that plot them.

Evidently's drift metrics apply their own fixed tests; the job's verdict comes from the thresholds
calibrated by `monitor.reference`. So every run also carries the job's values as metrics
(`VisionopsValue`, read from a one-row table of the job's result handed to the report as
additional data): the verdict, each signal's score and threshold, the record counts. The report
shows them first (which window, model version and verdict it belongs to); the panels plot them
run after run. Only the results' numbers are stored in the workspace, so `evidently ui` serves them
without importing this module.
"""

from __future__ import annotations

import uuid
from typing import Any

from evidently.core.metric_types import SingleValue, SingleValueCalculation, SingleValueMetric
from evidently.legacy.renderers.html_widgets import CounterData, WidgetSize, counter
from evidently.sdk.models import DashboardModel, DashboardPanelPlot, DashboardTabModel, PanelMetric

from monitor.drift import DESCRIPTIONS, SIGNALS, VERDICT_INSUFFICIENT

JOB_DATA = "visionops_job"  # the name of the additional dataset holding the job's result
RECORDS = {"records/in_window": "records in the window", "records/used": "records tested",
           "records/damaged_lines": "damaged log lines skipped"}
_IDS = uuid.UUID("6f1c2a4e-9d1b-4c47-9b43-5e3f8a7d0c21")  # namespace of our panels' ids: reruns rewrite, never add


class VisionopsValue(SingleValueMetric):
    """One number of the drift job's result: `key` is a column of `job_table`."""

    key: str


class VisionopsValueCalculation(SingleValueCalculation[VisionopsValue]):
    def calculate(self, context: Any, current_data: Any, reference_data: Any) -> SingleValue:
        row = context.additional_data[JOB_DATA].as_dataframe().iloc[0]
        result = self.result(float(row[self.metric.key]))
        result.widget = _widgets(self.metric.key, row)
        return result

    def display_name(self) -> str:
        key = self.metric.key
        if key in RECORDS:
            return RECORDS[key]
        signal, _, part = key.partition("/")
        return f"{DESCRIPTIONS.get(signal, signal)}: {part}" if part else key.replace("_", " ")


def job_table(result: dict[str, Any]) -> Any:
    """The job's result (drift.json's content) as the one-row table the metrics read."""
    import pandas as pd

    w, m, rec = result["window"], result["model"], result["records"]
    row: dict[str, Any] = {
        "verdict": result["verdict"], "window": f"{w['since']} to {w['until']}",
        "model": f"{m['name']} v{m['version']}",
        "drift": float(bool(result["drift_detected"])),
        "insufficient_data": float(result["verdict"] == VERDICT_INSUFFICIENT),
        "records/in_window": rec["in_window"], "records/used": rec["used"],
        "records/damaged_lines": rec.get("damaged_lines", 0),
    }
    for s, v in (result.get("signals") or {}).items():
        score, threshold = float(v["score"]), float(v["threshold"])
        row.update({f"{s}/score": score, f"{s}/threshold": threshold,
                    f"{s}/ratio": score / threshold if threshold else 0.0, f"{s}/drifted": float(v["drifted"])})
    return pd.DataFrame([row])


def job_metrics(result: dict[str, Any]) -> list[VisionopsValue]:
    """The metrics of `job_table`'s numbers: the verdict first, so the report opens with it."""
    keys = ["drift", "insufficient_data", *RECORDS]
    for s in SIGNALS:
        if s in (result.get("signals") or {}):
            keys += [f"{s}/ratio", f"{s}/score", f"{s}/threshold"]
    return [VisionopsValue(key=k) for k in keys]


def _widgets(key: str, row: Any) -> list[Any]:
    """The report's view: one block naming the window, model and verdict, one per signal; the
    other values are for the dashboard only."""
    if key == "drift":
        used = f"{int(row['records/used'])} of {int(row['records/in_window'])}"
        return [counter(title="visionops drift job (verdict from the calibrated thresholds)", size=WidgetSize.FULL,
                        counters=[CounterData("verdict", str(row["verdict"])), CounterData("window", str(row["window"])),
                                  CounterData("model", str(row["model"])),
                                  CounterData("records tested, of those in the window", used)])]
    signal, _, part = key.partition("/")
    if part == "ratio":
        return [counter(title=DESCRIPTIONS[signal], size=WidgetSize.HALF, counters=[
            CounterData("score", f"{row[f'{signal}/score']:.4g}"),
            CounterData("calibrated threshold", f"{row[f'{signal}/threshold']:.4g}"),
            CounterData("verdict", "drift" if row[f"{signal}/drifted"] else "ok")])]
    return []


def _value(key: str, legend: str) -> PanelMetric:
    return PanelMetric(legend=legend, metric="VisionopsValue", metric_labels={"key": key})


def _panel(title: str, subtitle: str, values: list[PanelMetric], plot: str, size: str = "half") -> DashboardPanelPlot:
    return DashboardPanelPlot(id=uuid.uuid5(_IDS, title), title=title, subtitle=subtitle, size=size, values=values,
                              plot_params={"plot_type": plot})


def panels() -> list[DashboardPanelPlot]:
    """The project's panels: the verdicts, the record counts, every signal against its threshold."""
    return [
        _panel("Verdict per window", "1 = the window's verdict (calibrated thresholds)",
               [_value("drift", "drift detected"), _value("insufficient_data", "insufficient data")], "bar"),
        _panel("Records per window", "what the job read and tested",
               [_value(k, legend) for k, legend in RECORDS.items()], "line"),
        _panel("All signals: score / threshold", "above 1 raises the alarm",
               [_value(f"{s}/ratio", s.replace("_", " ")) for s in SIGNALS], "line", size="full"),
        *[_panel(DESCRIPTIONS[s], "score against its calibrated threshold",
                 [_value(f"{s}/score", "score"), _value(f"{s}/threshold", "threshold")], "line") for s in SIGNALS],
    ]


def ensure_panels(workspace: Any, project_id: Any) -> bool:
    """Put our panels at the top of the project's dashboard (replacing older versions of them,
    keeping panels a user added). Returns whether the dashboard changed."""
    current = workspace.get_dashboard(project_id)
    ours = panels()
    ids = {p.id for p in ours}
    tab = current.tabs[0].copy(deep=True) if current.tabs else \
        DashboardTabModel(id=uuid.uuid5(_IDS, "tab"), title="Drift over time", panels=[])
    tab.panels = [p.id for p in ours] + [i for i in tab.panels if i not in ids]
    wanted = DashboardModel(tabs=[tab, *current.tabs[1:]], panels=ours + [p for p in current.panels if p.id not in ids])
    if wanted.dict() == current.dict():
        return False
    workspace.save_dashboard(project_id, wanted)
    return True
