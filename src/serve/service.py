"""The visionops HTTP service (BentoML 1.4): the model behind the `champion` alias, over HTTP.

POST /classify (multipart `image`), POST /classify_batch (`images`), POST /embed (`image`),
GET /metadata, plus BentoML's /livez, /readyz, /metrics and the OpenAPI docs at /.
Concurrent /classify requests are batched by BentoML's adaptive batching (its CorkDispatcher);
each request is decoded and validated on its own first, so a bad upload is that request's 400
and never fails its batch neighbours.

    make serve            # or: bentoml serve serve.service:Classifier --host 127.0.0.1 --port 3000
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import bentoml
import numpy as np
import orjson
from bentoml.exceptions import InvalidArgument
from pydantic import BaseModel, Field

from serve import bentoml_fixes
from serve.settings import Settings

bentoml_fixes.apply()

SETTINGS = dataclasses.replace(Settings(), workers=Settings().server_workers())
PROTECTED = ("/classify", "/classify_batch", "/embed", "/metadata")
_TARGET = os.environ.get("VISIONOPS_TARGET", "cpu")  # gpu: CUDA base image and a GPU; set when building the bento
_PACKAGED = Path(__file__).with_name("packaged_model.json")  # written into the bento by serve.package
_BENTO_MODEL = os.environ.get("VISIONOPS_BENTO_MODEL") or (
    json.loads(_PACKAGED.read_text())["tag"] if _PACKAGED.exists() else None)  # name:version inside a bento


class TopK(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    label: str = Field(description="the predicted class")
    score: float = Field(description="its probability")
    top_k: list[TopK]
    model_version: str


class Embedding(BaseModel):
    embedding: list[float] = Field(description="the vector the drift monitor watches")
    dim: int
    model_version: str


UPLOAD_FIELDS = {"/classify": "image", "/embed": "image", "/classify_batch": "images"}  # answered in the Gatekeeper
PART_OVERHEAD = 16 * 1024  # multipart framing allowed per image on top of VISIONOPS_MAX_BYTES
INLINE_DECODE_BYTES = 64 * 1024  # smaller uploads are decoded on the event loop; bigger ones in a thread
_LIVE: list[Classifier] = []  # the worker's Classifier instance, once it has loaded its model
_PARAM = re.compile(r';\s*([a-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)', re.IGNORECASE)
log = logging.getLogger("visionops.serve")


class Part(NamedTuple):
    name: str
    filename: str | None
    data: bytes


def _params(header: str) -> dict[str, str]:
    return {k.lower(): v[1:-1].replace('\\"', '"') if v.startswith('"') else v for k, v in _PARAM.findall(header)}


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """The parts of a buffered multipart/form-data body (RFC 7578). ValueError names what is wrong."""
    boundary = _params(content_type).get("boundary")
    if not boundary:
        raise ValueError("multipart/form-data without a boundary in its content-type")
    delim = b"--" + boundary.encode("latin-1")
    start = body.find(delim)
    if start < 0:
        raise ValueError("multipart body without its boundary")
    parts: list[Part] = []
    pos = start + len(delim)
    while True:
        if body.startswith(b"--", pos):  # the closing delimiter
            return parts
        if not body.startswith(b"\r\n", pos):
            raise ValueError("malformed multipart body")
        head_end = body.find(b"\r\n\r\n", pos + 2)
        end = body.find(b"\r\n" + delim, head_end + 4) if head_end >= 0 else -1
        if end < 0:
            raise ValueError("truncated multipart body")
        disposition = ""
        for line in body[pos + 2 : head_end].split(b"\r\n"):
            key, _, value = line.decode("utf-8", "replace").partition(":")
            if key.strip().lower() == "content-disposition":
                disposition = value
        fields = _params(disposition)
        parts.append(Part(fields.get("name", ""), fields.get("filename"), body[head_end + 4 : end]))
        pos = end + 2 + len(delim)


class Refused(Exception):
    """A request the gate answers with a 4xx (or 503): its status and the one-line message."""

    def __init__(self, status: int, message: str, close: bool = False, headers: list | None = None):
        super().__init__(message)
        self.status, self.message, self.close, self.headers = status, message, close, headers or []


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


class Gatekeeper:
    """ASGI middleware in front of BentoML's routes: API key, request limits, the docs page,
    GET /metadata, and every POST to the upload routes.

    Everything a client can get wrong about the *request* is answered here with a 4xx JSON body
    naming the problem (BentoML itself answers a misnamed binary field with a 500, more than
    1,000 multipart parts with a 500, and would accept a JSON body whose `image` is a server-side
    path). Every error body, ours or BentoML's, is a JSON object with `error`. Health, metrics
    (unless VISIONOPS_METRICS_NEED_KEY=1) and docs stay open.

    Bodies are read with limits per route (one image plus a little multipart framing for
    /classify and /embed, VISIONOPS_MAX_BATCH_IMAGES of them for /classify_batch: 413 as soon as
    a limit is passed) and a deadline (VISIONOPS_BODY_TIMEOUT_S: 408 for a client that stalls).

    The uploads are then answered here, by the Classifier's code and through the same adaptive-
    batching dispatcher, but without BentoML's per-request API machinery (a temp file per
    upload, pydantic, its request context): that machinery cost more CPU than decode +
    preprocess + the model together. BentoML's metrics, tracing, timeout and concurrency
    middlewares sit outside this one and still apply.
    """

    def __init__(self, app: Any, settings: Settings):
        self.app = app
        self.settings = settings
        self.expected = f"Bearer {settings.api_key}".encode() if settings.api_key else None
        self.protected = frozenset(PROTECTED + (("/metrics",) if settings.metrics_need_key else ()))
        one = settings.max_bytes + PART_OVERHEAD
        self.limits = {"/classify": one, "/embed": one, "/classify_batch": settings.max_batch_images * one}
        self._docs: dict[str, bytes] = {}
        self._deadlines = BodyDeadlines(settings.body_timeout_s)
        from bentoml.exceptions import ServiceUnavailable

        from serve.runtime import request_id
        from visionops.images import ImageDecodeError
        from visionops.prediction_log import PredictionLogError

        # Bound here, not imported per request (an import statement costs ~1 µs on the hot path).
        self._request_id = request_id
        self._errors = (ImageDecodeError, PredictionLogError, ServiceUnavailable)

    @staticmethod
    async def _reply(send: Any, status: int, payload: Any, extra: list | None = None,
                     ctype: bytes = b"application/json") -> None:
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode()),
                                *(extra or [])]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        headers = dict(scope["headers"])
        try:
            if self.expected is not None and path in self.protected and not hmac.compare_digest(
                    headers.get(b"authorization", b""), self.expected):
                raise Refused(401, "missing or wrong API key: send the header "
                                   "'Authorization: Bearer <VISIONOPS_API_KEY>'", True, [(b"www-authenticate", b"Bearer")])
            field = UPLOAD_FIELDS.get(path)
            if field is None:
                if method == "GET" and path in ("/metadata", "/", "/docs.json") and _LIVE:
                    return await self._answer_get(path, send)
                return await self.app(scope, receive, _json_errors(send))
            if method != "POST":
                raise Refused(405, f"{path} takes POST (multipart/form-data, field '{field}')", True,
                              [(b"allow", b"POST")])
            try:
                rid = self._request_id(headers.get(b"x-request-id", b"").decode("latin-1"))
            except ValueError as exc:
                raise Refused(400, str(exc), True) from None
            parts = await self._read_parts(path, field, headers, receive)
        except Refused as r:
            log.info("%s %s %s: %s", r.status, method, path, r.message)
            extra = r.headers + ([(b"connection", b"close")] if r.close else [])
            return await self._reply(send, r.status, {"error": r.message}, extra)
        return await self._predict(path, parts, rid, send)

    async def _read_parts(self, path: str, field: str, headers: dict[bytes, bytes], receive: Any) -> list[Part]:
        ctype = headers.get(b"content-type", b"").decode("latin-1")
        if not ctype.lower().startswith("multipart/form-data"):
            raise Refused(415, f"send the image as multipart/form-data in the field '{field}' "
                               f"(got content-type {ctype or 'none'!r})", True)
        limit = self.limits[path]
        try:
            length = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            raise Refused(400, "content-length is not a number", True) from None
        if length > limit:
            raise self._too_big(path)
        body = await self._read_body(receive, limit, path)
        try:
            parts = parse_multipart(body, ctype)
        except ValueError as exc:
            raise Refused(400, f"{exc}: send the image in the multipart field '{field}'") from None
        names = {p.name for p in parts}
        if field not in names or names - {field}:
            wrong = sorted(names - {field})
            raise Refused(400, f"send the image in the multipart field '{field}'"
                               + (f"; unexpected field(s): {', '.join(wrong)}" if wrong else ""))
        if path != "/classify_batch" and len(parts) > 1:
            raise Refused(400, f"send one image in '{field}' (got {len(parts)}); several go to /classify_batch "
                               f"in the field 'images'")
        if len(parts) > self.settings.max_batch_images:
            raise Refused(400, f"{len(parts)} images in one request, over the limit of "
                               f"{self.settings.max_batch_images} (VISIONOPS_MAX_BATCH_IMAGES): send them in several")
        return parts

    def _too_big(self, path: str) -> Refused:
        what = (f"{self.settings.max_batch_images} images of at most {self.settings.max_bytes} bytes"
                if path == "/classify_batch" else f"one image of at most {self.settings.max_bytes} bytes")
        return Refused(413, f"request body over the limit of {self.limits[path]} bytes for {path}: send {what} "
                            f"(VISIONOPS_MAX_BYTES)", True)

    async def _read_body(self, receive: Any, limit: int, path: str) -> bytes:
        """The whole body, or Refused: 413 as soon as it passes `limit`, 408 when the client has
        not sent it within the body timeout. Both close the connection, so the server stops
        reading what is left."""
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
                    raise self._too_big(path)
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

    async def _answer_get(self, path: str, send: Any) -> None:
        if path not in self._docs:
            from serve import docs

            meta = _LIVE[0].rt.metadata()
            self._docs["/metadata"] = orjson.dumps(meta)
            self._docs["/docs.json"] = orjson.dumps(docs.spec(
                Classifier.openapi_spec.asdict(), meta, self.expected is not None, tuple(UPLOAD_FIELDS)),
                option=orjson.OPT_NON_STR_KEYS)
            self._docs["/"] = docs.page(meta).encode()
        ctype = b"text/html; charset=utf-8" if path == "/" else b"application/json"
        await self._reply(send, 200, self._docs[path], ctype=ctype)

    async def _predict(self, path: str, parts: list[Part], rid: str, send: Any) -> None:
        extra = [(b"x-request-id", rid.encode("latin-1"))]
        service = _LIVE[0]
        try:
            if path == "/classify":
                answer: Any = await service.classify_bytes(parts[0].data, rid, Path(parts[0].filename or "").suffix)
            elif path == "/embed":
                answer = await service.embed_bytes(parts[0].data)
            else:
                answer = await service.classify_many(parts, rid)
        except self._errors as exc:
            decode_error, log_error, _overloaded = self._errors
            if isinstance(exc, decode_error):
                log.info("400 POST %s (request %s): %s", path, rid, exc)
                return await self._reply(send, 400, {"error": str(exc)}, extra)
            message = f"{exc}; the prediction was not served: retry later" if isinstance(exc, log_error) else str(exc)
            return await self._reply(send, 503, {"error": message}, extra)
        except Exception:
            log.exception("request %s failed", rid)
            return await self._reply(send, 500, {"error": f"internal error (request id {rid}); see the server log"}, extra)
        return await self._reply(send, 200, answer, extra)


def _json_errors(send: Any) -> Any:
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
            return None
        start, *bodies = held
        body = error_body(b"".join(m.get("body", b"") for m in bodies), start["status"])
        kept = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
        await send({**start, "headers": [*kept, (b"content-type", b"application/json"),
                                         (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return _send


def error_body(body: bytes, status: int) -> bytes:
    """An error answer's body as a JSON object with `error` (kept as it is when it already is one)."""
    from http import HTTPStatus

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


def _image_config() -> Any:
    # BentoML wants the requirements file relative to the build context (the repository root).
    req = os.path.relpath(Path(__file__).with_name("requirements-gpu.txt" if _TARGET == "gpu" else "requirements-cpu.txt"))
    base = bentoml.images.Image(base_image="nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04", python_version="3.11") \
        if _TARGET == "gpu" else bentoml.images.Image(python_version="3.11")
    return base.requirements_file(req) if Path(req).exists() and not req.startswith("..") else base


@bentoml.service(
    name="visionops",
    image=_image_config(),
    resources={"gpu": 1} if _TARGET == "gpu" else {"cpu": str(os.cpu_count() or 1)},
    workers=SETTINGS.workers,
    traffic={"timeout": 30},
    # "/classify" also matches /classify_batch (OpenTelemetry searches the URL for each pattern).
    tracing={} if SETTINGS.trace_requests else {"excluded_urls": ["/classify", "/embed"]},
    logging={"access": {"enabled": os.environ.get("VISIONOPS_ACCESS_LOG", "0") == "1"}},
    envs=[{"name": "VISIONOPS_TARGET", "value": _TARGET}]
    + ([{"name": "VISIONOPS_BENTO_MODEL", "value": _BENTO_MODEL}] if _BENTO_MODEL else []),
)
class Classifier:
    # In a bento the model travels inside it (BentoML packages what the service references);
    # outside one, the service loads the registry's champion at start-up.
    if _BENTO_MODEL:
        packaged = bentoml.models.BentoModel(_BENTO_MODEL)

    def __init__(self) -> None:
        from bentoml._internal.marshal.dispatcher import CorkDispatcher
        from bentoml.exceptions import ServiceUnavailable

        from serve.runtime import ModelRuntime

        packaged = getattr(self, "packaged", None)
        self.rt = ModelRuntime.load(SETTINGS, model_dir=Path(packaged.path) if packaged is not None else None)
        log.setLevel(logging.INFO)  # BentoML's logging config shows only warnings from loggers not its own
        log.info("Loaded model %s version %s (%s, %s on %s) from %s", self.rt.name, self.rt.version,
                 self.rt.bundle.arch, self.rt.bundle.serving_format, self.rt.device,
                 f"the bento ({packaged.tag})" if packaged is not None else SETTINGS.model_uri)
        self._log_failing = False

        def overloaded() -> Any:
            raise ServiceUnavailable("server is overloaded: retry with backoff")

        dispatcher = CorkDispatcher(max_latency_in_ms=SETTINGS.max_latency_ms, max_batch_size=SETTINGS.max_batch_size,
                                    fallback=overloaded, get_batch_size=lambda x: x.shape[0])
        self._batched = dispatcher(self._infer_batches)
        _LIVE[:] = [self]

    @bentoml.on_startup
    async def settle(self) -> None:
        """Before the first request: start the batcher (its controller task, the inference thread)
        with a few dummy batches, then take everything loaded so far out of the garbage
        collector's full passes, which would otherwise walk it and pause the event loop."""
        import asyncio
        import gc

        h, w = self.rt.spec.size
        dummy = np.zeros((1, self.rt.spec.channels, h, w), np.float32)
        for wave in (1, 1, 1, 4):
            await asyncio.gather(*(self._batched(dummy) for _ in range(wave)))
        gc.collect()
        gc.freeze()

    async def _infer_batches(self, inputs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        import anyio

        x = np.concatenate(inputs) if len(inputs) > 1 else inputs[0]
        logits, emb = await anyio.to_thread.run_sync(self.rt.infer, x)
        out, i = [], 0
        for a in inputs:
            out.append((logits[i : i + len(a)], emb[i : i + len(a)]))
            i += len(a)
        return out

    async def _prepare(self, data: bytes) -> tuple[np.ndarray, dict[str, float]]:
        """Decode + preprocess one upload (raises ImageDecodeError with the client's message).
        Small uploads are decoded on the event loop: a thread hop would cost more than the decode."""
        if len(data) <= INLINE_DECODE_BYTES:
            return self.rt.prepare(data)
        import anyio

        return await anyio.to_thread.run_sync(self.rt.prepare, data)

    async def classify_bytes(self, data: bytes, rid: str, suffix: str = "") -> dict[str, Any]:
        """One upload -> its prediction, logged. The lean path and the @bentoml.api method both run this."""
        x, stats = await self._prepare(data)
        logits, emb = await self._batched(x)
        preds, probs = self.rt.predictions(logits)
        self._log([self.rt.record(rid, stats, emb[0], preds[0], probs[0], data, suffix or ".img")])
        return preds[0]

    async def classify_many(self, parts: list[Part], rid: str) -> list[dict[str, Any]]:
        """Several uploads of one request -> their predictions in order, logged as <rid>-<i>.
        ImageDecodeError names the image that is wrong (the whole request is refused)."""
        from visionops.images import ImageDecodeError

        prepared = []
        for i, part in enumerate(parts):
            try:
                prepared.append(await self._prepare(part.data))
            except ImageDecodeError as exc:
                raise ImageDecodeError(f"image {i + 1} of {len(parts)}: {exc}") from exc
        logits, emb = await self._batched(np.concatenate([x for x, _ in prepared]))
        preds, probs = self.rt.predictions(logits)
        self._log([self.rt.record(f"{rid}-{i}", stats, emb[i], preds[i], probs[i], parts[i].data,
                                  Path(parts[i].filename or "").suffix or ".img")
                   for i, (_x, stats) in enumerate(prepared)])
        return preds

    def _log(self, records: list[dict[str, Any]]) -> None:
        """Log the records or raise PredictionLogError (the request is then refused with a 503).
        The server log says when logging stops and when it works again, not once per request."""
        from visionops.prediction_log import PredictionLogError

        try:
            self.rt.log(records)
        except PredictionLogError as exc:
            if not self._log_failing:
                log.error("%s: refusing predictions (503, /readyz 503) until it can be written again", exc)
            self._log_failing = True
            raise
        if self._log_failing:
            log.warning("the prediction log can be written again: serving predictions")
            self._log_failing = False

    def __is_ready__(self) -> bool:
        """/readyz: 503 while the prediction log cannot be written (a full disk), so a load
        balancer sends the traffic elsewhere; each probe checks again whether there is room."""
        return self.rt.ready()

    async def embed_bytes(self, data: bytes) -> dict[str, Any]:
        x, _stats = await self._prepare(data)
        _logits, emb = await self._batched(x)
        return {"embedding": emb[0].tolist(), "dim": int(emb.shape[1]), "model_version": self.rt.version}

    def _request_id(self, ctx: bentoml.Context) -> str:
        from serve.runtime import request_id

        try:
            rid = request_id(ctx.request.headers.get("x-request-id"))
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        ctx.response.headers["x-request-id"] = rid
        return rid

    @staticmethod
    def _read(path: Path) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"could not read the upload: {exc}") from exc

    # The three upload endpoints below define the API (its OpenAPI schema, BentoML's clients).
    # Requests to them are answered by the Gatekeeper, which runs the same classify_bytes /
    # classify_many / embed_bytes.
    @bentoml.api(route="/classify")
    async def classify(self, image: Path, ctx: bentoml.Context) -> Prediction:
        """Classify one image (multipart field `image`): label, score, top-k, model version."""
        from visionops.images import ImageDecodeError

        try:
            return Prediction(**await self.classify_bytes(self._read(image), self._request_id(ctx), Path(image).suffix))
        except ImageDecodeError as exc:
            raise InvalidArgument(str(exc)) from exc

    @bentoml.api(route="/classify_batch")
    async def classify_batch(self, images: list[Path], ctx: bentoml.Context) -> list[Prediction]:
        """Classify several images sent in one request (repeated multipart field `images`), in order."""
        if not images:
            raise InvalidArgument("send at least one image in the `images` field")
        if len(images) > SETTINGS.max_batch_images:
            raise InvalidArgument(f"{len(images)} images in one request, over the limit of {SETTINGS.max_batch_images}")
        from visionops.images import ImageDecodeError

        parts = [Part("images", Path(p).name, self._read(p)) for p in images]
        try:
            return [Prediction(**p) for p in await self.classify_many(parts, self._request_id(ctx))]
        except ImageDecodeError as exc:
            raise InvalidArgument(str(exc)) from exc

    @bentoml.api(route="/embed")
    async def embed(self, image: Path, ctx: bentoml.Context) -> Embedding:
        """The image's embedding: the vector the drift monitor compares with training data."""
        from visionops.images import ImageDecodeError

        self._request_id(ctx)
        try:
            return Embedding(**await self.embed_bytes(self._read(image)))
        except ImageDecodeError as exc:
            raise InvalidArgument(str(exc)) from exc

    @bentoml.api(route="/metadata")
    def metadata(self) -> dict[str, Any]:
        """Registered model name and version, labels, input spec, git commit, data version.
        (GET /metadata answers the same.)"""
        return self.rt.metadata()


Classifier.add_asgi_middleware(Gatekeeper, settings=SETTINGS)
