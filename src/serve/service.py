"""The visionops HTTP service (BentoML 1.4): the model behind the `champion` alias, over HTTP.

POST /classify (multipart `image`), POST /classify_batch (`images`), POST /embed (`image`),
GET /metadata, plus BentoML's /livez, /readyz, /metrics and the OpenAPI docs at /.
Concurrent /classify requests are batched by BentoML's adaptive batching (its CorkDispatcher);
each request is decoded and validated on its own first, so a bad upload is that request's 400
and never fails its batch neighbours.

    make serve            # or: bentoml serve serve.service:Classifier --host 127.0.0.1 --port 3000
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument
from pydantic import BaseModel, Field

from serve.settings import Settings

SETTINGS = Settings()
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
_PART_NAME = re.compile(rb'content-disposition:[^\r\n]*?\bname="([^"]*)"', re.IGNORECASE)
_METADATA: dict[str, Any] = {}  # filled by the worker's Classifier; served on GET /metadata


class Gatekeeper:
    """ASGI middleware in front of BentoML: API key, upload shape, GET /metadata.

    Everything a client can get wrong about the *request* is answered here with a 4xx JSON body
    naming the problem (BentoML itself answers a misnamed binary field with a 500, and would
    accept a JSON body whose `image` is a server-side path). Health, metrics and docs stay open.
    """

    def __init__(self, app: Any, api_key: str | None = None, max_bytes: int = 10 * 1024 * 1024):
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.max_body = max_bytes * 64 + 1024 * 1024  # batch requests carry several images

    @staticmethod
    async def _reply(send: Any, status: int, payload: dict[str, Any], extra: list | None = None) -> None:
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), *(extra or [])]})
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
        ctype = headers.get(b"content-type", b"").decode("latin-1").lower()
        if not ctype.startswith("multipart/form-data"):
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
        names = {m.decode("utf-8", "replace") for m in _PART_NAME.findall(body)}
        if field not in names or names - {field}:
            wrong = sorted(names - {field})
            return await self._reply(send, 400, {"error": f"send the image in the multipart field '{field}'"
                                                          + (f"; unexpected field(s): {', '.join(wrong)}" if wrong else "")})
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


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
        _METADATA.update(self.rt.metadata())

        def overloaded() -> Any:
            raise ServiceUnavailable("server is overloaded: retry with backoff")

        dispatcher = CorkDispatcher(max_latency_in_ms=SETTINGS.max_latency_ms, max_batch_size=SETTINGS.max_batch_size,
                                    fallback=overloaded, get_batch_size=lambda x: x.shape[0])
        self._batched = dispatcher(self._infer_batches)

    async def _infer_batches(self, inputs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        import anyio

        x = np.concatenate(inputs) if len(inputs) > 1 else inputs[0]
        logits, emb = await anyio.to_thread.run_sync(self.rt.infer, x)
        out, i = [], 0
        for a in inputs:
            out.append((logits[i : i + len(a)], emb[i : i + len(a)]))
            i += len(a)
        return out

    def _prepare(self, path: Path) -> tuple[np.ndarray, dict[str, float], bytes]:
        from visionops.images import ImageDecodeError

        try:
            data = Path(path).read_bytes()
            x, stats = self.rt.prepare(data)
        except ImageDecodeError as exc:
            raise InvalidArgument(str(exc)) from exc
        except OSError as exc:
            raise InvalidArgument(f"could not read the upload: {exc}") from exc
        return x, stats, data

    def _request_id(self, ctx: bentoml.Context) -> str:
        from serve.runtime import new_request_id

        rid = ctx.request.headers.get("x-request-id") or new_request_id()
        ctx.response.headers["x-request-id"] = rid
        return rid

    async def _one(self, image: Path, ctx: bentoml.Context) -> tuple[dict[str, Any], np.ndarray]:
        rid = self._request_id(ctx)
        x, stats, data = self._prepare(image)
        logits, emb = await self._batched(x)
        preds, probs = self.rt.predictions(logits)
        if self.rt.prediction_log is not None:
            self.rt.prediction_log.write([self.rt.record(rid, stats, emb[0], preds[0], probs[0], data, Path(image).suffix)])
        return preds[0], emb[0]

    @bentoml.api(route="/classify")
    async def classify(self, image: Path, ctx: bentoml.Context) -> Prediction:
        """Classify one image (multipart field `image`): label, score, top-k, model version."""
        pred, _ = await self._one(image, ctx)
        return Prediction(**pred)

    @bentoml.api(route="/classify_batch")
    async def classify_batch(self, images: list[Path], ctx: bentoml.Context) -> list[Prediction]:
        """Classify several images sent in one request (repeated multipart field `images`), in order."""
        if not images:
            raise InvalidArgument("send at least one image in the `images` field")
        if len(images) > SETTINGS.max_batch_images:
            raise InvalidArgument(f"{len(images)} images in one request, over the limit of {SETTINGS.max_batch_images}")
        rid = self._request_id(ctx)
        prepared = []
        for i, p in enumerate(images):
            try:
                prepared.append(self._prepare(p))
            except InvalidArgument as exc:
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
        self._request_id(ctx)
        x, _stats, _ = self._prepare(image)
        _logits, emb = await self._batched(x)
        return Embedding(embedding=[float(v) for v in emb[0]], dim=int(emb.shape[1]), model_version=self.rt.version)

    @bentoml.api(route="/metadata")
    def metadata(self) -> dict[str, Any]:
        """Registered model name and version, labels, input spec, git commit, data version.
        (GET /metadata answers the same.)"""
        return self.rt.metadata()


Classifier.add_asgi_middleware(Gatekeeper, api_key=SETTINGS.api_key, max_bytes=SETTINGS.max_bytes)
