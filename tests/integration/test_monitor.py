"""The drift monitor for real: the tests' shared champion (tests/conftest.py, read only), its reference
built by the reference stage, production windows made by the serving runtime over clean and
corrupted test images (written with the service's PredictionLog), the job's verdicts, and the
email delivered to a real SMTP server (aiosmtpd), refused by a closed port, or left in an outbox."""

from __future__ import annotations

import email
import json
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from helpers import REPO, pipeline_cfg, run_cli
from serve import launch

pytestmark = pytest.mark.integration
CHAMPION = "models:/visionops-digits@champion"
START = datetime(2026, 1, 1, tzinfo=UTC)
WINDOW = ["monitor.since=2026-01-01T00:00:00Z", "monitor.until=2026-01-01T01:00:00Z"]
WINDOW_NAME = "20260101T000000Z_20260101T010000Z"


def _monitor_group() -> list[str]:
    """`+monitor=default` until conf/config.yaml lists the group in its defaults."""
    defaults = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "config.yaml")).get("defaults", [])
    return [] if any(isinstance(d, dict) and "monitor" in d for d in defaults) else ["+monitor=default"]


@pytest.fixture(scope="module")
def mon(champion, tmp_path_factory) -> dict:
    """The shared champion (read only: its store, version folder, images) and this module's own
    folder, where the reference and every report go."""
    return {"root": tmp_path_factory.mktemp("monitor"), "store": champion.store, "work": champion.work,
            "data": champion.data, "overrides": list(champion.overrides)}


def _cfg(mon: dict, tmp: Path, extra: list[str] = ()):
    c = mon
    return pipeline_cfg(c["store"], c["work"], c["data"], [
        *c["overrides"], *_monitor_group(),
        f"monitor.reference_dir={c['root'] / 'reference'}", f"monitor.reports_dir={tmp / 'reports'}",
        f"monitor.workspace={tmp / 'workspace'}", f"monitor.keep_drifted_to={tmp / 'incoming'}",
        f"monitor.email.outbox={tmp / 'outbox'}", "monitor.calibration_splits=2000", *extra])


@pytest.fixture(scope="module")
def reference(mon) -> dict:
    from monitor.reference import build_reference

    return build_reference(_cfg(mon, mon["root"]))


@pytest.fixture(scope="module")
def runtime(mon):
    from serve.runtime import ModelRuntime
    from serve.settings import Settings

    return ModelRuntime.load(Settings(model_uri=CHAMPION, tracking_uri=f"sqlite:///{mon['store'] / 'mlflow.db'}",
                                      log_dir=None))


@pytest.fixture(scope="module")
def test_images(mon) -> list[bytes]:
    """200 test-split images (never seen in training nor in the reference), in a seeded order."""
    from visionops.manifest import read_manifest

    recs = read_manifest(mon["store"] / "prepared" / "test.csv")
    order = np.random.default_rng(0).permutation(len(recs))[:200]
    return [Path(recs[i].path).read_bytes() for i in order]


def _write_window(rt, log_dir: Path, images: list[bytes], corruption: str = "none", severity: int = 5,
                  keep_every: int = 4, version: str | None = None, start: datetime = START) -> Path:
    """Serve `images` in-process exactly like the service does and log them inside the window that
    begins at `start`, in the file the service would have written that day."""
    from monitor.corruptions import corrupt_bytes
    from visionops.prediction_log import PredictionLog

    log_dir.mkdir(parents=True, exist_ok=True)
    before = set(log_dir.glob("predictions-*.jsonl"))
    log = PredictionLog(log_dir)
    uploads = [corrupt_bytes(raw, corruption, severity, seed=i) for i, raw in enumerate(images)]
    _, records = rt.run(uploads, [f"req-{start:%H%M}-{i:05d}" for i in range(len(uploads))])
    for i, (data, rec) in enumerate(zip(uploads, records)):
        rec["timestamp"] = (start + timedelta(seconds=5 * i)).isoformat()
        if version is not None:
            rec["model_version"] = version
        if keep_every and i % keep_every == 0:
            path = log_dir / "images" / f"req-{start:%H%M}-{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            rec["image_path"] = str(path)
    # one record outside the window, which the job must ignore
    records.append({**records[0], "request_id": f"late-{start:%H%M}", "timestamp": (start + timedelta(hours=2)).isoformat()})
    log.write(records)
    log.close()
    # The writer names its file by today's date; these records are of `start`'s day.
    for f in set(log_dir.glob("predictions-*.jsonl")) - before:
        day_file = f.with_name(f"predictions-{start:%Y%m%d}-" + f.name.split("-", 2)[2])
        if day_file == f:
            continue
        with open(day_file, "ab") as out:  # the same process may already have logged that day
            out.write(f.read_bytes())
        f.unlink()
    return log_dir


@pytest.fixture(scope="module")
def clean_log(runtime, test_images, tmp_path_factory) -> Path:
    return _write_window(runtime, tmp_path_factory.mktemp("log_clean"), test_images)


@pytest.fixture(scope="module")
def noisy_log(runtime, test_images, tmp_path_factory) -> Path:
    return _write_window(runtime, tmp_path_factory.mktemp("log_noise"), test_images, "gaussian_noise", 5)


def _params(cfg, path: Path) -> Path:
    OmegaConf.save(cfg, path, resolve=True)
    return path


def test_reference_is_what_serving_computes_and_thresholds_are_calibrated(reference, mon, runtime):
    from visionops.imagestats import STAT_COLUMNS
    from visionops.manifest import read_manifest

    ref_dir = mon["root"] / "reference"
    table = pd.read_parquet(ref_dir / "reference.parquet")
    val = read_manifest(mon["store"] / "prepared" / "val.csv")
    assert len(table) == len(val) and {*STAT_COLUMNS, "embedding", "predicted_label", "top_score"} <= set(table.columns)
    # one image through the serving runtime by hand: the reference row holds the same features
    i = 7
    (pred,), (rec,) = runtime.run([Path(val[i].path).read_bytes()], ["by-hand"])
    row = table.iloc[i]
    assert all(row[c] == pytest.approx(rec[c]) for c in STAT_COLUMNS)
    np.testing.assert_allclose(np.asarray(row["embedding"]), rec["embedding"], atol=1e-5)
    assert row["predicted_label"] == pred["label"] and row["top_score"] == pytest.approx(pred["score"])

    cal = json.loads((ref_dir / "calibration.json").read_text())
    assert cal == reference and cal["model_version"] == "1" and cal["window_size"] == 200
    assert set(cal["signals"]) == {"image_stats", "embedding", "predicted_class", "confidence"}
    assert all(v["threshold"] > v["null_median"] for v in cal["signals"].values())
    # the thresholds give about the configured false-alarm rate on fresh no-drift splits
    assert cal["check_false_alarm_rate"] <= 0.10


def test_clean_window_raises_no_alarm(mon, reference, clean_log, tmp_path):
    from monitor.job import run_job

    res = run_job(_cfg(mon, tmp_path, [f"monitor.log_dir={clean_log}", *WINDOW, "monitor.html_report=false",
                                            "monitor.email.on=drift"]))
    assert res["verdict"] == "no drift" and res["drift_detected"] is False, res["signals"]
    assert not any(v["drifted"] for v in res["signals"].values())
    assert res["records"]["in_window"] == 200 and res["records"]["used"] == 200  # the late record is outside
    assert json.loads((tmp_path / "reports" / WINDOW_NAME / "drift.json").read_text()) == res
    assert not (tmp_path / "outbox").exists() and not (tmp_path / "incoming").exists()


@pytest.mark.parametrize("corruption", ["gaussian_noise", "brightness"])
def test_strong_corruption_is_detected_deterministically(mon, reference, runtime, test_images, noisy_log,
                                                         corruption, tmp_path):
    from monitor.job import run_job

    log_dir = noisy_log if corruption == "gaussian_noise" else \
        _write_window(runtime, tmp_path / "log", test_images, corruption, 5)
    cfg = _cfg(mon, tmp_path, [f"monitor.log_dir={log_dir}", *WINDOW, "monitor.html_report=false"])
    res = run_job(cfg)
    assert res["drift_detected"] is True and res["verdict"] == "drift detected"
    assert sum(v["drifted"] for v in res["signals"].values()) >= 3, res["signals"]
    assert res["signals"]["embedding"]["drifted"] and res["signals"]["image_stats"]["drifted"]
    # the kept images (every 4th) are ready for labelling, sorted by predicted class
    copied = sorted((tmp_path / "incoming" / WINDOW_NAME).rglob("*.png"))
    assert len(copied) == 50 and res["incoming"] == str(tmp_path / "incoming" / WINDOW_NAME)
    assert "dvc exp run" in res["next_step"] and f"retrain-{WINDOW_NAME}" in res["next_step"]
    # no SMTP server configured: the email is an .eml in the outbox
    eml, = (tmp_path / "outbox").glob("*.eml")
    msg = email.message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert "DRIFT DETECTED" in msg["Subject"] and "v1" in msg["Subject"]
    # the same window again: the same drift.json, byte for byte
    first = (tmp_path / "reports" / WINDOW_NAME / "drift.json").read_bytes()
    run_job(cfg)
    assert (tmp_path / "reports" / WINDOW_NAME / "drift.json").read_bytes() == first


def test_too_few_records_is_insufficient_data_and_exits_0(mon, reference, runtime, test_images, tmp_path):
    log_dir = _write_window(runtime, tmp_path / "log", test_images[:10])
    params = _params(_cfg(mon, tmp_path, [f"monitor.log_dir={log_dir}", "monitor.email.on=drift"]),
                     tmp_path / "params.yaml")
    r = run_cli(["-m", "monitor", "--params", str(params), *WINDOW])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "insufficient data" in r.stdout
    res = json.loads((tmp_path / "reports" / WINDOW_NAME / "drift.json").read_text())
    assert res["verdict"] == "insufficient data" and res["drift_detected"] is False and res["records"]["used"] == 10
    assert not (tmp_path / "reports" / WINDOW_NAME / "report.html").exists()


def test_a_torn_line_is_skipped_and_named_and_the_job_still_gives_a_verdict(mon, reference, runtime, test_images,
                                                                           tmp_path):
    log_dir = _write_window(runtime, tmp_path / "log", test_images[:80])
    path, = log_dir.glob("predictions-*.jsonl")
    lines = path.read_bytes().splitlines(keepends=True)
    # What a failed write (full disk) left before the writer was fixed: half a record, then the
    # next record glued onto it. Both are lost; the other 78 must still be monitored.
    path.write_bytes(b"".join([*lines[:30], lines[30][: len(lines[30]) // 2], *lines[31:]]))
    (log_dir / "predictions-20251201-otherhost-7.jsonl").write_bytes(b"not a record\n")  # another day: not opened
    params = _params(_cfg(mon, tmp_path, [f"monitor.log_dir={log_dir}", "monitor.html_report=false"]),
                     tmp_path / "params.yaml")
    r = run_cli(["-m", "monitor", "--params", str(params), *WINDOW])
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "reports" / WINDOW_NAME / "drift.json").read_text())
    assert res["verdict"] != "insufficient data" and res["signals"], res
    assert res["records"]["in_window"] == 78 and res["records"]["damaged_lines"] == 1
    assert res["log"]["damaged_lines"] == [f"{path}:31"] and res["log"]["files"] == [path.name]
    assert "skipped 1 damaged line" in r.stderr and f"{path}:31" in r.stderr
    assert "1 damaged line skipped" in r.stdout


def test_log_of_another_model_version_fails_clearly(mon, reference, runtime, test_images, tmp_path):
    from monitor.drift import MonitorError
    from monitor.job import run_job

    log_dir = _write_window(runtime, tmp_path / "log", test_images[:60], version="2")
    with pytest.raises(MonitorError, match=r"calibrated for visionops-digits v1.*monitor.reference"):
        run_job(_cfg(mon, tmp_path, [f"monitor.log_dir={log_dir}", *WINDOW, "monitor.html_report=false"]))


class _Inbox:
    """A real SMTP server (aiosmtpd on 127.0.0.1) that keeps what it receives."""

    def __init__(self, port: int):
        from aiosmtpd.controller import Controller

        self.messages: list[tuple[list[str], bytes]] = []
        self.controller = Controller(self, hostname="127.0.0.1", port=port)

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return "250 OK"

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()


CLEAN_WINDOW = ["monitor.since=2025-12-31T23:00:00Z", "monitor.until=2026-01-01T00:30:00Z"]
UI_URL = "http://monitor.example:8000"


@pytest.fixture(scope="module")
def drift_runs(mon, reference, clean_log, noisy_log, tmp_path_factory) -> dict:
    """Two windows into one Evidently workspace: a clean one without an HTML report, then a noisy
    one with the full report and its email delivered to a real SMTP server."""
    from monitor.job import run_job

    tmp = tmp_path_factory.mktemp("runs")
    port = launch.free_port()
    clean = run_job(_cfg(mon, tmp, [f"monitor.log_dir={clean_log}", *CLEAN_WINDOW, "monitor.html_report=false"]))
    with _Inbox(port) as inbox:
        noisy = run_job(_cfg(mon, tmp, [
            f"monitor.log_dir={noisy_log}", *WINDOW, "monitor.email.smtp_host=127.0.0.1", f"monitor.email.smtp_port={port}",
            "monitor.email.to=[ops@example.com]", f"monitor.ui_url={UI_URL}"]))
    return {"tmp": tmp, "clean": clean, "noisy": noisy, "messages": inbox.messages}


def _rendered_widths(msg) -> tuple[int, int, list[str]]:
    """What a 600 px reading pane has to fit, from the markup: the widest fixed width of any element
    and of any table row (images at their intrinsic size unless a width is given), and the <pre>
    blocks' styles (a <pre> that does not wrap is as wide as its longest line)."""
    import io
    import re
    from html.parser import HTMLParser

    from PIL import Image

    sizes = {p["Content-ID"].strip("<>"): Image.open(io.BytesIO(p.get_payload(decode=True))).width
             for p in msg.walk() if p.get_content_type() == "image/png"}

    class Widths(HTMLParser):
        def __init__(self):
            super().__init__()
            self.widest, self.widest_row, self.row, self.cell, self.pres = 0, 0, None, 0, []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            style = a.get("style") or ""
            px = [int(v) for v in re.findall(r"(?<![-\w])width:\s*(\d+)px", style)]
            if a.get("width", "").isdigit():
                px.append(int(a["width"]))
            elif tag == "img" and a.get("src", "").startswith("cid:"):
                px.append(sizes[a["src"][4:]])
            width = max(px, default=0)
            self.widest = max(self.widest, width)
            if tag == "tr":
                self.row = 0
            elif tag == "td":
                self.cell = 8  # its padding
            if self.row is not None and tag != "td":
                self.cell = max(self.cell, width + 8)
            if tag == "pre":
                self.pres.append(style)

        def handle_endtag(self, tag):
            if tag == "td" and self.row is not None:
                self.row += self.cell
            elif tag == "tr" and self.row is not None:
                self.widest_row, self.row = max(self.widest_row, self.row), None

    parser = Widths()
    parser.feed(msg.get_body(("html",)).get_content())
    return parser.widest, parser.widest_row, parser.pres


def test_drift_email_is_small_readable_at_600px_and_explains_itself(drift_runs):
    res = drift_runs["noisy"]
    assert res["drift_detected"]
    (rcpt, raw), = drift_runs["messages"]
    assert rcpt == ["ops@example.com"]
    assert len(raw) < 300_000, f"{len(raw)} bytes"  # a mailbox takes it (was ~6 MB with the report attached)
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["To"] == "ops@example.com" and "v1" in msg["Subject"] and "DRIFT DETECTED" in msg["Subject"]
    body = msg.get_body(("html",)).get_content()
    assert "<table" in body and "image statistics" in body and "dvc exp run" in body
    inline = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert len(inline) >= 2 and all(f"cid:{p['Content-ID'].strip('<>')}" in body for p in inline)
    # the thumbnails' captions say what the numbers are
    assert "predicted <b>" in body and "confidence 0." in body and "top-1 probability" in body
    assert "above its threshold" in body
    widest, widest_row, pres = _rendered_widths(msg)
    assert widest <= 600 and widest_row <= 600, (widest, widest_row)
    assert pres and all("white-space:pre-wrap" in s for s in pres)
    # the job's result attached; the several-MB report linked (in the Evidently UI) and on disk
    attachment, = msg.iter_attachments()
    assert attachment.get_filename() == "drift.json" and json.loads(attachment.get_content()) == res
    report = Path(res["report"])
    assert report == drift_runs["tmp"] / "reports" / WINDOW_NAME / "report.html" and report.stat().st_size > 1_000_000
    assert str(report) in body and f"{UI_URL}/projects/" in body


def test_the_email_fits_600px_in_a_browser(drift_runs, tmp_path):
    """Headless Chromium lays the HTML body out 600 px wide: nothing sticks out sideways."""
    import base64
    import re
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs Debian's chromium (apt-get install -y chromium) to lay the email out")
    msg = email.message_from_bytes(drift_runs["messages"][0][1], policy=policy.default)
    page = msg.get_body(("html",)).get_content()
    for p in msg.walk():
        if p.get_content_type() == "image/png":
            uri = "data:image/png;base64," + base64.b64encode(p.get_payload(decode=True)).decode()
            page = page.replace(f"cid:{p['Content-ID'].strip('<>')}", uri)
    page = page.replace("</body>", "<script>window.onload = () => document.body.setAttribute("
                        "'data-scroll-width', document.documentElement.scrollWidth)</script></body>")
    (tmp_path / "email.html").write_text(page)
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                          "--window-size=600,2000", "--virtual-time-budget=5000", "--dump-dom",
                          (tmp_path / "email.html").as_uri()], check=False, capture_output=True, text=True,
                         timeout=120)
    width = re.search(r'data-scroll-width="(\d+)"', out.stdout)
    assert width, out.stderr[-2000:]
    assert int(width.group(1)) <= 600


def test_evidently_ui_plots_every_windows_scores_against_thresholds(drift_runs, tmp_path):
    import httpx

    from monitor.dashboard import ensure_panels
    from monitor.drift import DESCRIPTIONS, SIGNALS

    ws_dir = drift_runs["tmp"] / "workspace"
    clean, noisy = drift_runs["clean"], drift_runs["noisy"]
    port = launch.free_port()
    proc = launch.start([launch.BIN.joinpath("evidently").as_posix(), "ui", "--workspace", str(ws_dir),
                         "--host", "127.0.0.1", "--port", str(port)], f"http://127.0.0.1:{port}/api/version",
                        tmp_path / "evidently.log")
    try:
        api = f"http://127.0.0.1:{port}/api"
        project, = [p for p in httpx.get(f"{api}/projects").json() if p["name"] == "visionops"]
        dashboard = httpx.get(f"{api}/v2/dashboards/{project['id']}").json()
        titles = [p["title"] for p in dashboard["panels"]]
        series = {}
        for panel in dashboard["panels"]:  # what the page asks for, panel by panel
            body = {"series_filter": [{"metric": v["metric"], "tags": v["tags"], "metadata": v["metadata"],
                                       "metric_labels": v["metric_labels"]} for v in panel["values"]]}
            r = httpx.post(f"{api}/v2/snapshots/{project['id']}/data_series_batch", json=body, timeout=30)
            assert r.status_code in (200, 201), r.text
            data = r.json()
            assert [s["metadata"]["window"] for s in data["sources"]] == [clean["window"]["name"], WINDOW_NAME]
            series.update({(panel["title"], s["params"]["key"]): s["values"] for s in data["series"]})
    finally:
        launch.stop(proc)
    assert titles[:3] == ["Verdict per window", "Records per window", "All signals: score / threshold"]
    assert len(titles) == 7  # two runs, one set of panels
    assert series[("Verdict per window", "drift")] == [0.0, 1.0]
    assert series[("Records per window", "records/used")] == [200.0, 200.0]
    for s in SIGNALS:  # each signal's panel: its score in both windows, against its calibrated threshold
        scores, thresholds = ([run["signals"][s][k] for run in (clean, noisy)] for k in ("score", "threshold"))
        assert series[(DESCRIPTIONS[s], f"{s}/score")] == pytest.approx(scores)
        assert series[(DESCRIPTIONS[s], f"{s}/threshold")] == pytest.approx(thresholds)
    # creating the panels again changes nothing
    from evidently.ui.workspace import Workspace

    assert ensure_panels(Workspace.create(str(ws_dir)), project["id"]) is False
    # the report itself says which window, model version and verdict it belongs to
    html = Path(noisy["report"]).read_text()
    assert "2026-01-01T00:00:00Z to 2026-01-01T01:00:00Z" in html and "visionops-digits v1" in html
    assert '"value": "drift detected", "label": "verdict"' in html


def test_unreachable_mail_server_keeps_the_message_and_the_outbox_sends_it_later(mon, reference, noisy_log,
                                                                                   tmp_path):
    port = launch.free_port()  # nothing listens there
    params = _params(_cfg(mon, tmp_path, [f"monitor.log_dir={noisy_log}", "monitor.workspace=null",
                                               "monitor.email.smtp_host=127.0.0.1", f"monitor.email.smtp_port={port}",
                                               "monitor.email.to=[ops@example.com]", "monitor.email.retries=2",
                                               "monitor.email.backoff_s=0.05", "monitor.email.timeout_s=2"]),
                     tmp_path / "params.yaml")
    r = run_cli(["-m", "monitor", "--params", str(params), *WINDOW], env={"VISIONOPS_SMTP_PASSWORD": "not-used"})
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port} after 3 attempts" in errors[0], r.stderr[-2000:]
    assert r.stderr.count("retrying in") == 2
    out = tmp_path / "reports" / WINDOW_NAME
    assert (out / "report.html").stat().st_size > 100_000 and str(out / "report.html") in errors[0]
    assert json.loads((out / "drift.json").read_text())["drift_detected"] is True
    # the message waits in the outbox ...
    waiting, = (tmp_path / "outbox" / "pending").glob("*.eml")
    assert str(waiting) in errors[0] and "python -m monitor.outbox" in errors[0]
    # ... and is delivered once the server is back
    with _Inbox(port) as inbox:
        r = run_cli(["-m", "monitor.outbox", "--params", str(params)])
    assert r.returncode == 0, r.stderr[-3000:]
    (rcpt, raw), = inbox.messages
    assert rcpt == ["ops@example.com"] and b"DRIFT DETECTED" in raw
    assert not waiting.exists() and list((tmp_path / "outbox" / "sent").glob("*.eml"))
    assert "1 message(s) sent, none waiting" in r.stdout
