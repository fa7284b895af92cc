"""The production prediction log: one JSON line per served prediction, append-only.

Each server process appends to its own file (<dir>/predictions-<YYYYMMDD>-<host>-<pid>.jsonl)
with one write per batch of records under a lock, flushed at once: N answered requests leave
exactly N records. A write either lands whole or not at all: when the disk is full (or the
process's file-size limit is hit) the file is cut back to where the write began and the caller
gets a PredictionLogError, so the request can be refused instead of answered unlogged; no torn
line is left for the monitor or for the next record to be glued onto. `read_log` gives the
monitor a pandas table for a time window. What a record holds: `visionops.records`.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY


class PredictionLogError(RuntimeError):
    """The log could not take a record (disk full, file-size limit, read-only or missing folder)."""


class PredictionLog:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._day = ""
        self._failed: int | None = None  # size of the write that last failed; None while writes succeed
        self._dangling = False  # a failed write could not be cut back: end the fragment before the next record

    @property
    def healthy(self) -> bool:
        """False from a failed write until a write (or `ready`'s probe) succeeds again."""
        return self._failed is None

    def _file(self) -> int:
        day = time.strftime("%Y%m%d", time.gmtime())
        if self._fd is None or day != self._day:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self.directory.mkdir(parents=True, exist_ok=True)  # it may have been removed under a running server
            name = f"predictions-{day}-{socket.gethostname()}-{os.getpid()}.jsonl"
            self._fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._day = day
            self._dangling = False
        return self._fd

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Append the records in one write, all of them or none. PredictionLogError if none."""
        data = b"".join(orjson.dumps(r, option=_OPTIONS) for r in records)
        if not data:
            return
        with self._lock:
            try:
                fd = self._file()
            except OSError as exc:
                self._failed = len(data)
                raise PredictionLogError(f"cannot open the prediction log in {self.directory}: {exc.strerror}") from exc
            if self._dangling:
                data = b"\n" + data
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            except OSError as exc:
                self._failed = len(data)
                self._cut(fd, start)
                raise PredictionLogError(f"cannot write the prediction log in {self.directory}: {exc.strerror}") from exc
            self._failed = None
            self._dangling = False

    def _cut(self, fd: int, size: int) -> None:
        """Undo a partial write (a full disk can take part of it). Shrinking a file needs no space."""
        try:
            os.ftruncate(fd, size)
        except OSError:
            self._dangling = True

    def ready(self) -> bool:
        """Whether the log can take records. After a failure, probes for room for the failed write
        (at the log's current size, in a scratch file, so the log itself is never touched)."""
        with self._lock:
            if self._failed is None:
                return True
            scratch = self.directory / f".probe-{os.getpid()}"
            try:
                size = os.fstat(self._file()).st_size
                fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    # Sparse: only the probe's own blocks are allocated, but the file-size limit
                    # and the free space are checked as for an append to the log.
                    probe = memoryview(b"\0" * self._failed)
                    while probe:  # a short write is followed by the one that fails
                        n = os.pwrite(fd, probe, size)
                        probe, size = probe[n:], size + n
                finally:
                    os.close(fd)
                    scratch.unlink(missing_ok=True)
            except OSError:
                return False
            self._failed = None
            return True

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


LOG_PATTERN = "predictions-*.jsonl"
_DAY = re.compile(r"^predictions-(\d{8})-")
# How long before its file's day a record can be stamped (a request answered just before
# midnight is written just after it); generous, it only widens which files are opened.
_WRITE_DELAY = timedelta(hours=1)


@dataclass
class LogWindow:
    """What `scan_log` read: the window's records, the files opened and the lines skipped."""

    records: Any  # a pandas DataFrame, sorted by timestamp
    files: list[Path]
    damaged: list[tuple[Path, int]]  # (file, 1-based line number) of each damaged line

    def damaged_lines(self) -> list[str]:
        """`file:line` of each damaged line, as an editor or `sed -n Np` takes it."""
        return [f"{path}:{number}" for path, number in self.damaged]


def log_files(directory: str | os.PathLike, since: datetime | None = None,
              until: datetime | None = None) -> list[Path]:
    """The log files that can hold records of [since, until), chosen by the UTC day in their names.

    A record is stamped when its prediction is made and written just after, into the file of the
    day it is written: a file of day D holds records from shortly before D 00:00 up to D+1 00:00.
    A file whose name carries no day is always read.
    """
    files = []
    for path in sorted(Path(directory).glob(LOG_PATTERN)):
        day = _file_day(path.name)
        if day is not None and since is not None and day + timedelta(days=1) <= since:
            continue
        if day is not None and until is not None and day - _WRITE_DELAY >= until:
            continue
        files.append(path)
    return files


def scan_log(directory: str | os.PathLike, since: datetime | None = None, until: datetime | None = None) -> LogWindow:
    """The records in [since, until) of the files that overlap the window, skipping damaged lines.

    A damaged line (a record torn by a failed write, or anything that is not a JSON object with an
    ISO 8601 `timestamp`) is counted and named, never fatal: one bad line must not hide a day of
    traffic from the monitor. Timestamps without an offset are UTC. OSError if a file cannot be read.
    """
    import pandas as pd

    since, until = _utc(since), _utc(until)
    files = log_files(directory, since, until)
    records: list[dict[str, Any]] = []
    damaged: list[tuple[Path, int]] = []
    for path in files:
        with open(path, "rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                    stamp = _utc(datetime.fromisoformat(record["timestamp"]))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    damaged.append((path, number))
                    continue
                if (since is None or stamp >= since) and (until is None or stamp < until):
                    records.append(record)
    df = pd.DataFrame(records)
    if len(df):
        df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601")
        df = df.sort_values([c for c in ("timestamp", "request_id") if c in df.columns]).reset_index(drop=True)
    return LogWindow(df, files, damaged)


def read_log(directory: str | os.PathLike, since: datetime | None = None, until: datetime | None = None):
    """All records in [since, until) as a pandas DataFrame (empty when there are none); damaged
    lines are skipped (`scan_log` names them)."""
    return scan_log(directory, since, until).records


def _file_day(name: str) -> datetime | None:
    match = _DAY.match(name)
    if not match:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        return None


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
