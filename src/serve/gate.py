"""The request gate: ASGI middleware in front of a BentoML service's routes that answers the
service's upload endpoints by calling its own `@bentoml.api` methods, leanly.

BentoML's per-request machinery (a temporary file per upload, pydantic validation of the input,
its request context) costs more CPU than decoding, preprocessing and running a small model
together. For every API method whose only input is one file field (`image: Upload`) or a list
of them (`images: list[Upload]`), the gate reads and parses the multipart body itself and calls
the method with `Upload`s (the file's name and bytes, in memory) and a `GateContext` in place of
BentoML's Context (the request's headers in, the answer's headers out). So the methods are what
answers, and BentoML's OpenAPI page and Python client see ordinary file fields. Methods without
inputs (`metadata`) answer GET too; everything else goes on to BentoML.

On the way it answers what a client can get wrong about the *request*, with a 4xx JSON object
naming the problem: the API key (compared in constant time), the method, the content type, the
body's size (a limit per route, 413 as soon as it is passed), the time the client takes to send
it (408), and the multipart fields. A method's BentoML exception becomes its status code
(InvalidArgument 400, ServiceUnavailable 503). Every error body that leaves the server, BentoML's
404s and 405s included, is an object with `error`. BentoML's metrics, tracing, timeout and
concurrency middlewares sit outside the gate and still apply.

The hand-off: `Service.add_asgi_middleware(Gate, service=<the service>, settings=...)`. The gate
reads the routes from the service definition and reaches the worker's instance through
`bentoml.get_current_service()`, which BentoML sets once the instance is created.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bentoml
import orjson
from bentoml.exceptions import BentoMLException

from serve.asgi import BodyDeadlines, json_errors
from serve.inputs import GateContext, UploadedFile
from serve.multipart import Part, parse_multipart
from serve.settings import Settings

log = logging.getLogger("visionops.serve")
PART_OVERHEAD = 16 * 1024  # multipart framing allowed per file on top of VISIONOPS_MAX_BYTES
_JSON = b"application/json"


@dataclass(frozen=True)
class Route:
    """An upload endpoint of the service, as the gate calls it."""

    path: str
    func: Callable[..., Any]  # the method's function: func(instance, <field>=..., [ctx=...])
    field: str
    many: bool
    ctx_param: str | None
    is_async: bool


def upload_routes(service: Any) -> dict[str, Route]:
    """The service's API methods whose one input is a file field or a list of them."""
    routes = {}
    for api in service.apis.values():
        fields = list(api.input_spec.model_fields)
        if len(fields) != 1 or api.input_spec.multipart_fields != fields:
            continue
        many = typing.get_origin(api.input_spec.model_fields[fields[0]].annotation) is list
        routes[api.route] = Route(api.route, api.func, fields[0], many, api.ctx_param,
                                  inspect.iscoroutinefunction(api.func))
    return routes


class Refused(Exception):
    """A request the gate answers itself: its status and one-line message."""

    def __init__(self, status: int, message: str, close: bool = False, headers: list | None = None):
        super().__init__(message)
        self.status, self.message, self.close, self.headers = status, message, close, headers or []


class Gate:
    """The ASGI middleware; see the module's docstring."""

    def __init__(self, app: Any, service: Any, settings: Settings):
        self.app = app
        self.service = service
        self.settings = settings
        self.routes = upload_routes(service)
        # Methods without inputs (metadata) answer GET as well as BentoML's POST.
        self.gets = {api.route: api.func for api in service.apis.values() if not api.input_spec.model_fields}
        self.expected = f"Bearer {settings.api_key}".encode() if settings.api_key else None
        self.protected = frozenset([*self.routes, *self.gets, *(["/metrics"] if settings.metrics_need_key else [])])
        one = settings.max_bytes + PART_OVERHEAD
        self.limits = {path: settings.max_batch_images * one if r.many else one for path, r in self.routes.items()}
        self._deadlines = BodyDeadlines(settings.body_timeout_s)
        self._docs: dict[str, tuple[bytes, bytes]] = {}
        self._instance = bentoml.get_current_service  # BentoML sets it once the worker's instance exists

    @staticmethod
    async def _reply(send: Any, status: int, body: bytes, extra: list | None = None, ctype: bytes = _JSON) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode()),
                                *(extra or [])]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        try:
            if self.expected is not None and path in self.protected and not hmac.compare_digest(
                    _header(scope, b"authorization"), self.expected):
                raise Refused(401, "missing or wrong API key: send the header "
                                   "'Authorization: Bearer <VISIONOPS_API_KEY>'", True, [(b"www-authenticate", b"Bearer")])
            route = self.routes.get(path)
            if route is None:
                if method == "GET" and (path in self.gets or path in ("/", "/docs.json")):
                    return await self._get(path, send)
                return await self.app(scope, receive, json_errors(send))
            if method != "POST":
                raise Refused(405, f"{path} takes POST (multipart/form-data, field '{route.field}')", True,
                              [(b"allow", b"POST")])
            parts = await self._read_parts(route, scope, receive)
        except Refused as r:
            log.info("%s %s %s: %s", r.status, method, path, r.message)
            extra = r.headers + ([(b"connection", b"close")] if r.close else [])
            return await self._reply(send, r.status, orjson.dumps({"error": r.message}), extra)
        return await self._call(route, parts, scope, send)

    # -- reading the upload --------------------------------------------------------------------

    async def _read_parts(self, route: Route, scope: dict, receive: Any) -> list[Part]:
        ctype = _header(scope, b"content-type").decode("latin-1")
        if not ctype.lower().startswith("multipart/form-data"):
            raise Refused(415, f"send the image as multipart/form-data in the field '{route.field}' "
                               f"(got content-type {ctype or 'none'!r})", True)
        try:
            length = int(_header(scope, b"content-length") or 0)
        except ValueError:
            raise Refused(400, "content-length is not a number", True) from None
        if length > self.limits[route.path]:
            raise self._too_big(route)
        body = await self._read_body(receive, route)
        try:
            parts = parse_multipart(body, ctype)
        except ValueError as exc:
            raise Refused(400, f"{exc}: send the image in the multipart field '{route.field}'") from None
        names = {p.name for p in parts}
        if route.field not in names or names - {route.field}:
            wrong = sorted(names - {route.field})
            raise Refused(400, f"send the image in the multipart field '{route.field}'"
                               + (f"; unexpected field(s): {', '.join(wrong)}" if wrong else ""))
        if not route.many and len(parts) > 1:
            several = next((f" several go to {r.path} in the field '{r.field}'" for r in self.routes.values()
                            if r.many), "")
            raise Refused(400, f"send one image in '{route.field}' (got {len(parts)});{several}")
        return parts

    def _too_big(self, route: Route) -> Refused:
        what = (f"{self.settings.max_batch_images} images of at most {self.settings.max_bytes} bytes" if route.many
                else f"one image of at most {self.settings.max_bytes} bytes")
        return Refused(413, f"request body over the limit of {self.limits[route.path]} bytes for {route.path}: "
                            f"send {what} (VISIONOPS_MAX_BYTES)", True)

    async def _read_body(self, receive: Any, route: Route) -> bytes:
        """The whole body, or Refused: 413 as soon as it passes the route's limit, 408 when the
        client has not sent it within the body timeout. Both close the connection, so the
        server stops reading what is left."""
        limit = self.limits[route.path]
        chunks, size, more = [], 0, True
        task = asyncio.current_task()
        assert task is not None
        self._deadlines.start(task)
        try:
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Refused(400, "the client went away before sending its whole request", True)
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise self._too_big(route)
                chunks.append(chunk)
                more = message.get("more_body", False)
        except asyncio.CancelledError:
            if not self._deadlines.expired(task):
                raise
            raise Refused(408, f"the request body did not arrive within {self.settings.body_timeout_s:g} s "
                               f"(VISIONOPS_BODY_TIMEOUT_S): send it at once", True) from None
        finally:
            self._deadlines.stop(task)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- answering -------------------------------------------------------------------------------

    async def _call(self, route: Route, parts: list[Part], scope: dict, send: Any) -> None:
        """Call the route's method with the uploads; its answer (or BentoML exception) is the reply."""
        ctx = GateContext(scope["headers"])
        uploads = [UploadedFile.of(p.filename, p.data) for p in parts]
        kwargs: dict[str, Any] = {route.field: uploads if route.many else uploads[0]}
        if route.ctx_param:
            kwargs[route.ctx_param] = ctx
        try:
            answer = route.func(self._instance(), **kwargs)
            if route.is_async:
                answer = await answer
            status, body = 200, orjson.dumps(answer, default=_jsonable)
        except BentoMLException as exc:
            status = exc.error_code.value
            if status < 500:
                log.info("%s POST %s: %s", status, route.path, exc)
            body = orjson.dumps({"error": str(exc)})
        except Exception:
            rid = ctx.response.headers.get("x-request-id", "")
            log.exception("POST %s (request id %s) failed", route.path, rid)
            status, body = 500, orjson.dumps({"error": f"internal error (request id {rid}); see the server log"})
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in ctx.response.headers.items()]
        await self._reply(send, status, body, extra)

    async def _get(self, path: str, send: Any) -> None:
        """GET of an input-less method (/metadata), or the docs page and spec (built once)."""
        if path in self.gets:
            answer = self.gets[path](self._instance())
            return await self._reply(send, 200, orjson.dumps(answer, default=_jsonable))
        if not self._docs:
            from serve import docs

            meta = self.gets["/metadata"](self._instance())
            spec = docs.spec(self.service.openapi_spec.asdict(), meta, self.expected is not None, tuple(self.routes))
            self._docs["/docs.json"] = orjson.dumps(spec, option=orjson.OPT_NON_STR_KEYS), _JSON
            self._docs["/"] = docs.page(meta).encode(), b"text/html; charset=utf-8"
        body, ctype = self._docs[path]
        await self._reply(send, 200, body, ctype=ctype)


def _header(scope: dict, name: bytes) -> bytes:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return b""


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):  # a pydantic model
        return value.model_dump()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
