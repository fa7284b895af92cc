"""Fetch a registered model version from MLflow and read its bundle: no torch, no Lightning.

`fetch("models:/visionops-digits@champion")` downloads the version's files (ONNX models,
bundle.json, parity report) and returns a LocalModel. Errors say what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionops.bundle import ModelBundle


class ModelStoreError(RuntimeError):
    """A registered model that cannot be had: the message says why and what to do."""


@dataclass
class LocalModel:
    uri: str
    name: str
    version: str
    directory: Path
    bundle: ModelBundle
    parity: dict[str, Any]

    def onnx_path(self, fmt: str | None = None) -> Path:
        fmt = fmt or self.bundle.serving_format
        rel = self.bundle.files.get(fmt)
        if not rel:
            raise ModelStoreError(f"{self.uri} has no {fmt} file")
        return self.directory / "artifacts" / rel

    def load(self, fmt: str | None = None, threads: int | None = None):
        from visionops.onnx_runtime import OnnxModel

        path = self.onnx_path(fmt)
        try:
            return OnnxModel(path, threads=threads)
        except (ValueError, FileNotFoundError) as exc:
            raise ModelStoreError(f"model artifact of {self.uri} is corrupt: {exc}. Re-register the model "
                                  "(dvc repro register) or point the alias at another version.") from exc


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with advice, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status != 200:
                raise ModelStoreError(f"MLflow tracking server {uri} answered {r.status} on /health")
    except (urllib.error.URLError, OSError) as exc:
        raise ModelStoreError(
            f"cannot reach the MLflow tracking server {uri} ({getattr(exc, 'reason', exc)}): start it "
            "(`mlflow server ...`) or set MLFLOW_TRACKING_URI / logger.tracking_uri to a reachable store"
        ) from exc


def parse_uri(uri: str) -> tuple[str, str | None, str | None]:
    """models:/name@alias or models:/name/version -> (name, alias, version)."""
    if not uri.startswith("models:/"):
        raise ModelStoreError(f"expected a registry URI like models:/<name>@champion, got {uri!r}")
    rest = uri[len("models:/"):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        return name, None, version
    raise ModelStoreError(f"{uri!r} names no version or alias: use models:/{rest}@champion")


def store_client(tracking_uri: str):
    """A client bound to one store for both tracking and registry (never MLflow's global registry URI)."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def resolve(uri: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """(name, version) that a models:/ URI points at, with a clear error if it points nowhere."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    check_tracking_server(tracking_uri)
    client = store_client(tracking_uri)
    name, alias, version = parse_uri(uri)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        raise ModelStoreError(
            f"no registered model {name!r} in {tracking_uri}: run the pipeline (`make demo` or `dvc repro register`) "
            "or check MLFLOW_TRACKING_URI"
        ) from exc
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        what = f"alias @{alias}" if alias else f"version {version}"
        versions = [str(v.version) for v in client.search_model_versions(f"name='{name}'")]
        raise ModelStoreError(
            f"model {name!r} has no {what} (versions: {', '.join(sorted(versions, key=int)) or 'none'}); "
            f"promote one with `python -m train.promote version=N`"
        ) from exc
    return name, str(mv.version)


def fetch(uri: str, dst: str | os.PathLike | None = None, tracking_uri: str | None = None) -> LocalModel:
    import tempfile

    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    name, version = resolve(uri, tracking_uri)
    dst = Path(dst) if dst else Path(tempfile.mkdtemp(prefix=f"{name}-v{version}-"))
    # Download from the version's own artifact location through a client bound to this store:
    # a models:/ URI would resolve through MLflow's global registry URI instead.
    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    try:
        source = store_client(tracking_uri).get_model_version_download_uri(name, version)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=tracking_uri))
    except Exception as exc:
        raise ModelStoreError(f"could not download {name} version {version}: {exc}") from exc
    try:
        bundle = ModelBundle.load(local / "artifacts")
        parity_file = local / "artifacts" / "parity.json"
        parity = json.loads(parity_file.read_text()) if parity_file.exists() else {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelStoreError(f"model artifact of {uri} (version {version}) is corrupt or not a visionops model: {exc}") from exc
    return LocalModel(uri, name, version, local, bundle, parity)
