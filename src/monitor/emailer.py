"""The drift email's content: the verdict in the subject; an HTML body readable at 600 px (the
per-signal table, a plot, thumbnails of the most atypical kept images with captions that say what
they show, the next step); the job's result attached as drift.json, the Evidently report linked
(attached only under `attach_max_bytes`: its self-contained HTML is several MB). Delivery is
`monitor.outbox`.
"""

from __future__ import annotations

import html
import io
import json
import os
import socket
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from monitor.drift import DESCRIPTIONS, QUALITY_FLAGS, SIGNALS, VERDICT_DRIFT, MonitorError

WIDTH = 600  # px: the body fits a phone or a narrow reading pane
PLOT_PX = 495  # the signal plot's width
THUMB_PX, THUMBS_PER_ROW = 96, 5  # 5 x (96 + 8) px fit in WIDTH
_FONT = "font-family:sans-serif;font-size:14px;line-height:1.4"


def should_send(when: str, verdict: str) -> bool:
    when = str(when).lower()
    if when not in ("drift", "always", "never"):
        raise MonitorError(f"monitor.email.on must be drift, always or never; got {when!r}")
    return when == "always" or (when == "drift" and verdict == VERDICT_DRIFT)


def subject(result: dict[str, Any]) -> str:
    m, w = result["model"], result["window"]
    return (f"[visionops] {result['verdict'].upper()}: {m['name']} v{m['version']}, "
            f"window {w['since']} to {w['until']}")


def signal_plot(signals: dict[str, Any]) -> bytes:
    """A small PNG: each signal's score as a multiple of its threshold (1 = the alarm line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s for s in SIGNALS if s in signals]
    ratios = [float(signals[s]["score"]) / float(signals[s]["threshold"]) if signals[s]["threshold"] else 0.0
              for s in names]
    fig, ax = plt.subplots(figsize=(PLOT_PX / 90, 2.2), dpi=90)
    ax.barh(names[::-1], ratios[::-1], color=["#c0392b" if signals[s]["drifted"] else "#2e86c1" for s in names[::-1]])
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("score / threshold (alarm above 1)")
    ax.set_xscale("symlog", linthresh=1.0)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def thumbnail(path: str | os.PathLike, size: int = 96) -> bytes | None:
    """A PNG thumbnail of a kept image (small images are scaled up with nearest neighbour)."""
    from PIL import Image

    from visionops.images import ImageDecodeError, decode_image

    try:
        img = decode_image(path)
    except (ImageDecodeError, OSError):
        return None
    scale = size / max(img.size)
    new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(new, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    th = "".join(f"<th style='text-align:left;padding:4px 6px;border-bottom:1px solid #999'>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='padding:4px 6px;vertical-align:top'>{c}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table style='border-collapse:collapse;width:100%;{_FONT}'><tr>{th}</tr>{body}</table>"


def _p(text: str, extra: str = "") -> str:
    return f"<p style='{_FONT};{extra}'>{text}</p>"


def _thumbnail_rows(cells: list[str]) -> str:
    """Thumbnails in rows of THUMBS_PER_ROW: one long row would be wider than a phone."""
    rows = [cells[i:i + THUMBS_PER_ROW] for i in range(0, len(cells), THUMBS_PER_ROW)]
    return "<table style='border-collapse:collapse'>" + "".join(f"<tr>{''.join(r)}</tr>" for r in rows) + "</table>"


def _report_note(report: Path | None, attach: bool, report_url: str | None) -> tuple[str, str]:
    """What the message says about the Evidently report: (plain text, HTML)."""
    if report is None or not Path(report).exists():
        return "no report for this window", "no report for this window"
    size = f"{Path(report).stat().st_size / 1e6:.1f} MB"
    where = f"{Path(report).resolve()} on {socket.gethostname()}"
    if attach:
        return f"attached (report.html, {size}); also saved at {where}", \
            f"attached (report.html, {size}); also saved at {html.escape(where)}"
    text = f"{where} ({size}, not attached)"
    if report_url:
        return f"{report_url} ; the file: {text}", (f"<a href='{html.escape(report_url)}'>open it in the Evidently UI</a> "
                                                      f"(the file: {html.escape(text)})")
    return (f"{text}; `make evidently-ui` there shows it beside the drift over time",
            f"{html.escape(text)}; <code>make evidently-ui</code> there shows it beside the drift over time")


def compose(result: dict[str, Any], sender: str, to: list[str], report: Path | None, attach_max_bytes: int,
            thumbnails: Sequence[tuple[bytes, str, float]] = (), plot: bytes | None = None,
            report_url: str | None = None) -> EmailMessage:
    """The message: plain text and HTML (table, plot and thumbnails inline by Content-ID), drift.json
    attached; the report attached when under `attach_max_bytes`, else linked. `thumbnails` are
    (PNG, predicted label, top-1 probability)."""
    msg = EmailMessage()
    msg["Subject"] = subject(result)
    msg["From"] = sender
    msg["To"] = ", ".join(to) if to else "undisclosed-recipients:;"
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain="visionops.local")
    m, w, rec = result["model"], result["window"], result["records"]
    drifted = result["verdict"] == VERDICT_DRIFT
    signals = result.get("signals") or {}
    far = (result.get("calibration") or {}).get("false_alarm_rate")
    rule = ("A signal drifts when its score is above its threshold, calibrated on drift-free windows of the "
            "reference" + (f" (at most {far:.0%} false alarms)" if far is not None else "") + ".")
    attach = report is not None and Path(report).exists() and Path(report).stat().st_size <= attach_max_bytes
    note_text, note_html = _report_note(report, attach, report_url)

    lines = [f"Verdict: {result['verdict']}", f"Model: {m['name']} v{m['version']}",
             f"Window: {w['since']} to {w['until']} ({rec['used']} records used, {rec['in_window']} in the window)"]
    for s in SIGNALS:
        if s in signals:
            v = signals[s]
            lines.append(f"  {s:16s} score {v['score']:.4g}  threshold {v['threshold']:.4g}  "
                         f"{'DRIFT' if v['drifted'] else 'ok'}")
    if signals:
        lines.append(rule)
    if result.get("note"):
        lines.append(result["note"])
    lines.append(f"Evidently report: {note_text}")
    lines.append("The job's result is attached as drift.json.")
    if result.get("next_step"):
        lines += ["", result["next_step"]]
    msg.set_content("\n".join(lines) + "\n")

    colour = "#c0392b" if drifted else "#1e8449"
    parts = [
        f"<h2 style='font-family:sans-serif;color:{colour};margin:0 0 8px'>{html.escape(result['verdict'])}</h2>",
        _p(f"Model <b>{html.escape(m['name'])} v{html.escape(str(m['version']))}</b>, window "
           f"{html.escape(w['since'])} to {html.escape(w['until'])}: {rec['used']} records tested "
           f"(reference: {rec['reference']})."),
    ]
    if signals:
        rows = [[html.escape(DESCRIPTIONS[s]), f"{signals[s]['score']:.4g}", f"{signals[s]['threshold']:.4g}",
                 "<b style='color:#c0392b'>drift</b>" if signals[s]["drifted"] else "ok"]
                for s in SIGNALS if s in signals]
        parts += [_table(rows, ["Signal", "Score", "Threshold", "Verdict"]), _p(html.escape(rule), "color:#555")]
    if result.get("note"):
        parts.append(_p(html.escape(result["note"])))
    cids: list[tuple[str, bytes]] = []
    if plot:
        cid = make_msgid(domain="visionops.local")
        cids.append((cid, plot))
        parts += [(f"<p style='margin:8px 0 0'><img src='cid:{cid[1:-1]}' width='{PLOT_PX}' "
                  "style='max-width:100%;height:auto' alt='scores relative to thresholds'></p>"),
                  _p("Each signal's score divided by its threshold: above 1 (the dashed line) is drift.",
                     "color:#555;margin-top:0")]
    quality = result.get("quality")
    if quality:
        qrows = [[k.replace("_", " "), f"{quality['current'][k]:.1%}", f"{quality['reference'][k]:.1%}"]
                 for k in QUALITY_FLAGS]
        parts += ["<h3 style='font-family:sans-serif'>Data quality (share of images)</h3>",
                  _table(qrows, ["", "window", "reference"])]
    if thumbnails:
        cells = []
        for png, label, score in thumbnails:
            cid = make_msgid(domain="visionops.local")
            cids.append((cid, png))
            cells.append(f"<td style='padding:4px;text-align:center;vertical-align:top;font-family:sans-serif;"
                         f"font-size:12px;width:{THUMB_PX}px'><img src='cid:{cid[1:-1]}' width='{THUMB_PX}' "
                         f"style='max-width:100%;height:auto' alt='kept image'><br>predicted "
                         f"<b>{html.escape(str(label))}</b><br>confidence {score:.2f}</td>")
        parts += ["<h3 style='font-family:sans-serif'>Most atypical kept images</h3>",
                  _p("The window's kept production images least like the reference (by the model's embedding), "
                     "each with the class the model predicted and its confidence (top-1 probability, 0 to 1).",
                     "color:#555"),
                  _thumbnail_rows(cells)]
    if result.get("next_step"):
        parts += ["<h3 style='font-family:sans-serif'>Next step</h3>",
                  ("<pre style='background:#f4f4f4;padding:8px;font-size:12px;white-space:pre-wrap;"
                  f"overflow-wrap:anywhere'>{html.escape(result['next_step'])}</pre>")]
    parts += [_p(f"Evidently report: {note_html}"), _p("The job's result is attached as drift.json.", "color:#555")]
    msg.add_alternative(
        f"<html><head><meta name='viewport' content='width=device-width'></head><body style='margin:0'>"
        f"<div style='max-width:{WIDTH}px;padding:8px;overflow-wrap:anywhere;{_FONT}'>" + "\n".join(parts)
        + "</div></body></html>", subtype="html")
    html_part = msg.get_payload()[1]
    for cid, png in cids:
        html_part.add_related(png, "image", "png", cid=cid)
    msg.add_attachment(json.dumps(result, indent=2).encode(), maintype="application", subtype="json",
                       filename="drift.json")
    if attach:
        msg.add_attachment(Path(report).read_bytes(), maintype="text", subtype="html", filename="report.html")
    return msg
