"""Fixes to BentoML 1.4.39 that serving needs, applied when `serve.service` is imported.
`PATCHED` names the BentoML code each one replaces or wraps; a unit test pins its source, so an
upgrade that changes it fails the test until the fix is checked again.

1. Request timer. BentoML's TimeoutMiddleware (`traffic.timeout`) arms
`loop.call_later(timeout, ...)` for every request and never cancels it: each request leaves a
live timer, a future and its context (with the request's tracing span) for `timeout` seconds. At
1,000 requests/s and a 30 s timeout that is 30,000 pending timers per worker, every one of them
walked by Python's garbage collector: 30-90 ms pauses of the event loop (p99 at concurrency 32
went from ~25 ms to ~150 ms) and the memory with them. The replacement keeps the behaviour (a 504
JSON answer when the response has not started within the timeout, no limit once it has) with
`asyncio.timeout`, whose timer is cancelled as the request ends, and without the extra task per
request.

2. Metric labels. BentoML's RunnerTrafficMetricsMiddleware labels `/metrics` series by the raw
request path, so every distinct unknown path adds series for good (2,000 requests to made-up
paths grew `/metrics` from 83 KB to 7.5 MB). The wrapper hands it one label, `UNKNOWN_PATH`, for
any path the server has no route for (and `/static_content` for BentoML's static files), and
the real path to everything behind it.

3. Client errors in the log. BentoML logs every error its API routes answer, a client's bad JSON
(400) included, as an ERROR with a full traceback. A filter on its logger turns the client's
(4xx) ones into one INFO line naming the route and the problem.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from _bentoml_impl.server.app import ServiceAppFactory
from bentoml._internal.server import http_app
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from bentoml._internal.server.http.traffic import TimeoutMiddleware

PATCHED = {"TimeoutMiddleware.__call__": TimeoutMiddleware.__call__,
           "RunnerTrafficMetricsMiddleware.__call__": RunnerTrafficMetricsMiddleware.__call__,
           # read, not replaced: which errors it logs, and how (fix 3)
           "ServiceAppFactory.api_endpoint_wrapper": ServiceAppFactory.api_endpoint_wrapper,
           "http_app.log_exception": http_app.log_exception}
UNKNOWN_PATH = "/{unknown}"
# The routes BentoML itself adds to every service (besides the service's API routes).
BENTOML_PATHS = frozenset({"/", "/docs.json", "/schema.json", "/livez", "/readyz", "/healthz", "/metrics"})
_REAL_PATH = "visionops.path"


async def _timeout_call(self: TimeoutMiddleware, scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    started = False
    deadline = asyncio.timeout(self.timeout)

    async def _send(message: dict) -> None:
        nonlocal started
        if not started:
            started = True
            deadline.reschedule(None)  # the response has started: no limit on the rest of it
        await send(message)

    try:
        async with deadline:
            await self.app(scope, receive, _send)
    except TimeoutError:
        if started or not deadline.expired():
            raise
        from starlette.responses import JSONResponse

        await JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                           status_code=504)(scope, receive, send)


@functools.cache
def _known_paths() -> frozenset[str]:
    from bentoml._internal.context import server_context

    return BENTOML_PATHS | frozenset(server_context.service_routes or ())


def metric_label(path: str) -> str:
    """The `endpoint` label a request's path is counted under."""
    if path in _known_paths():
        return path
    return "/static_content" if path.startswith("/static_content/") else UNKNOWN_PATH


class _RealPath:
    """Behind the metrics middleware: give the app the request's real path back."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if _REAL_PATH in scope:
            scope = dict(scope)
            scope["path"] = scope.pop(_REAL_PATH)
        await self.app(scope, receive, send)


async def _metrics_call(self: RunnerTrafficMetricsMiddleware, scope: dict, receive: Any, send: Any) -> None:
    original = PATCHED["RunnerTrafficMetricsMiddleware.__call__"]
    path = scope.get("path", "")
    if scope["type"] not in ("http", "websocket") or (label := metric_label(path)) == path:
        return await original(self, scope, receive, send)
    if not isinstance(self.app, _RealPath):
        self.app = _RealPath(self.app)
    await original(self, {**scope, "path": label, _REAL_PATH: path}, receive, send)


class ClientErrorsInOneLine(logging.Filter):
    """On BentoML's route-error logger: a client error (pydantic's ValidationError, a BentoML
    exception with a 4xx code) becomes one INFO line; server errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _is_client_error(exc):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            record.msg = f"{record.msg}: %s"
            record.args = (*(record.args or ()), first)  # type: ignore[misc]
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _is_client_error(exc: BaseException) -> bool:
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return True
    return isinstance(exc, BentoMLException) and 400 <= exc.error_code.value < 500


def apply() -> None:
    TimeoutMiddleware.__call__ = _timeout_call  # type: ignore[method-assign]
    RunnerTrafficMetricsMiddleware.__call__ = _metrics_call  # type: ignore[method-assign]
    route_errors = logging.getLogger(http_app.__name__)
    if not any(isinstance(f, ClientErrorsInOneLine) for f in route_errors.filters):
        route_errors.addFilter(ClientErrorsInOneLine())
