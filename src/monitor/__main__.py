"""The drift job: one window of the production log against the champion's reference.

    python -m monitor [--params params.yaml] [monitor.since=2026-01-01T00:00:00Z monitor.until=2026-01-02T00:00:00Z]
    python -m monitor monitor.last=24h monitor.email.on=always monitor.email.smtp_host=smtp.example.com

1. Reads the records of the window from the files of the prediction log (`monitor.log_dir`) whose
   day overlaps it, skipping damaged lines (named in a warning and in drift.json), keeps the
   records of the model the reference was calibrated for, samples `max_records` of a bigger window.
2. Fewer than `min_records`: verdict "insufficient data", no alarm.
3. Else the four drift scores (`monitor.drift`) against the reference and the calibrated
   thresholds (`<reference_dir>/calibration.json`, from `python -m monitor.reference`) give a
   verdict per signal and overall.
4. Writes `<reports_dir>/<window>/drift.json` (always) and `report.html` (Evidently), adds the run
   to the Evidently workspace.
5. Drift: copies the window's kept production images to `<keep_drifted_to>/<window>/<predicted
   class>/` and prints the next step (label, merge, `dvc exp run -S data.root=...`).
6. Emails the verdict (`monitor.email.on`: drift | always | never).

Exit 0 with or without drift; 2 with a one-line `error: ...` when the job could not do its work
(no reference, unreadable log, email undeliverable after retries: the report is saved first).
The window is named from since/until and every random choice is seeded: rerunning a window
writes the same drift.json.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from monitor.drift import (
    VERDICT_DRIFT,
    VERDICT_INSUFFICIENT,
    MonitorError,
    Scorer,
    atypicality,
    details,
    features,
    quality_shares,
    verdict,
)

_PERIOD = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
MAX_LISTED = 100  # damaged lines named in drift.json; the rest are counted
_UNITS = {"s": "seconds", "m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: Any, key: str) -> datetime:
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip()
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError as exc:
            raise MonitorError(f"monitor.{key}={text!r} is not an ISO 8601 time (e.g. 2026-01-31T00:00:00Z)") from exc
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def parse_period(value: Any) -> timedelta:
    match = _PERIOD.match(str(value))
    if not match:
        raise MonitorError(f"monitor.last={value!r} is not a period like 24h, 90m, 7d or 1w")
    return timedelta(**{_UNITS[match.group(2).lower()]: float(match.group(1))})


def resolve_window(m: Any, now: datetime | None = None) -> tuple[datetime, datetime, str]:
    """(since, until, name) in UTC. since/until win; `last` fills in what is missing; until
    defaults to now (to the minute)."""
    now = (now or datetime.now(UTC)).replace(second=0, microsecond=0)
    until = parse_time(m.until, "until") if m.get("until") else None
    since = parse_time(m.since, "since") if m.get("since") else None
    if until is None:
        until = now
    if since is None:
        if not m.get("last"):
            raise MonitorError("no window: set monitor.since (and monitor.until) or monitor.last (e.g. 24h)")
        since = until - parse_period(m.last)
    if since >= until:
        raise MonitorError(f"empty window: monitor.since {since.isoformat()} is not before until {until.isoformat()}")
    return since, until, f"{since:%Y%m%dT%H%M%SZ}_{until:%Y%m%dT%H%M%SZ}"


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def read_window(log_dir: Path, since: datetime, until: datetime) -> Any:
    """The window's records of the files that overlap it (a `visionops.prediction_log.LogWindow`);
    damaged lines are skipped, named in a warning and in drift.json."""
    import pandas as pd

    from visionops.prediction_log import LogWindow, scan_log

    if not Path(log_dir).is_dir():
        print(f"warning: the prediction log {log_dir} does not exist (is monitor.log_dir the service's "
              "VISIONOPS_PREDICTION_LOG?)", file=sys.stderr)
        return LogWindow(pd.DataFrame(), [], [])
    try:
        window = scan_log(log_dir, since, until)
    except OSError as exc:
        raise MonitorError(f"cannot read the prediction log {log_dir}: {exc}") from exc
    if window.damaged:
        lines = window.damaged_lines()
        shown = ", ".join(lines[:5]) + (f" and {len(lines) - 5} more" if len(lines) > 5 else "")
        print(f"warning: skipped {len(lines)} damaged line{'s' * (len(lines) > 1)} of the prediction log "
              f"(a torn or foreign record, not a prediction): {shown}; listed in drift.json", file=sys.stderr)
    return window


def log_summary(window: Any, log_dir: Path) -> dict[str, Any]:
    """drift.json's account of what was read: the files and the damaged lines skipped."""
    lines = window.damaged_lines()
    return {"dir": str(log_dir), "files": [p.name for p in window.files], "damaged_lines": lines[:MAX_LISTED],
            "damaged_not_listed": max(0, len(lines) - MAX_LISTED)}


def resolve_image(path: Any, log_dir: Path) -> Path | None:
    if path is None or (isinstance(path, float) and np.isnan(path)) or not str(path):
        return None
    p = Path(str(path))
    if p.exists():
        return p
    alt = Path(log_dir) / "images" / p.name  # the service ran from another working directory
    return alt if alt.exists() else None


def copy_kept_images(df: Any, log_dir: Path, dest: Path) -> int:
    """Kept images of the window -> dest/<predicted class>/<file>: ready for labelling."""
    n = 0
    for path, label in zip(df["image_path"], df["predicted_label"]):
        src = resolve_image(path, log_dir)
        if src is None:
            continue
        target = dest / re.sub(r"[^\w.-]", "_", str(label)) / src.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        n += 1
    return n


def next_step(cfg: Any, window: str, incoming: Path, copied: int) -> str:
    curated = str(cfg.monitor.get("curated_root") or "data/curated")
    root = str(cfg.data.get("root", "data/raw/digits")) if "data" in cfg else "data/raw/digits"
    if copied:
        label = (f"  1. label: {copied} kept production images are in {incoming}/, sorted into folders by the "
                 "model's prediction; move each wrong one into its true class folder")
    else:
        label = (f"  1. label: no production images were kept in this window (start the service with "
                 f"VISIONOPS_KEEP_IMAGES=0.05 to keep 5%); put new labelled images in {curated}/<class>/")
    return "\n".join([
        "Next step: retrain on the drifted data (the registry gate decides whether it replaces the champion)",
        label,
        f"  2. merge: mkdir -p {curated} && cp -rn {root}/. {curated}/" + (f" && cp -rn {incoming}/. {curated}/" if copied else ""),
        f"  3. retrain: dvc exp run -n retrain-{window} -S data.root={curated}",
        "     (then `dvc exp show`, and `dvc exp apply` + commit the experiment that the register stage promoted)",
    ])


def run_job(cfg: Any) -> dict[str, Any]:
    """The drift job. Returns drift.json's content; raises MonitorError when it cannot do its work
    (drift.json and report.html are written before an email failure is raised)."""
    from monitor.reference import load_reference

    m = cfg.monitor
    since, until, name = resolve_window(m)
    out_dir = Path(m.reports_dir) / name
    ref_table, cal = load_reference(cfg)
    labels = list(cal["labels"])
    log_dir = Path(m.log_dir)
    window = read_window(log_dir, since, until)
    df = window.records
    in_window = len(df)
    others: dict[str, int] = {}
    if in_window:
        same = (df["model_name"].astype(str) == str(cal["model_name"])) & \
               (df["model_version"].astype(str) == str(cal["model_version"]))
        others = {f"{k[0]} v{k[1]}": int(v) for k, v in
                  df[~same].groupby(["model_name", "model_version"]).size().items()}
        df = df[same].reset_index(drop=True)
        if len(df) == 0:
            raise MonitorError(
                f"the window's {in_window} records are from {', '.join(others)}, but the reference is calibrated "
                f"for {cal['model_name']} v{cal['model_version']}: rebuild it for the serving model "
                "(`python -m monitor.reference`, or `dvc repro` of the reference stage)")
    matching = len(df)
    if matching > int(m.max_records):
        idx = np.sort(np.random.default_rng(int(m.seed)).choice(matching, int(m.max_records), replace=False))
        df = df.iloc[idx].reset_index(drop=True)
    kept = int(df["image_path"].notna().sum()) if "image_path" in df.columns and len(df) else 0
    result: dict[str, Any] = {
        "window": {"name": name, "since": _iso(since), "until": _iso(until)},
        "model": {"name": cal["model_name"], "version": str(cal["model_version"])},
        "verdict": VERDICT_INSUFFICIENT, "drift_detected": False,
        "records": {"in_window": in_window, "model_version": matching, "other_versions": others, "used": len(df),
                    "min_records": int(m.min_records), "reference": len(ref_table), "kept_images": kept,
                    "damaged_lines": len(window.damaged)},
        "log": log_summary(window, log_dir),
        "signals": None, "details": None, "quality": None,
        "calibration": {k: cal.get(k) for k in ("window_size", "false_alarm_rate", "correction", "signal_level",
                                                 "check_false_alarm_rate", "scheme")},
        "report": None, "incoming": None, "next_step": None, "note": None,
    }
    snapshot = None
    thumbs: list[tuple[bytes, str]] = []
    if len(df) < int(m.min_records):
        result["note"] = (f"{len(df)} records of {cal['model_name']} v{cal['model_version']} in the window, fewer "
                          f"than monitor.min_records={int(m.min_records)}: no verdict on drift")
    else:
        ref = features(ref_table, labels)
        try:
            cur = features(df, labels)
        except ValueError as exc:
            raise MonitorError(f"the prediction log {log_dir} is not in the format this monitor reads: {exc}") from exc
        scorer = Scorer(ref, len(labels), gamma=float(cal["gamma"]))
        v = verdict(scorer.score(cur), cal)
        result.update({"verdict": v["verdict"], "drift_detected": v["drift_detected"], "signals": v["signals"],
                       "details": details(ref, cur, labels),
                       "quality": {"current": quality_shares(df, m.quality), "reference": quality_shares(ref_table, m.quality)}})
        if v["drift_detected"]:
            incoming = Path(m.keep_drifted_to) / name
            copied = copy_kept_images(df, log_dir, incoming) if kept else 0
            result["incoming"] = str(incoming) if copied else None
            result["next_step"] = next_step(cfg, name, incoming, copied)
            thumbs = _thumbnails(df, ref, cur, scorer.gamma, log_dir, int(m.get("thumbnails", 8)))
        if m.get("html_report", True):
            snapshot = _report(cfg, ref_table, df, cal, result, name, until, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if snapshot is None and (out_dir / "report.html").exists():
        (out_dir / "report.html").unlink()  # an earlier run's report would contradict this drift.json
    (out_dir / "drift.json").write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    _print_summary(result, out_dir)
    ui_path = _add_to_workspace(cfg, result, snapshot, until) if m.get("workspace") else None
    _email(cfg, result, thumbs, ui_path)
    return result


def run_labels(result: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The Evidently run's metadata and tags: which window, model version and verdict it is."""
    tag = {VERDICT_DRIFT: "drift", VERDICT_INSUFFICIENT: "insufficient-data"}.get(result["verdict"], "no-drift")
    m, w = result["model"], result["window"]
    return {"model": f"{m['name']} v{m['version']}", "window": w["name"], "verdict": result["verdict"]}, ["visionops", tag]


def _add_to_workspace(cfg: Any, result: dict[str, Any], snapshot: Any, until: datetime) -> str | None:
    """The window's run in the Evidently workspace: the report, or the job's numbers alone when
    there is none, so the dashboard has every window. Returns the run's page path in the UI."""
    from monitor import report

    m, name = cfg.monitor, result["window"]["name"]
    try:
        if snapshot is None:
            metadata, tags = run_labels(result)
            snapshot = report.build_summary(result, name, until.replace(tzinfo=None), metadata, tags)
        project_id, run_id = report.add_to_workspace(snapshot, m.workspace, str(m.project), name)
    except Exception as exc:  # noqa: BLE001 - the workspace is a convenience; drift.json and the report are saved
        print(f"warning: could not add the run to the Evidently workspace {m.workspace}: {exc}", file=sys.stderr)
        return None
    print(f"Evidently workspace: run {name} in project {m.project!s} ({m.workspace}; `make evidently-ui` "
          "shows the drift over time)")
    return f"projects/{project_id}/reports/{run_id}"


def _report(cfg: Any, ref_table: Any, df: Any, cal: dict[str, Any], result: dict[str, Any], name: str,
            until: datetime, out_dir: Path) -> Any:
    """The Evidently report (report.html). Its failure is a warning: the verdict and the email
    do not depend on it. Evidently's MMD threshold is the calibrated one, unscaled (approximately:
    Evidently picks its own kernel bandwidth)."""
    from monitor import report

    m = cfg.monitor
    if str(m.embedding_method) not in ("mmd", "model", "distance", "ratio"):
        raise MonitorError(f"monitor.embedding_method must be mmd, model, distance or ratio; got {m.embedding_method!r}")
    n_ref, n_cur = len(ref_table), len(df)
    mmd_thr = max(0.0, float(cal["signals"]["embedding"]["threshold"]) * (n_ref + n_cur) / (n_ref * n_cur))
    try:
        snapshot = report.build(
            ref_table, df, m.quality, str(m.embedding_method), mmd_threshold=mmd_thr, name=name,
            timestamp=until.replace(tzinfo=None), metadata=run_labels(result)[0], tags=run_labels(result)[1],
            job=result)
        result["report"] = str(report.save_html(snapshot, out_dir / "report.html"))
        return snapshot
    except Exception as exc:  # noqa: BLE001 - Evidently internals; the verdict stands without the report
        print(f"warning: the Evidently report could not be built ({exc.__class__.__name__}: {exc})", file=sys.stderr)
        return None


def _thumbnails(df: Any, ref: Any, cur: Any, gamma: float, log_dir: Path, k: int) -> list[tuple[bytes, str, float]]:
    """The k most atypical kept images: (PNG thumbnail, predicted label, top-1 probability)."""
    from monitor.emailer import thumbnail

    if k <= 0 or "image_path" not in df.columns:
        return []
    score = atypicality(ref, cur, gamma)
    out = []
    for i in np.argsort(-score, kind="stable"):
        src = resolve_image(df["image_path"].iloc[i], log_dir)
        png = thumbnail(src) if src is not None else None
        if png:
            out.append((png, str(df["predicted_label"].iloc[i]), float(df["top_score"].iloc[i])))
        if len(out) >= k:
            break
    return out


def _print_summary(result: dict[str, Any], out_dir: Path) -> None:
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


def _email(cfg: Any, result: dict[str, Any], thumbs: list[tuple[bytes, str, float]],
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
                          thumbs, plot, f"{str(ui_url).rstrip('/')}/{ui_path}" if ui_url and ui_path else None)
    tag = "drift" if result["verdict"] == VERDICT_DRIFT else result["verdict"].replace(" ", "-")
    try:
        delivered = outbox.deliver(msg, e, f"{result['window']['name']}-{tag}")
        print("Email: " + delivered)
        return delivered
    except outbox.EmailError as exc:
        where = result["report"] or str(Path(cfg.monitor.reports_dir) / result["window"]["name"] / "drift.json")
        raise outbox.EmailError(f"{exc}; the report is saved at {where}") from exc


def main() -> None:
    from train.config import run_task

    run_task(run_job, "monitor")


if __name__ == "__main__":
    main()
