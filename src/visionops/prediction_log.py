"""The production prediction log: one JSON line per served prediction, append-only.

Each server process appends to its own file (<dir>/predictions-<YYYYMMDD>-<host>-<pid>.jsonl)
with one write per record under a lock, flushed at once: N answered requests leave exactly N
records, and a crash loses at most the record being written. `read_log` gives the monitor a
pandas table for a time window.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY


class PredictionLog:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._day = ""

    def _file(self) -> int:
        day = time.strftime("%Y%m%d", time.gmtime())
        if self._fd is None or day != self._day:
            if self._fd is not None:
                os.close(self._fd)
            name = f"predictions-{day}-{socket.gethostname()}-{os.getpid()}.jsonl"
            self._fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._day = day
        return self._fd

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        data = b"".join(orjson.dumps(r, option=_OPTIONS) for r in records)
        if not data:
            return
        with self._lock:
            fd = self._file()
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def read_log(directory: str | os.PathLike, since: datetime | None = None, until: datetime | None = None):
    """All records in [since, until) as a pandas DataFrame (empty when there are none)."""
    import pandas as pd

    files = sorted(Path(directory).glob("predictions-*.jsonl"))
    frames = []
    for f in files:
        if f.stat().st_size == 0:
            continue
        frames.append(pd.read_json(f, lines=True, convert_dates=False, dtype=False))
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601")
    if since is not None:
        df = df[df["timestamp"] >= pd.Timestamp(since)]
    if until is not None:
        df = df[df["timestamp"] < pd.Timestamp(until)]
    return df.sort_values(["timestamp", "request_id"]).reset_index(drop=True)
