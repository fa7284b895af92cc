"""The model behind the service: load, warm up, preprocess, predict, log. No BentoML here, so
it is tested in-process and reused by the batch CLI and the benchmarks."""

from __future__ import annotations

import logging
import os
import random
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from serve.settings import Settings
from visionops.bundle import ModelBundle
from visionops.images import ImageDecodeError, decode_with_info
from visionops.imagestats import image_stats
from visionops.model_store import fetch
from visionops.onnx_runtime import OnnxModel, available_providers, softmax, top_k
from visionops.prediction_log import PredictionLog, PredictionLogError, now_iso
from visionops.preprocess import preprocess

log = logging.getLogger("visionops.serve")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


class ModelRuntime:
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

    def prepare(self, data: bytes | str | os.PathLike) -> tuple[np.ndarray, dict[str, float]]:
        """Decode + preprocess one upload: (1,C,H,W) input and its image statistics.
        Raises ImageDecodeError with a client-facing message."""
        img, info = decode_with_info(data, channels=self.spec.channels, max_bytes=self.settings.max_bytes,
                                     max_pixels=self.settings.max_pixels)
        stats = image_stats(img, original_channels=int(info["channels"]))
        return preprocess(img, self.spec)[None], stats

    def infer(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.model.run(x)

    def predictions(self, logits: np.ndarray) -> tuple[list[dict[str, Any]], np.ndarray]:
        probs = softmax(logits)
        k = min(self.settings.top_k, probs.shape[1])
        out = []
        for p in probs:
            best = top_k(p, self.bundle.labels, k)
            out.append({**best[0], "top_k": best, "model_version": self.version})
        return out, probs

    def record(self, request_id: str, stats: dict[str, float], embedding: np.ndarray, pred: dict[str, Any],
               probs: np.ndarray, data: bytes | None = None, suffix: str = ".img") -> dict[str, Any]:
        rec: dict[str, Any] = {
            "timestamp": now_iso(), "request_id": request_id, "model_name": self.name, "model_version": self.version,
            **stats, "embedding": np.round(np.asarray(embedding, np.float64), 6).tolist(),
            "predicted_label": pred["label"], "top_score": pred["score"],
            "probabilities": np.round(np.asarray(probs, np.float64), 6).tolist(), "image_path": None,
        }
        if self.images_dir is not None and data is not None and random.random() < self.settings.keep_images:
            rec["image_path"] = str(self._keep(request_id, data, suffix))
        return rec

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

    def log(self, records: list[dict[str, Any]]) -> None:
        """Append served predictions to the production log, whole or not at all: on a
        PredictionLogError the records' kept images are removed too, and the caller refuses the
        request (a 503), so an answered request always has its record."""
        if self.prediction_log is None:
            return
        try:
            self.prediction_log.write(records)
        except PredictionLogError:
            for rec in records:
                if rec.get("image_path"):
                    Path(rec["image_path"]).unlink(missing_ok=True)
            raise

    def ready(self) -> bool:
        """Whether predictions can be logged (see PredictionLog.ready); serving waits on it."""
        return self.prediction_log is None or self.prediction_log.ready()

    def metadata(self) -> dict[str, Any]:
        b = self.bundle
        return {"model_name": self.name, "model_version": self.version, "labels": b.labels,
                "input": b.preprocess.to_dict(), "embedding": {"output": b.embedding_layer, "dim": b.embedding_dim},
                "serving_format": b.serving_format, "device": self.device, "git_commit": b.git_commit,
                "data_version": b.data_version, "metrics": b.metrics}


__all__ = ["ImageDecodeError", "ModelRuntime", "PredictionLogError"]
