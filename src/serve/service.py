"""The visionops HTTP service (BentoML 1.4): the model behind the `champion` alias, over HTTP.

POST /classify (multipart `image`), POST /classify_batch (`images`), POST /embed (`image`),
GET /metadata, plus BentoML's /livez, /readyz, /metrics and the OpenAPI docs at /.
Concurrent /classify requests are batched by BentoML's adaptive batching (its CorkDispatcher);
each request is decoded and validated on its own first, so a bad upload is that request's 400
and never fails its batch neighbours.

    make serve            # or: bentoml serve serve.service:Classifier --host 127.0.0.1 --port 3000
"""

from __future__ import annotations

import dataclasses
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

from serve import bentoml_fixes, reuseport, startup
from serve.settings import Settings

bentoml_fixes.apply()

SETTINGS = dataclasses.replace(Settings(), workers=Settings().server_workers())
if SETTINGS.reuse_port:
    reuseport.apply()  # `bentoml serve` imports this module before it creates the API socket
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


UPLOAD_FIELDS = {"/classify": "image", "/embed": "image", "/classify_batch": "images"}
LEAN = ("/classify", "/embed")  # answered in the Gatekeeper, see its docstring
INLINE_DECODE_BYTES = 64 * 1024  # smaller uploads are decoded on the event loop; bigger ones in a thread
_METADATA: dict[str, Any] = {}  # filled by the worker's Classifier; served on GET /metadata
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


class Gatekeeper:
    """ASGI middleware in front of BentoML's API routes: API key, upload shape, GET /metadata,
    and the lean path for one-image requests.

    Everything a client can get wrong about the *request* is answered here with a 4xx JSON body
    naming the problem (BentoML itself answers a misnamed binary field with a 500, and would
    accept a JSON body whose `image` is a server-side path). Health, metrics and docs stay open.

    POST /classify and /embed are then answered here too, by the same Classifier code the
    @bentoml.api methods run and through the same adaptive-batching dispatcher, but without
    BentoML's per-request API machinery (a temp file per upload, pydantic, its request context):
    that machinery cost more CPU than decode + preprocess + the model together. BentoML's
    metrics, tracing, timeout and concurrency middlewares sit outside this one and still apply.
    """

    def __init__(self, app: Any, api_key: str | None = None, max_bytes: int = 10 * 1024 * 1024):
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.max_body = max_bytes * 64 + 1024 * 1024  # batch requests carry several images

    @staticmethod
    async def _reply(send: Any, status: int, payload: Any, extra: list | None = None) -> None:
        body = orjson.dumps(payload)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *(extra or [])]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in PROTECTED:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.expected is not None and headers.get(b"authorization", b"") != self.expected:
            return await self._reply(send, 401, {"error": "missing or wrong API key: send the header "
                                                          "'Authorization: Bearer <VISIONOPS_API_KEY>'"},
                                     [(b"www-authenticate", b"Bearer")])
        if path == "/metadata" and scope.get("method") == "GET":
            return await self._reply(send, 200, _METADATA)
        field = UPLOAD_FIELDS.get(path)
        if field is None:
            return await self.app(scope, receive, send)
        ctype = headers.get(b"content-type", b"").decode("latin-1")
        if not ctype.lower().startswith("multipart/form-data"):
            return await self._reply(send, 415, {"error": f"send the image as multipart/form-data in the field "
                                                          f"'{field}' (got content-type {ctype or 'none'!r})"})
        length = int(headers.get(b"content-length", b"0") or 0)
        if length > self.max_body:
            return await self._reply(send, 413, {"error": f"request body of {length} bytes is over the limit of {self.max_body}"})
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await self._reply(send, 413, {"error": f"request body is over the limit of {self.max_body} bytes"})
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            parts = parse_multipart(body, ctype)
        except ValueError as exc:
            return await self._reply(send, 400, {"error": f"{exc}: send the image in the multipart field '{field}'"})
        names = {p.name for p in parts}
        if field not in names or names - {field}:
            wrong = sorted(names - {field})
            return await self._reply(send, 400, {"error": f"send the image in the multipart field '{field}'"
                                                          + (f"; unexpected field(s): {', '.join(wrong)}" if wrong else "")})
        if path in LEAN and _LIVE and scope.get("method") == "POST":
            if len(parts) > 1:
                return await self._reply(send, 400, {"error": f"send one image in '{field}' (got {len(parts)}); "
                                                              f"several go to /classify_batch in the field 'images'"})
            return await self._lean(path, parts[0], headers, send)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _lean(self, path: str, part: Part, headers: dict[bytes, bytes], send: Any) -> None:
        from bentoml.exceptions import ServiceUnavailable

        from serve.runtime import new_request_id
        from visionops.images import ImageDecodeError

        rid = headers.get(b"x-request-id", b"").decode("latin-1") or new_request_id()
        extra = [(b"x-request-id", rid.encode("latin-1"))]
        service = _LIVE[0]
        try:
            if path == "/classify":
                answer = await service.classify_bytes(part.data, rid, Path(part.filename or "").suffix)
            else:
                answer = await service.embed_bytes(part.data)
        except ImageDecodeError as exc:
            return await self._reply(send, 400, {"error": str(exc)}, extra)
        except ServiceUnavailable as exc:
            return await self._reply(send, 503, {"error": str(exc)}, extra)
        except Exception:
            log.exception("request %s failed", rid)
            return await self._reply(send, 500, {"error": f"internal error (request id {rid}); see the server log"}, extra)
        return await self._reply(send, 200, answer, extra)


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
        from visionops.model_store import ModelStoreError

        packaged = getattr(self, "packaged", None)
        with startup.fatal(ModelStoreError):  # one line and the server stops, not tracebacks and restarts
            self.rt = ModelRuntime.load(SETTINGS, model_dir=Path(packaged.path) if packaged is not None else None)
        _METADATA.update(self.rt.metadata())

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
        if self.rt.prediction_log is not None:
            self.rt.prediction_log.write([self.rt.record(rid, stats, emb[0], preds[0], probs[0], data, suffix or ".img")])
        return preds[0]

    async def embed_bytes(self, data: bytes) -> dict[str, Any]:
        x, _stats = await self._prepare(data)
        _logits, emb = await self._batched(x)
        return {"embedding": emb[0].tolist(), "dim": int(emb.shape[1]), "model_version": self.rt.version}

    def _request_id(self, ctx: bentoml.Context) -> str:
        from serve.runtime import new_request_id

        rid = ctx.request.headers.get("x-request-id") or new_request_id()
        ctx.response.headers["x-request-id"] = rid
        return rid

    @staticmethod
    def _read(path: Path) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"could not read the upload: {exc}") from exc

    # The three upload endpoints below define the API (its OpenAPI schema, BentoML's clients).
    # Single-image requests normally reach /classify and /embed through the Gatekeeper's lean
    # path, which runs the same classify_bytes / embed_bytes.
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

        rid = self._request_id(ctx)
        prepared = []
        for i, p in enumerate(images):
            data = self._read(p)
            try:
                prepared.append((*await self._prepare(data), data))
            except ImageDecodeError as exc:
                raise InvalidArgument(f"image {i + 1} of {len(images)}: {exc}") from exc
        logits, emb = await self._batched(np.concatenate([p[0] for p in prepared]))
        preds, probs = self.rt.predictions(logits)
        if self.rt.prediction_log is not None:
            self.rt.prediction_log.write([
                self.rt.record(f"{rid}-{i}", p[1], emb[i], preds[i], probs[i], p[2], Path(images[i]).suffix)
                for i, p in enumerate(prepared)])
        return [Prediction(**p) for p in preds]

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


Classifier.add_asgi_middleware(Gatekeeper, api_key=SETTINGS.api_key, max_bytes=SETTINGS.max_bytes)
