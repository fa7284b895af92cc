"""`python -m monitor`: the drift job (`monitor.job`) on one window of the production log.

    python -m monitor [--params params.yaml] [monitor.since=2026-01-01T00:00:00Z monitor.until=2026-01-02T00:00:00Z]
    python -m monitor monitor.last=24h monitor.email.on=always monitor.email.smtp_host=smtp.example.com

Exit 0 with or without drift; 2 with a one-line `error: ...` when the job could not do its work
(no reference, unreadable log, email undeliverable after retries: the report is saved first and
the message waits in the outbox).
"""

from __future__ import annotations


def main() -> None:
    from monitor.job import run_job
    from visionops.config import run_task

    run_task(run_job, "monitor")


if __name__ == "__main__":
    main()
