"""The drift email: verdict in the subject, the per-signal table, a plot and thumbnails inline,
the Evidently report attached.

SMTP host, port, TLS and user come from `monitor.email`; the password only from the environment
variable named by `monitor.email.password_env` (it is never printed or written anywhere). With no
`smtp_host` the message is written as an .eml file into `monitor.email.outbox` instead. A server
that cannot be reached is retried `retries` times with exponential backoff, then EmailError.
"""

from __future__ import annotations

import html
import io
import os
import smtplib
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from monitor.drift import DESCRIPTIONS, QUALITY_FLAGS, SIGNALS, VERDICT_DRIFT, MonitorError


class EmailError(MonitorError):
    """The email could not be delivered (the report is saved regardless)."""


def recipients(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


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
    fig, ax = plt.subplots(figsize=(5.5, 2.2), dpi=90)
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
    th = "".join(f"<th style='text-align:left;padding:4px 10px;border-bottom:1px solid #999'>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='padding:4px 10px'>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table style='border-collapse:collapse;font-family:sans-serif;font-size:14px'><tr>{th}</tr>{body}</table>"


def compose(result: dict[str, Any], sender: str, to: list[str], report: Path | None, attach_max_bytes: int,
            thumbnails: Sequence[tuple[bytes, str]] = (), plot: bytes | None = None) -> EmailMessage:
    """The message: plain text and HTML (table, plot and thumbnails inline by Content-ID), report attached."""
    msg = EmailMessage()
    msg["Subject"] = subject(result)
    msg["From"] = sender
    if to:
        msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain="visionops.local")
    m, w, rec = result["model"], result["window"], result["records"]
    drifted = result["verdict"] == VERDICT_DRIFT
    signals = result.get("signals") or {}

    attach = None
    report_note = "no report for this window"
    if report is not None and Path(report).exists():
        size = Path(report).stat().st_size
        if size <= attach_max_bytes:
            attach = Path(report).read_bytes()
            report_note = f"attached (report.html, {size / 1e6:.1f} MB); also saved at {report}"
        else:
            report_note = (f"not attached ({size / 1e6:.1f} MB is over the {attach_max_bytes / 1e6:.1f} MB cap): "
                           f"open {Path(report).resolve()}")

    lines = [f"Verdict: {result['verdict']}", f"Model: {m['name']} v{m['version']}",
             f"Window: {w['since']} to {w['until']} ({rec['used']} records used, {rec['in_window']} in the window)"]
    for s in SIGNALS:
        if s in signals:
            v = signals[s]
            lines.append(f"  {s:16s} score {v['score']:.4g}  threshold {v['threshold']:.4g}  "
                         f"{'DRIFT' if v['drifted'] else 'ok'}")
    if result.get("note"):
        lines.append(result["note"])
    lines.append(f"Report: {report_note}")
    if result.get("next_step"):
        lines += ["", result["next_step"]]
    msg.set_content("\n".join(lines) + "\n")

    colour = "#c0392b" if drifted else "#1e8449"
    rows = [[html.escape(DESCRIPTIONS[s]), f"{signals[s]['score']:.4g}", f"{signals[s]['threshold']:.4g}",
             "<b style='color:#c0392b'>drift</b>" if signals[s]["drifted"] else "ok"] for s in SIGNALS if s in signals]
    parts = [
        f"<h2 style='font-family:sans-serif;color:{colour}'>{html.escape(result['verdict'])}</h2>",
        (f"<p style='font-family:sans-serif'>Model <b>{html.escape(m['name'])} v{html.escape(str(m['version']))}</b>, "
         f"window {html.escape(w['since'])} to {html.escape(w['until'])}: {rec['used']} records "
         f"(reference: {rec['reference']}).</p>"),
    ]
    if rows:
        parts.append(_table(rows, ["Signal", "Score", "Threshold", "Verdict"]))
    if result.get("note"):
        parts.append(f"<p style='font-family:sans-serif'>{html.escape(result['note'])}</p>")
    cids: list[tuple[str, bytes]] = []
    if plot:
        cid = make_msgid(domain="visionops.local")
        cids.append((cid, plot))
        parts.append(f"<p><img src='cid:{cid[1:-1]}' alt='scores relative to thresholds'></p>")
    quality = result.get("quality")
    if quality:
        qrows = [[k.replace("_", " "), f"{quality['current'][k]:.1%}", f"{quality['reference'][k]:.1%}"]
                 for k in QUALITY_FLAGS]
        parts += ["<h3 style='font-family:sans-serif'>Data quality (share of images)</h3>",
                  _table(qrows, ["", "window", "reference"])]
    if thumbnails:
        cells = []
        for png, caption in thumbnails:
            cid = make_msgid(domain="visionops.local")
            cids.append((cid, png))
            cells.append(f"<td style='padding:4px;text-align:center;font-family:sans-serif;font-size:12px'>"
                         f"<img src='cid:{cid[1:-1]}'><br>{html.escape(caption)}</td>")
        parts += ["<h3 style='font-family:sans-serif'>Most atypical kept images</h3>",
                  "<table><tr>" + "".join(cells) + "</tr></table>"]
    if result.get("next_step"):
        parts += ["<h3 style='font-family:sans-serif'>Next step</h3>",
                  f"<pre style='background:#f4f4f4;padding:8px'>{html.escape(result['next_step'])}</pre>"]
    parts.append(f"<p style='font-family:sans-serif'>Evidently report: {html.escape(report_note)}</p>")
    msg.add_alternative("<html><body>" + "\n".join(parts) + "</body></html>", subtype="html")
    html_part = msg.get_payload()[1]
    for cid, png in cids:
        html_part.add_related(png, "image", "png", cid=cid)
    if attach is not None:
        msg.add_attachment(attach, maintype="text", subtype="html", filename="report.html")
    return msg


def write_eml(msg: EmailMessage, outbox: Path, name: str) -> Path:
    outbox = Path(outbox)
    outbox.mkdir(parents=True, exist_ok=True)
    path = outbox / f"{name}.eml"
    path.write_bytes(bytes(msg))
    return path


_PERMANENT = (smtplib.SMTPAuthenticationError, smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused,
              smtplib.SMTPNotSupportedError)


def _permanent(exc: BaseException) -> bool:
    if isinstance(exc, _PERMANENT):
        return True
    code = getattr(exc, "smtp_code", None)
    return isinstance(code, int) and 500 <= code < 600


def send(msg: EmailMessage, e: Any, to: list[str], log: Callable[[str], None] | None = None,
         sleep: Callable[[float], None] = time.sleep) -> None:
    """Deliver over SMTP; retry transient failures `e.retries` times with exponential backoff."""
    log = log or (lambda s: print(s, file=sys.stderr))
    host, port = str(e.smtp_host), int(e.smtp_port)
    tls = str(e.get("tls", False)).lower()
    if tls in ("true", "1", "yes"):
        tls = "starttls"
    if tls not in ("false", "0", "no", "none", "starttls", "ssl"):
        raise EmailError(f"monitor.email.tls must be false, starttls or ssl; got {e.get('tls')!r}")
    if not to:
        raise EmailError("monitor.email.to is empty: set the recipients (monitor.email.to=[ops@example.com])")
    user = e.get("user")
    password = None
    if user:
        password = os.environ.get(str(e.password_env))
        if not password:
            raise EmailError(f"monitor.email.user is set but the environment variable {e.password_env} "
                             "(the SMTP password) is empty")
    attempts = 1 + max(0, int(e.retries))
    last: BaseException | None = None
    for attempt in range(1, attempts + 1):
        try:
            cls = smtplib.SMTP_SSL if tls == "ssl" else smtplib.SMTP
            kw = {"context": ssl.create_default_context()} if tls == "ssl" else {}
            with cls(host, port, timeout=float(e.timeout_s), **kw) as smtp:
                if tls == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if user:
                    smtp.login(str(user), password)
                smtp.send_message(msg, to_addrs=to)
            return
        except (OSError, smtplib.SMTPException) as exc:  # refused, timeout, DNS, 4xx/5xx replies
            last = exc
            reason = f"{exc.__class__.__name__}: {str(exc) or 'no detail'}"
            if _permanent(exc):
                raise EmailError(f"SMTP server {host}:{port} refused the drift email ({reason})") from exc
            if attempt < attempts:
                delay = float(e.backoff_s) * 2 ** (attempt - 1)
                log(f"email: attempt {attempt}/{attempts} to {host}:{port} failed ({reason}); retrying in {delay:g}s")
                sleep(delay)
    raise EmailError(f"could not send the drift email via {host}:{port} after {attempts} attempts "
                     f"({last.__class__.__name__}: {str(last) or 'no detail'})") from last


def deliver(msg: EmailMessage, e: Any, name: str, log: Callable[[str], None] | None = None) -> str:
    """Send (smtp_host set) or write to the outbox; returns what happened, for the job's output."""
    to = recipients(e.get("to"))
    if not e.get("smtp_host"):
        path = write_eml(msg, Path(e.outbox), name)
        return f"no SMTP server configured (monitor.email.smtp_host): message written to {path}"
    send(msg, e, to, log)
    return f"sent to {', '.join(to)} via {e.smtp_host}:{e.smtp_port}"
