"""Delivering the drift email: SMTP with retries, the outbox, and the retry of what could not be sent.

    python -m monitor.outbox [--params params.yaml] [monitor.email.smtp_host=...]   send what waits

SMTP host, port, TLS and user come from `monitor.email`; the password only from the environment
variable named by `monitor.email.password_env` (never printed or written anywhere). With no
`smtp_host` the message is written as an .eml file into `monitor.email.outbox` instead. A server
that cannot be reached is retried `retries` times with exponential backoff; a message it still
did not take waits in `<outbox>/pending/` and is sent, oldest first, by the next drift job (before
its own email) or by `python -m monitor.outbox`; sent ones move to `<outbox>/sent/`.
"""

from __future__ import annotations

import email
import os
import smtplib
import ssl
import sys
import time
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from monitor.drift import MonitorError

PENDING, SENT = "pending", "sent"


class EmailError(MonitorError):
    """The email could not be delivered (the report is saved and the message kept regardless)."""


def recipients(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


def write_eml(msg: EmailMessage, folder: Path, name: str) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.eml"
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
         sleep: Callable[[float], None] = time.sleep, retries: int | None = None) -> None:
    """Deliver over SMTP; retry transient failures (`e.retries` times unless `retries` is given)
    with exponential backoff. EmailError when the server did not take it."""
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
    attempts = 1 + max(0, int(e.retries if retries is None else retries))
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
    """Send (smtp_host set) or write to the outbox; returns what happened, for the job's output.
    A message the server did not take is kept in the outbox's pending folder (EmailError says where)."""
    if not e.get("smtp_host"):
        path = write_eml(msg, Path(e.outbox), name)
        return f"no SMTP server configured (monitor.email.smtp_host): message written to {path}"
    to = recipients(e.get("to"))
    try:
        send(msg, e, to, log)
    except EmailError as exc:
        path = write_eml(msg, Path(e.outbox) / PENDING, name)
        raise EmailError(f"{exc}; the message waits in {path}: the next drift job or `python -m monitor.outbox` "
                         "sends it") from exc
    return f"sent to {', '.join(to)} via {e.smtp_host}:{e.smtp_port}"


def pending(e: Any) -> list[Path]:
    return sorted((Path(e.outbox) / PENDING).glob("*.eml"), key=lambda p: (p.stat().st_mtime, p.name))


def send_pending(e: Any, log: Callable[[str], None] | None = None) -> tuple[int, int]:
    """Send the messages waiting in the outbox, oldest first, each once (no backoff: the server is
    either back or not); stop at the first the server does not take. Returns (sent, still waiting)."""
    log = log or print
    waiting = pending(e) if e.get("smtp_host") else []
    sent = 0
    for path in waiting:
        msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        to = [addr for _, addr in getaddresses(msg.get_all("To", []))] or recipients(e.get("to"))
        try:
            send(msg, e, to, log, retries=0)
        except EmailError as exc:
            log(f"email: {len(waiting) - sent} message(s) still wait in {path.parent} ({exc})")
            break
        done = Path(e.outbox) / SENT / path.name
        done.parent.mkdir(parents=True, exist_ok=True)
        path.replace(done)
        sent += 1
        log(f"Email: sent the waiting {path.name} to {', '.join(to)} via {e.smtp_host}:{e.smtp_port}")
    return sent, len(waiting) - sent


def flush(cfg: Any) -> dict[str, int]:
    """`python -m monitor.outbox`: send what waits in the outbox. EmailError if some still waits."""
    e = cfg.monitor.email
    if not e.get("smtp_host"):
        raise EmailError("monitor.email.smtp_host is not set: there is no server to send the outbox to")
    sent, left = send_pending(e)
    if left:
        raise EmailError(f"{left} message(s) still wait in {Path(e.outbox) / PENDING}; try again later")
    print(f"Outbox: {sent} message(s) sent, none waiting")
    return {"sent": sent, "waiting": left}


def main() -> None:
    from visionops.config import run_task

    run_task(flush, "monitor")


if __name__ == "__main__":
    main()
