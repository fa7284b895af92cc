"""The visionops HTTP service (BentoML 1.4): the model behind the `champion` alias, over HTTP.

The service definition: its API (the `@bentoml.api` methods below answer every request to their
routes), its adaptive batching and its resources. Concurrent /classify requests are joined into
one model call by BentoML's CorkDispatcher; each request is decoded and validated on its own
first, so a bad upload is that request's 400 and never fails its batch neighbours.

The request gate in front (`serve/gate.py`) reads and checks each upload and calls these methods
with it, without BentoML's per-request machinery; see its docstring for why and how.

    make serve            # or: bentoml serve serve.service:Classifier --host 127.0.0.1 --port 3000
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from pydantic import Field
from typing_extensions import TypedDict

from serve import bentoml_fixes, reuseport, startup
from serve.gate import Gate
from serve.inputs import Upload, request_id
from serve.settings import Settings
from visionops.images import ImageDecodeError
from visionops.prediction_log import PredictionLogError

if TYPE_CHECKING:
    from serve.runtime import Prepared

bentoml_fixes.apply()

SETTINGS = dataclasses.replace(Settings(), workers=Settings().server_workers())
if SETTINGS.reuse_port:
    reuseport.apply()  # `bentoml serve` imports this module before it creates the API socket
INLINE_DECODE_BYTES = 64 * 1024  # smaller uploads are decoded on the event loop; bigger ones in a thread
_TARGET = os.environ.get("VISIONOPS_TARGET", "cpu")  # gpu: CUDA base image and a GPU; set when building the bento
_PACKAGED = Path(__file__).with_name("packaged_model.json")  # written into the bento by serve.package
_BENTO_MODEL = os.environ.get("VISIONOPS_BENTO_MODEL") or (
    json.loads(_PACKAGED.read_text())["tag"] if _PACKAGED.exists() else None)  # name:version inside a bento
log = logging.getLogger("visionops.serve")


# The answers. TypedDicts: the OpenAPI schema of a pydantic model, and plain dicts at run time.
class TopK(TypedDict):
    label: str
    score: float


class Prediction(TypedDict):
    label: Annotated[str, Field(description="the predicted class")]
    score: Annotated[float, Field(description="its probability")]
    top_k: list[TopK]
    model_version: str


class Embedding(TypedDict):
    embedding: Annotated[list[float], Field(description="the vector the drift monitor watches")]
    dim: int
    model_version: str


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
    traffic={"timeout": SETTINGS.request_timeout_s},
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

        from serve.runtime import ModelRuntime
        from visionops.model_store import ModelStoreError

        packaged = getattr(self, "packaged", None)
        with startup.fatal(ModelStoreError):  # one line and the server stops, not tracebacks and restarts
            self.rt = ModelRuntime.load(SETTINGS, model_dir=Path(packaged.path) if packaged is not None else None)
        log.setLevel(logging.INFO)  # BentoML's logging config shows only warnings from loggers not its own
        log.info("Loaded model %s version %s (%s, %s on %s) from %s", self.rt.name, self.rt.version,
                 self.rt.bundle.arch, self.rt.bundle.serving_format, self.rt.device,
                 f"the bento ({packaged.tag})" if packaged is not None else SETTINGS.model_uri)

        def overloaded() -> Any:
            raise ServiceUnavailable("server is overloaded: retry with backoff")

        # Adaptive batching of the model calls of concurrent requests (each request's images
        # are decoded and checked before they join a batch).
        dispatcher = CorkDispatcher(max_latency_in_ms=SETTINGS.max_latency_ms, max_batch_size=SETTINGS.max_batch_size,
                                    fallback=overloaded, get_batch_size=lambda x: x.shape[0])
        self._batched = dispatcher(self._infer_batches)
        self._log_failing = False

    # -- the API ---------------------------------------------------------------------------------

    @bentoml.api(route="/classify")
    async def classify(self, image: Upload, ctx: bentoml.Context) -> Prediction:
        """Classify one image (multipart field `image`): label, score, top-k, model version."""
        upload = await self._prepare(image.read_bytes(), _request_id(ctx), image.suffix)
        return (await self._answer([upload]))[0]

    @bentoml.api(route="/classify_batch")
    async def classify_batch(self, images: list[Upload], ctx: bentoml.Context) -> list[Prediction]:
        """Classify several images sent in one request (repeated multipart field `images`), in order."""
        rid = _request_id(ctx)
        if not images:
            raise InvalidArgument("send at least one image in the `images` field")
        if len(images) > SETTINGS.max_batch_images:
            raise InvalidArgument(f"{len(images)} images in one request, over the limit of "
                                  f"{SETTINGS.max_batch_images} (VISIONOPS_MAX_BATCH_IMAGES): send them in several")
        uploads = []
        for i, image in enumerate(images):
            try:
                uploads.append(await self._prepare(image.read_bytes(), f"{rid}-{i}", image.suffix))
            except InvalidArgument as exc:
                raise InvalidArgument(f"image {i + 1} of {len(images)}: {exc}") from exc
        return await self._answer(uploads)

    @bentoml.api(route="/embed")
    async def embed(self, image: Upload, ctx: bentoml.Context) -> Embedding:
        """The image's embedding: the vector the drift monitor compares with training data."""
        upload = await self._prepare(image.read_bytes(), _request_id(ctx))
        _logits, emb = await self._batched(upload.x)
        return {"embedding": emb[0].tolist(), "dim": int(emb.shape[1]), "model_version": self.rt.version}

    @bentoml.api(route="/metadata")
    def metadata(self) -> dict[str, Any]:
        """Registered model name and version, labels, input spec, embedding, git commit, data version,
        metrics. (GET /metadata answers the same.)"""
        return self.rt.metadata()

    def __is_ready__(self) -> bool:
        """/readyz: 503 while the prediction log cannot be written (a full disk), so a load
        balancer sends the traffic elsewhere; each probe checks again whether there is room."""
        return self.rt.ready()

    # -- start-up --------------------------------------------------------------------------------

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

    # -- the steps: the runtime's prepare -> infer -> finish, with the batcher around infer ------------

    async def _prepare(self, data: bytes, rid: str, suffix: str = ".img") -> Prepared:
        """Decode + preprocess one upload; InvalidArgument (400) with the client's message.
        Small uploads are decoded on the event loop: a thread hop would cost more than the decode."""
        try:
            if len(data) <= INLINE_DECODE_BYTES:
                return self.rt.prepare(data, rid, suffix)
            import anyio

            return await anyio.to_thread.run_sync(self.rt.prepare, data, rid, suffix)
        except ImageDecodeError as exc:
            raise InvalidArgument(str(exc)) from exc

    async def _answer(self, uploads: list[Prepared]) -> list[Prediction]:
        """The model on the uploads (joined with other requests' by the batcher), then their
        predictions, each with its record in the production log, or the request is refused (503):
        an answered request always has its record. The server log says when logging stops and
        when it works again, not once per request."""
        x = uploads[0].x if len(uploads) == 1 else np.concatenate([u.x for u in uploads])
        logits, emb = await self._batched(x)
        try:
            preds, _records = self.rt.finish(uploads, logits, emb)
        except PredictionLogError as exc:
            if not self._log_failing:
                log.error("%s: refusing predictions (503, /readyz 503) until it can be written again", exc)
            self._log_failing = True
            raise ServiceUnavailable(f"{exc}; the prediction was not served: retry later") from None
        if self._log_failing:
            log.warning("the prediction log can be written again: serving predictions")
            self._log_failing = False
        return preds  # type: ignore[return-value]  # dicts of Prediction's shape

    async def _infer_batches(self, inputs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        import anyio

        x = np.concatenate(inputs) if len(inputs) > 1 else inputs[0]
        logits, emb = await anyio.to_thread.run_sync(self.rt.infer, x)
        out, i = [], 0
        for a in inputs:
            out.append((logits[i : i + len(a)], emb[i : i + len(a)]))
            i += len(a)
        return out


def _request_id(ctx: bentoml.Context) -> str:
    """The request's id (its `x-request-id` if the client sent one), echoed in the answer."""
    try:
        rid = request_id(ctx.request.headers.get("x-request-id"))
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    ctx.response.headers["x-request-id"] = rid
    return rid


Classifier.add_asgi_middleware(Gate, service=Classifier, settings=SETTINGS)
