"""Serving settings: environment variables with defaults (a server is configured by its env)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from visionops import project


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    # $VISIONOPS_MODEL_URI / $MLFLOW_TRACKING_URI, else the project's champion and store (visionops.project).
    model_uri: str = field(default_factory=project.model_uri)
    tracking_uri: str = field(default_factory=project.tracking_uri)
    max_bytes: int = field(default_factory=lambda: int(_env("VISIONOPS_MAX_BYTES", str(10 * 1024 * 1024))))
    max_pixels: int = field(default_factory=lambda: int(_env("VISIONOPS_MAX_PIXELS", str(25_000_000))))
    max_batch_images: int = field(default_factory=lambda: int(_env("VISIONOPS_MAX_BATCH_IMAGES", "64")))
    top_k: int = field(default_factory=lambda: int(_env("VISIONOPS_TOP_K", "5")))
    api_key: str | None = field(default_factory=lambda: os.environ.get("VISIONOPS_API_KEY") or None)
    # /metrics is open by default (a Prometheus scraper in the cluster); 1 puts it behind the API key.
    metrics_need_key: bool = field(default_factory=lambda: _env("VISIONOPS_METRICS_NEED_KEY", "0") == "1")
    # A client has this long to send its whole request body (408 after it): well inside the
    # request timeout, so a stalled upload is the client's 408, not the server's 504.
    body_timeout_s: float = field(default_factory=lambda: float(_env("VISIONOPS_BODY_TIMEOUT_S", "10")))
    log_dir: str | None = field(default_factory=lambda: _env("VISIONOPS_PREDICTION_LOG", "logs/predictions") or None)
    keep_images: float = field(default_factory=lambda: float(_env("VISIONOPS_KEEP_IMAGES", "0")))
    # Adaptive batching (BentoML's CorkDispatcher): largest batch and the latency it may add.
    max_batch_size: int = field(default_factory=lambda: int(_env("VISIONOPS_MAX_BATCH_SIZE", "64")))
    max_latency_ms: int = field(default_factory=lambda: int(_env("VISIONOPS_MAX_LATENCY_MS", "1000")))
    threads: int = field(default_factory=lambda: int(_env("VISIONOPS_THREADS", "0")))
    # Server processes; 0 = automatic (see server_workers). Each gets cores / workers threads.
    workers: int = field(default_factory=lambda: int(_env("VISIONOPS_WORKERS", "0")))
    # BentoML opens an OpenTelemetry span for every request even when no exporter is configured;
    # on a small model that is a fifth of the server's CPU. The prediction routes are left out of
    # tracing unless this is set (do set it when a tracing exporter is configured).
    trace_requests: bool = field(default_factory=lambda: _env("VISIONOPS_TRACE_REQUESTS", "0") == "1")
    # Each worker listens on its own SO_REUSEPORT socket (Linux), so new connections are spread
    # over the workers; 0 = one socket shared by all workers, as BentoML does (see serve.reuseport).
    reuse_port: bool = field(default_factory=lambda: _env("VISIONOPS_REUSE_PORT", "1") == "1")

    request_timeout_s: float = 30.0  # BentoML's traffic.timeout: the whole request, answered or 504

    def __post_init__(self) -> None:
        if not 0 < self.body_timeout_s < self.request_timeout_s:
            raise ValueError(f"VISIONOPS_BODY_TIMEOUT_S={self.body_timeout_s:g} must be above 0 and below the "
                             f"request timeout of {self.request_timeout_s:g} s")

    def server_workers(self) -> int:
        """The configured number of server processes, or automatically: one on a GPU (one
        process owns it, adaptive batching fills it), else one per core, up to 4 (Python spends
        a core per process on HTTP and decoding)."""
        if self.workers > 0:
            return self.workers
        if os.environ.get("VISIONOPS_TARGET") == "gpu":
            return 1
        from visionops.onnx_runtime import available_providers

        if "CUDAExecutionProvider" in available_providers():
            return 1
        return max(1, min(os.cpu_count() or 1, 4))
