"""The window a drift job checks: its span and name from `monitor.since/until/last`, and its
records from the production log (only the files whose day overlaps it; damaged lines skipped,
named in a warning and in drift.json)."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from monitor.drift import MonitorError

_PERIOD = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}
MAX_LISTED = 100  # damaged lines named in drift.json; the rest are counted


class Window(NamedTuple):
    """[since, until) in UTC, and its name (the reports' folder, the Evidently run)."""

    since: datetime
    until: datetime
    name: str


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


def resolve_window(m: Any, now: datetime | None = None) -> Window:
    """since/until win; `last` fills in what is missing; until defaults to now (to the minute)."""
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
    return Window(since, until, f"{since:%Y%m%dT%H%M%SZ}_{until:%Y%m%dT%H%M%SZ}")


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def read_window(log_dir: Path, window: Window) -> Any:
    """The window's records (a `visionops.prediction_log.LogWindow`): a missing log is a warning
    and no records, an unreadable file a MonitorError, a damaged line a warning."""
    import pandas as pd

    from visionops.prediction_log import LogWindow, scan_log

    if not Path(log_dir).is_dir():
        print(f"warning: the prediction log {log_dir} does not exist (is monitor.log_dir the service's "
              "VISIONOPS_PREDICTION_LOG?)", file=sys.stderr)
        return LogWindow(pd.DataFrame(), [], [])
    try:
        log = scan_log(log_dir, window.since, window.until)
    except OSError as exc:
        raise MonitorError(f"cannot read the prediction log {log_dir}: {exc}") from exc
    if log.damaged:
        lines = log.damaged_lines()
        shown = ", ".join(lines[:5]) + (f" and {len(lines) - 5} more" if len(lines) > 5 else "")
        print(f"warning: skipped {len(lines)} damaged line{'s' * (len(lines) > 1)} of the prediction log "
              f"(a torn or foreign record, not a prediction): {shown}; listed in drift.json", file=sys.stderr)
    return log


def log_summary(log: Any, log_dir: Path) -> dict[str, Any]:
    """drift.json's account of what was read: the files and the damaged lines skipped."""
    lines = log.damaged_lines()
    return {"dir": str(log_dir), "files": [p.name for p in log.files], "damaged_lines": lines[:MAX_LISTED],
            "damaged_not_listed": max(0, len(lines) - MAX_LISTED)}
