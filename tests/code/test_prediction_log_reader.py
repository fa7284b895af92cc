"""The prediction log's reader: a torn or foreign line is skipped and named, never fatal, and only
the files whose day overlaps the window are opened."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from visionops.prediction_log import log_files, read_log, scan_log

DAY = datetime(2026, 1, 1, tzinfo=UTC)


def _line(i: int, at: datetime) -> bytes:
    return orjson.dumps({"timestamp": at.isoformat(), "request_id": f"r{i:03d}", "top_score": 0.5},
                        option=orjson.OPT_APPEND_NEWLINE)


def test_a_torn_record_is_skipped_named_and_the_records_around_it_are_kept(tmp_path):
    path = tmp_path / "predictions-20260101-host-1.jsonl"
    lines = [_line(i, DAY + timedelta(minutes=i)) for i in range(6)]
    # What a failed write (full disk) left before the writer was fixed: half a record, then the
    # next record glued onto it; then a line of something else and an unterminated fragment.
    torn = lines[2][: len(lines[2]) // 2]
    path.write_bytes(b"".join([lines[0], lines[1], torn + lines[3], lines[4], b"[1, 2]\n",
                               b'{"request_id": "no-time"}\n', b"\n", lines[5], b'{"timestamp": "2026-01-01T00:0']))
    window = scan_log(tmp_path, DAY, DAY + timedelta(hours=1))
    assert list(window.records["request_id"]) == ["r000", "r001", "r004", "r005"]
    assert window.damaged_lines() == [f"{path}:{n}" for n in (3, 5, 6, 9)]
    assert window.files == [path]
    assert str(window.records["timestamp"].dt.tz) == "UTC"
    assert list(read_log(tmp_path)["request_id"]) == ["r000", "r001", "r004", "r005"]  # no window: every record


def test_only_files_whose_day_overlaps_the_window_are_read(tmp_path):
    def write(day: str, *lines: bytes) -> Path:
        path = tmp_path / f"predictions-{day}-host-{len(list(tmp_path.iterdir()))}.jsonl"
        path.write_bytes(b"".join(lines))
        return path

    old = write("20251201", b"not a record\n")  # another month: never opened, so never reported
    before = write("20251231", _line(0, DAY - timedelta(hours=2)))
    # answered just before midnight, written just after: the file of the next day holds it
    day = write("20260101", _line(1, DAY - timedelta(seconds=1)), _line(2, DAY + timedelta(hours=23)))
    after = write("20260102", _line(3, DAY + timedelta(days=1, hours=1)))
    undated = write("x", _line(4, DAY + timedelta(hours=1)))  # no day in the name: always read

    window = scan_log(tmp_path, DAY - timedelta(hours=3), DAY)  # the last 3 hours of Dec 31
    assert window.files == sorted([before, day, undated]) and not window.damaged
    assert list(window.records["request_id"]) == ["r000", "r001"]
    assert log_files(tmp_path, DAY, DAY + timedelta(days=1)) == sorted([day, after, undated])
    assert old in log_files(tmp_path) and scan_log(tmp_path).damaged == [(old, 1)]


def test_naive_times_are_utc_and_an_empty_window_is_an_empty_table(tmp_path):
    (tmp_path / "predictions-20260101-host-1.jsonl").write_bytes(
        orjson.dumps({"timestamp": "2026-01-01T00:30:00", "request_id": "naive"}) + b"\n")
    assert list(scan_log(tmp_path, DAY, DAY + timedelta(hours=1)).records["request_id"]) == ["naive"]
    assert scan_log(tmp_path, datetime(2026, 1, 1, 1, 0), datetime(2026, 1, 1, 2, 0)).records.empty
    assert scan_log(tmp_path / "missing-is-empty-too").records.empty
