"""The model behind the service: load, warm up, and the one operation every caller runs.

    upload bytes -> prepare (decode, image statistics, preprocess) -> infer -> finish (predictions,
    production-log records, kept images, the log)

The service runs the three steps itself, because its adaptive batcher joins the `infer` of
concurrent requests; every other caller (the monitor's reference, the benchmarks, the tests)
runs them in one call, `run`. No BentoML here, so it is tested in-process.
"""

from __future__ import annotations

import logging
import os
import random
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serve.settings import Settings
from visionops import records
from visionops.bundle import ModelBundle
from visionops.images import ImageDecodeError, ImageSource, decode_with_info
from visionops.imagestats import image_stats
from visionops.model_store import fetch
from visionops.onnx_runtime import OnnxModel, available_providers, softmax, top_k
from visionops.prediction_log import PredictionLog, PredictionLogError
from visionops.preprocess import preprocess

log = logging.getLogger("visionops.serve")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


@dataclass(slots=True)
class Prepared:
    """One upload, decoded and ready for the model, with what its record needs."""

    x: np.ndarray                # (1, C, H, W) float32: the model's input
    stats: dict[str, float]      # the image statistics (visionops.imagestats)
    request_id: str
    data: bytes | None = None    # the upload as sent: a kept image is written from it
    suffix: str = ".img"         # the upload's file suffix, for a kept image's name


class UploadError(ImageDecodeError):
    """One upload of several does not decode: `index` (0-based) says which, `reason` why."""

    def __init__(self, index: int, total: int, reason: ImageDecodeError):
        super().__init__(f"image {index + 1} of {total}: {reason}")
        self.index, self.reason = index, reason


class ModelRuntime:
    """A registered model version ready to serve: its bundle, an ONNX Runtime session, the log."""

    def __init__(self, model_dir: Path, name: str, version: str, settings: Settings):
        self.settings = settings
        self.bundle = ModelBundle.load(model_dir / "artifacts")
        self.name, self.version = name, version
        self.spec = self.bundle.preprocess
        workers = max(1, settings.workers)
        threads = settings.threads or max(1, (os.cpu_count() or 1) // workers)
        rel = self.bundle.files.get(self.bundle.serving_format) or "model.onnx"
        providers = available_providers()
        if "CUDAExecutionProvider" in providers and self.bundle.files.get("onnx_fp32"):
            rel = self.bundle.files["onnx_fp32"]  # int8 QDQ graphs are a CPU optimisation; fp32 on the GPU
        self.model = OnnxModel(model_dir / "artifacts" / rel, threads=threads, providers=providers)
        self.device = "cuda" if self.model.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.prediction_log = PredictionLog(settings.log_dir) if settings.log_dir else None
        self.images_dir = Path(settings.log_dir) / "images" if settings.log_dir and settings.keep_images > 0 else None
        self.warm_up()

    @classmethod
    def load(cls, settings: Settings | None = None, model_dir: Path | None = None) -> ModelRuntime:
        """From a packaged model directory (inside a bento) when given, else from the MLflow registry."""
        settings = settings or Settings()
        if model_dir is not None:
            version = (model_dir / "VERSION").read_text().strip()
            return cls(model_dir, (model_dir / "NAME").read_text().strip(), version, settings)
        # The model is in memory once loaded: the temporary copy goes at once, not at exit.
        with fetch(settings.model_uri, tracking_uri=settings.tracking_uri) as local:
            return cls(local.directory, local.name, local.version, settings)

    def warm_up(self) -> None:
        h, w = self.spec.size
        for n in (1, min(8, self.settings.max_batch_size)):
            self.model.run(np.zeros((n, self.spec.channels, h, w), np.float32))

    def prepare(self, data: ImageSource, request_id: str = "", suffix: str = ".img") -> Prepared:
        """Decode + take the statistics + preprocess one upload. Raises ImageDecodeError with a
        client-facing message."""
        img, info = decode_with_info(data, channels=self.spec.channels, max_bytes=self.settings.max_bytes,
                                     max_pixels=self.settings.max_pixels)
        stats = image_stats(img, original_channels=int(info["channels"]))
        return Prepared(preprocess(img, self.spec)[None], stats, request_id,
                        data if isinstance(data, bytes) else None, suffix)

    def infer(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model on a batch: (logits, embeddings)."""
        return self.model.run(x)

    def finish(self, prepared: Sequence[Prepared], logits: np.ndarray,
               embeddings: np.ndarray) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The predictions of uploads the model has run on, and their production-log records,
        appended to the log (when there is one) whole or not at all: on a PredictionLogError their
        kept images are removed too, so an answered upload always has its record."""
        preds, probs = self.predictions(logits)
        recs: list[dict[str, Any]] = []
        try:
            for i, p in enumerate(prepared):
                recs.append(self._record(p, embeddings[i], preds[i], probs[i]))
            if self.prediction_log is not None:
                self.prediction_log.write(recs)
        except PredictionLogError:
            for rec in recs:
                if rec[records.IMAGE_PATH]:
                    Path(rec[records.IMAGE_PATH]).unlink(missing_ok=True)
            raise
        return preds, recs

    def run(self, uploads: Sequence[ImageSource], request_ids: Sequence[str],
            batch_size: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The whole operation for callers that hold their uploads (bytes or paths): prepare, infer
        in batches of `batch_size` (max_batch_size), finish. UploadError names an upload that does
        not decode; the batches before it have been finished."""
        if len(uploads) != len(request_ids):
            raise ValueError(f"{len(uploads)} uploads but {len(request_ids)} request ids")
        size = batch_size or self.settings.max_batch_size
        preds: list[dict[str, Any]] = []
        recs: list[dict[str, Any]] = []
        for start in range(0, len(uploads), size):
            batch = []
            for i in range(start, min(start + size, len(uploads))):
                try:
                    batch.append(self.prepare(uploads[i], request_ids[i]))
                except ImageDecodeError as exc:
                    raise UploadError(i, len(uploads), exc) from exc
            logits, emb = self.infer(np.concatenate([p.x for p in batch]))
            p, r = self.finish(batch, logits, emb)
            preds += p
            recs += r
        return preds, recs

    def predictions(self, logits: np.ndarray) -> tuple[list[dict[str, Any]], np.ndarray]:
        """Each row's answer (label, score, top-k, model version) and the probabilities."""
        probs = softmax(logits)
        k = min(self.settings.top_k, probs.shape[1])
        out = []
        for p in probs:
            best = top_k(p, self.bundle.labels, k)
            out.append({**best[0], "top_k": best, "model_version": self.version})
        return out, probs

    def _record(self, p: Prepared, embedding: np.ndarray, pred: dict[str, Any], probs: np.ndarray) -> dict[str, Any]:
        kept = None
        if self.images_dir is not None and p.data is not None and random.random() < self.settings.keep_images:
            kept = str(self._keep(p.request_id, p.data, p.suffix))
        return records.build(p.request_id, self.name, self.version, p.stats, embedding,
                             records.classification_outputs(pred, probs), kept)

    def _keep(self, request_id: str, data: bytes, suffix: str) -> Path:
        """Write a kept image under a name no other request can take: the id and the suffix come
        from the client (kept to safe characters), the random part from the server, and the file
        is created exclusively. PredictionLogError (no partial file left) if it cannot be written."""
        assert self.images_dir is not None
        name = f"{_UNSAFE.sub('_', request_id)[:128]}-{uuid.uuid4().hex[:16]}"
        path = self.images_dir / f"{name}{suffix if _SUFFIX.fullmatch(suffix) else '.img'}"
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise PredictionLogError(f"cannot keep the image in {self.images_dir}: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise PredictionLogError(f"cannot keep the image in {self.images_dir}: {exc.strerror}") from exc
        return path

    def ready(self) -> bool:
        """Whether predictions can be logged (see PredictionLog.ready); serving waits on it."""
        return self.prediction_log is None or self.prediction_log.ready()

    def metadata(self) -> dict[str, Any]:
        b = self.bundle
        return {"model_name": self.name, "model_version": self.version, "labels": b.labels,
                "input": b.preprocess.to_dict(), "embedding": {"output": b.embedding_layer, "dim": b.embedding_dim},
                "serving_format": b.serving_format, "device": self.device, "git_commit": b.git_commit,
                "data_version": b.data_version, "metrics": b.metrics}


__all__ = ["ImageDecodeError", "ModelRuntime", "PredictionLogError", "Prepared", "UploadError"]
