"""The drift monitor's parts that need no model, store or server process: the email's attachment
rule, the synthetic corruptions, the traffic simulator (against a stub HTTP handler in a thread)
and how a window is named. The job itself, on a real champion: tests/integration/test_monitor.py;
the drift mathematics: test_drift_math.py."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from omegaconf import OmegaConf


def test_oversized_report_is_linked_not_attached(tmp_path):
    from monitor.emailer import compose

    report = tmp_path / "report.html"
    report.write_bytes(b"<html>" + b"x" * 2000 + b"</html>")
    result = {"verdict": "drift detected", "model": {"name": "m", "version": "3"},
              "window": {"since": "a", "until": "b"}, "records": {"used": 60, "in_window": 60, "reference": 100},
              "signals": None}
    msg = compose(result, "from@x", ["to@x"], report, attach_max_bytes=1000)
    assert [a.get_filename() for a in msg.iter_attachments()] == ["drift.json"]
    assert str(report.resolve()) in msg.get_body(("html",)).get_content()
    assert "m v3" in msg["Subject"] and msg["To"] == "to@x"
    small = compose(result, "from@x", [], report, attach_max_bytes=10_000)
    assert [a.get_filename() for a in small.iter_attachments()] == ["drift.json", "report.html"]
    assert small["To"] == "undisclosed-recipients:;"


def test_corruptions_are_deterministic_and_keep_the_image_kind():
    from PIL import Image

    from monitor.corruptions import CORRUPTIONS, corrupt

    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (8, 8), dtype=np.uint8))
    for name in CORRUPTIONS:
        for severity in (1, 5):
            a, b = corrupt(img, name, severity, seed=3), corrupt(img, name, severity, seed=3)
            assert a.size == img.size and a.mode == img.mode and np.array_equal(np.asarray(a), np.asarray(b)), name
            if name != "none":
                assert not np.array_equal(np.asarray(a), np.asarray(img)), name
    assert not np.array_equal(np.asarray(corrupt(img, "gaussian_noise", 3, seed=1)),
                              np.asarray(corrupt(img, "gaussian_noise", 3, seed=2)))


def test_simulator_sends_corrupted_pngs_and_counts_statuses(digits_small, tmp_path):
    from monitor import simulate

    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(body)
            ok = self.path == "/classify" and b'name="image"' in body and b"\x89PNG" in body
            self.send_response(200 if ok else 400)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code = simulate.main([f"url=http://127.0.0.1:{server.server_address[1]}", f"input={digits_small}", "n=12",
                              "rate=200", "corruption=blur", "severity=2", "seed=0", "concurrency=3"])
    finally:
        server.shutdown()
    assert code == 0 and len(received) == 12
    assert simulate.main(["url=http://127.0.0.1:1", f"input={digits_small}", "corruption=fog"]) == 2


def test_window_is_named_from_since_and_until():
    from monitor.drift import MonitorError
    from monitor.window import resolve_window

    m = OmegaConf.create({"since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00", "last": "24h"})
    since, until, name = resolve_window(m)
    assert name == "20260101T000000Z_20260102T000000Z" and until - since == timedelta(days=1)
    now = datetime(2026, 3, 1, 12, 30, 45, tzinfo=UTC)
    since, until, name = resolve_window(OmegaConf.create({"since": None, "until": None, "last": "90m"}), now=now)
    assert (since, until) == (datetime(2026, 3, 1, 11, 0, tzinfo=UTC), datetime(2026, 3, 1, 12, 30, tzinfo=UTC))
    with pytest.raises(MonitorError, match="not a period"):
        resolve_window(OmegaConf.create({"since": None, "until": None, "last": "yesterday"}))
