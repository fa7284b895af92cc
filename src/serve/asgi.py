"""Two small ASGI pieces of the request gate: one body-read timer per worker instead of one per
request, and error answers rewritten as JSON objects with `error`."""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

import orjson

_JSON = b"application/json"


class BodyDeadlines:
    """The body-read deadline of every request of a worker, kept by one timer for all of them
    (an `asyncio.timeout` per request arms and cancels a timer each time: ~8 µs here, more than
    the multipart parse). The timer looks every quarter of the timeout, so a stalled body is cut
    off between 1 and 1.25 times the timeout after its request began."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._due: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None

    def start(self, task: asyncio.Task) -> None:
        loop = task.get_loop()
        self._due[task] = loop.time() + self.seconds
        if self._timer is None:
            self._timer = loop.call_later(self.seconds / 4, self._sweep, loop)

    def stop(self, task: asyncio.Task) -> None:
        self._due.pop(task, None)

    def expired(self, task: asyncio.Task) -> bool:
        """After a CancelledError: whether it was this deadline (then the cancel is taken back)."""
        if task in self._expired:
            self._expired.discard(task)
            task.uncancel()
            return True
        return False

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for task, due in list(self._due.items()):
            if due <= now:
                del self._due[task]
                self._expired.add(task)
                task.cancel()
        self._timer = loop.call_later(self.seconds / 4, self._sweep, loop) if self._due else None


def json_errors(send: Any) -> Any:
    """Wrap `send` so an error answer from BentoML or Starlette (a plain-text 404, a JSON list of
    errors) reaches the client as a JSON object with `error`, like the gate's own."""
    held: list[dict] = []

    async def _send(message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held.append(message)
            return
        if not held:
            return await send(message)
        held.append(message)
        if message.get("more_body"):
            return
        start, *bodies = held
        body = error_body(b"".join(m.get("body", b"") for m in bodies), start["status"])
        kept = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
        await send({**start, "headers": [*kept, (b"content-type", _JSON), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return _send


def error_body(body: bytes, status: int) -> bytes:
    """An error answer's body as a JSON object with `error` (kept as it is when it already is one)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = body.decode("utf-8", "replace").strip()
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return body
    if isinstance(value, list) and value and all(isinstance(v, dict) and "error" in v for v in value):
        value = "; ".join(str(v["error"]) for v in value)
    elif not isinstance(value, str):
        value = orjson.dumps(value).decode()
    return orjson.dumps({"error": value or HTTPStatus(status).phrase})
