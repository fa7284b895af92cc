"""The production prediction log: one JSON line per served prediction, append-only.

Each server process appends to its own file (<dir>/predictions-<YYYYMMDD>-<host>-<pid>.jsonl)
with one write per batch of records under a lock, flushed at once: N answered requests leave
exactly N records. A write either lands whole or not at all: when the disk is full (or the
process's file-size limit is hit) the file is cut back to where the write began and the caller
gets a PredictionLogError, so the request can be refused instead of answered unlogged; no torn
line is left for the monitor or for the next record to be glued onto. `read_log` gives the
monitor a pandas table for a time window.
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
