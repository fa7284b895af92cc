"""The drift job: one window of the production log against the champion's reference.

1. Reads the records of the window from the files of the prediction log (`monitor.log_dir`) whose
   day overlaps it, skipping damaged lines (named in a warning and in drift.json), keeps the
   records of the model the reference was calibrated for, samples `max_records` of a bigger window.
2. Fewer than `min_records`: verdict "insufficient data", no alarm.
3. Else the four drift scores (`monitor.drift`) against the reference and the calibrated
   thresholds (`<reference_dir>/calibration.json`, from `python -m monitor.reference`) give a
   verdict per signal and overall.
4. Drift: copies the window's kept production images to `<keep_drifted_to>/<window>/<predicted
   class>/` and prints the next step (label, merge, `dvc exp run -S data.root=...`).
5. Writes `<reports_dir>/<window>/drift.json` (always) and `report.html` (Evidently), adds the
   window's run to the Evidently workspace, whose dashboard plots the verdicts over time.
6. Emails the verdict (`monitor.email.on`: drift | always | never), after what still waits in the
   outbox.

The window is named from since/until and every random choice is seeded: rerunning a window
writes the same drift.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from monitor.drift import (
    VERDICT_DRIFT,
    VERDICT_INSUFFICIENT,
    MonitorError,
    Scorer,
    details,
    features,
    quality_shares,
    verdict,
)
from monitor.window import Window, iso, log_summary, read_window, resolve_window

CALIBRATION_KEYS = ("window_size", "false_alarm_rate", "correction", "signal_level", "check_false_alarm_rate", "scheme")


def run_job(cfg: Any) -> dict[str, Any]:
    """The drift job. Returns drift.json's content; raises MonitorError when it cannot do its work
    (drift.json and report.html are written before an email failure is raised)."""
    from monitor.reference import load_reference

    m = cfg.monitor
    window = resolve_window(m)
    ref_table, cal = load_reference(cfg)
    log = read_window(Path(m.log_dir), window)
    records, others = records_of_calibrated_model(log.records, cal)
    tested = sample(records, int(m.max_records), int(m.seed))
    result = new_result(m, window, cal, log, len(records), others, tested, len(ref_table))
    thumbnails: list[tuple[bytes, str, float]] = []
    snapshot = None
    if len(tested) < int(m.min_records):
        result["note"] = (f"{len(tested)} records of {cal['model_name']} v{cal['model_version']} in the window, fewer "
                          f"than monitor.min_records={int(m.min_records)}: no verdict on drift")
    else:
        ref, cur, gamma = score_window(result, m, ref_table, tested, cal)
        if result["drift_detected"]:
            thumbnails = prepare_relabelling(cfg, result, tested, ref, cur, gamma)
        if m.get("html_report", True):
            snapshot = evidently_report(m, result, ref_table, tested, cal, window)
    out_dir = save(result, Path(m.reports_dir) / window.name, with_report=snapshot is not None)
    print_summary(result, out_dir)
    ui_path = add_run(m, result, snapshot, window) if m.get("workspace") else None
    send_email(cfg, result, thumbnails, ui_path)
    return result


def records_of_calibrated_model(df: Any, cal: dict[str, Any]) -> tuple[Any, dict[str, int]]:
    """The records of the model version the reference was calibrated for, and the count of each
    other version's. MonitorError when the window holds only other versions."""
    if not len(df):
        return df, {}
    same = (df["model_name"].astype(str) == str(cal["model_name"])) & \
           (df["model_version"].astype(str) == str(cal["model_version"]))
    others = {f"{k[0]} v{k[1]}": int(v) for k, v in df[~same].groupby(["model_name", "model_version"]).size().items()}
    if not same.any():
        raise MonitorError(
            f"the window's {len(df)} records are from {', '.join(others)}, but the reference is calibrated "
            f"for {cal['model_name']} v{cal['model_version']}: rebuild it for the serving model "
            "(`python -m monitor.reference`, or `dvc repro` of the reference stage)")
    return df[same].reset_index(drop=True), others


def sample(df: Any, max_records: int, seed: int) -> Any:
    """A seeded sample of `max_records` records of a bigger window (in log order)."""
    if len(df) <= max_records:
        return df
    idx = np.sort(np.random.default_rng(seed).choice(len(df), max_records, replace=False))
    return df.iloc[idx].reset_index(drop=True)


def new_result(m: Any, window: Window, cal: dict[str, Any], log: Any, matching: int, others: dict[str, int],
               tested: Any, n_reference: int) -> dict[str, Any]:
    """drift.json before the test: what was read; the verdict "insufficient data" until tested."""
    kept = int(tested["image_path"].notna().sum()) if "image_path" in tested.columns and len(tested) else 0
    return {
        "window": {"name": window.name, "since": iso(window.since), "until": iso(window.until)},
        "model": {"name": cal["model_name"], "version": str(cal["model_version"])},
        "verdict": VERDICT_INSUFFICIENT, "drift_detected": False,
        "records": {"in_window": len(log.records), "model_version": matching, "other_versions": others,
                    "used": len(tested), "min_records": int(m.min_records), "reference": n_reference,
                    "kept_images": kept, "damaged_lines": len(log.damaged)},
        "log": log_summary(log, Path(m.log_dir)),
        "signals": None, "details": None, "quality": None,
        "calibration": {k: cal.get(k) for k in CALIBRATION_KEYS},
        "report": None, "incoming": None, "next_step": None, "note": None,
    }


def score_window(result: dict[str, Any], m: Any, ref_table: Any, tested: Any, cal: dict[str, Any]) -> tuple[Any, Any, float]:
    """The four signals against the calibrated thresholds: the verdict, per-signal details and the
    data-quality shares into `result`. Returns the reference's and the window's features and the
    kernel bandwidth (for the thumbnails)."""
    labels = list(cal["labels"])
    ref = features(ref_table, labels)
    try:
        cur = features(tested, labels)
    except ValueError as exc:
        raise MonitorError(f"the prediction log {m.log_dir} is not in the format this monitor reads: {exc}") from exc
    scorer = Scorer(ref, len(labels), gamma=float(cal["gamma"]))
    v = verdict(scorer.score(cur), cal)
    result.update({"verdict": v["verdict"], "drift_detected": v["drift_detected"], "signals": v["signals"],
                   "details": details(ref, cur, labels),
                   "quality": {"current": quality_shares(tested, m.quality),
                               "reference": quality_shares(ref_table, m.quality)}})
    return ref, cur, scorer.gamma


def prepare_relabelling(cfg: Any, result: dict[str, Any], tested: Any, ref: Any, cur: Any,
                        gamma: float) -> list[tuple[bytes, str, float]]:
    """The window's kept images out for labelling and the next step into `result`; returns the
    thumbnails of the most atypical ones for the email."""
    from monitor.labelling import atypical_thumbnails, copy_kept_images, next_step

    m, name, log_dir = cfg.monitor, result["window"]["name"], Path(cfg.monitor.log_dir)
    incoming = Path(m.keep_drifted_to) / name
    copied = copy_kept_images(tested, log_dir, incoming) if result["records"]["kept_images"] else 0
    result["incoming"] = str(incoming) if copied else None
    result["next_step"] = next_step(cfg, name, incoming, copied)
    return atypical_thumbnails(tested, ref, cur, gamma, log_dir, int(m.get("thumbnails", 8)))


def run_labels(result: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The Evidently run's metadata and tags: which window, model version and verdict it is."""
    tag = {VERDICT_DRIFT: "drift", VERDICT_INSUFFICIENT: "insufficient-data"}.get(result["verdict"], "no-drift")
    m, w = result["model"], result["window"]
    return {"model": f"{m['name']} v{m['version']}", "window": w["name"], "verdict": result["verdict"]}, ["visionops", tag]


def evidently_report(m: Any, result: dict[str, Any], ref_table: Any, tested: Any, cal: dict[str, Any],
                     window: Window) -> Any:
    """The Evidently report (report.html), a Snapshot. Its failure is a warning: the verdict and
    the email do not depend on it. Evidently's MMD threshold is the calibrated one, unscaled
    (approximately: Evidently picks its own kernel bandwidth)."""
    from monitor import report

    if str(m.embedding_method) not in ("mmd", "model", "distance", "ratio"):
        raise MonitorError(f"monitor.embedding_method must be mmd, model, distance or ratio; got {m.embedding_method!r}")
    n_ref, n_cur = len(ref_table), len(tested)
    mmd_thr = max(0.0, float(cal["signals"]["embedding"]["threshold"]) * (n_ref + n_cur) / (n_ref * n_cur))
    metadata, tags = run_labels(result)
    try:
        snapshot = report.build(ref_table, tested, m.quality, str(m.embedding_method), mmd_threshold=mmd_thr,
                                name=window.name, timestamp=window.until.replace(tzinfo=None), metadata=metadata,
                                tags=tags, job=result)
        result["report"] = str(report.save_html(snapshot, Path(m.reports_dir) / window.name / "report.html"))
        return snapshot
    except Exception as exc:  # noqa: BLE001 - Evidently internals; the verdict stands without the report
        print(f"warning: the Evidently report could not be built ({exc.__class__.__name__}: {exc})", file=sys.stderr)
        return None


def save(result: dict[str, Any], out_dir: Path, with_report: bool) -> Path:
    """drift.json, always; an earlier run's report.html goes when this run has none."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not with_report and (out_dir / "report.html").exists():
        (out_dir / "report.html").unlink()  # it would contradict this drift.json
    (out_dir / "drift.json").write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return out_dir


def print_summary(result: dict[str, Any], out_dir: Path) -> None:
    w, rec = result["window"], result["records"]
    n = rec.get("damaged_lines", 0)
    damaged = f", {n} damaged line{'s' * (n != 1)} skipped" if n else ""
    print(f"Window {w['since']} to {w['until']}: {rec['in_window']} records, {rec['used']} used "
          f"({result['model']['name']} v{result['model']['version']}){damaged}")
    for s, v in (result["signals"] or {}).items():
        print(f"  {s:16s} score {v['score']:10.4g}  threshold {v['threshold']:10.4g}  {'DRIFT' if v['drifted'] else 'ok'}")
    if result.get("note"):
        print(result["note"])
    print(f"Verdict: {result['verdict']} -> {out_dir / 'drift.json'}" + (f", {result['report']}" if result["report"] else ""))
    if result.get("incoming"):
        print(f"Kept images copied to {result['incoming']}/")
    if result.get("next_step"):
        print(result["next_step"])


def add_run(m: Any, result: dict[str, Any], snapshot: Any, window: Window) -> str | None:
    """The window's run in the Evidently workspace: the report, or the job's numbers alone when
    there is none, so the dashboard has every window. Returns the run's page path in the UI."""
    from monitor import report

    try:
        if snapshot is None:
            metadata, tags = run_labels(result)
            snapshot = report.build_summary(result, window.name, window.until.replace(tzinfo=None), metadata, tags)
        project_id, run_id = report.add_to_workspace(snapshot, m.workspace, str(m.project), window.name)
    except Exception as exc:  # noqa: BLE001 - the workspace is a convenience; drift.json and the report are saved
        print(f"warning: could not add the run to the Evidently workspace {m.workspace}: {exc}", file=sys.stderr)
        return None
    print(f"Evidently workspace: run {window.name} in project {m.project!s} ({m.workspace}; `make evidently-ui` "
          "shows the drift over time)")
    return f"projects/{project_id}/reports/{run_id}"


def send_email(cfg: Any, result: dict[str, Any], thumbnails: list[tuple[bytes, str, float]],
               ui_path: str | None = None) -> str | None:
    """Send what waits in the outbox, then this window's email (`monitor.email.on`)."""
    from monitor import emailer, outbox

    e = cfg.monitor.email
    outbox.send_pending(e)
    if not emailer.should_send(e["on"], result["verdict"]):
        return None
    plot = emailer.signal_plot(result["signals"]) if result.get("signals") else None
    ui_url = cfg.monitor.get("ui_url")
    msg = emailer.compose(result, str(e["from"]), outbox.recipients(e.get("to")),
                          Path(result["report"]) if result.get("report") else None, int(e.attach_max_bytes),
                          thumbnails, plot, f"{str(ui_url).rstrip('/')}/{ui_path}" if ui_url and ui_path else None)
    tag = "drift" if result["verdict"] == VERDICT_DRIFT else result["verdict"].replace(" ", "-")
    try:
        delivered = outbox.deliver(msg, e, f"{result['window']['name']}-{tag}")
    except outbox.EmailError as exc:
        where = result["report"] or str(Path(cfg.monitor.reports_dir) / result["window"]["name"] / "drift.json")
        raise outbox.EmailError(f"{exc}; the report is saved at {where}") from exc
    print("Email: " + delivered)
    return delivered
