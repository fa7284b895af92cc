"""Fetch a registered model version from MLflow and read its bundle: no torch, no Lightning.

`fetch("models:/<name>@champion")` downloads the version's files (ONNX models,
bundle.json, parity report) and returns a LocalModel. Errors say what to do.

A SQLite store that another process holds locked (a training or `mlflow ui` writing) is retried
with a growing pause for up to VISIONOPS_STORE_LOCK_TIMEOUT seconds (60), then reported in one
line. A copy fetched without `dst` is temporary: it lives under <tmp>/visionops-models/ in a
folder named after the fetching process, `LocalModel.cleanup()` (or `with fetch(...)`) removes
it, and copies whose process has gone (killed before it could clean up) are removed by the next
fetch on the machine.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from visionops.bundle import ModelBundle

log = logging.getLogger("visionops.model_store")
T = TypeVar("T")
COPIES_DIR = "visionops-models"  # under the temporary directory
_COPY = re.compile(r"\.pid(\d+)\.(\d+)\.")  # <name>-v<version>.pid<pid>.<process start, ms>.<random>
_LOCKED = ("database is locked", "database table is locked")


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
    temporary: Path | None = None  # the folder of a copy fetch() made for itself: cleanup() removes it

    def cleanup(self) -> None:
        """Remove the temporary copy (nothing for a copy fetched into a `dst` of the caller's)."""
        if self.temporary is not None:
            shutil.rmtree(self.temporary, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

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


def is_locked(exc: BaseException) -> bool:
    """Whether an error (or one it was raised from) is SQLite refusing a locked database."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if any(m in str(cur) for m in _LOCKED):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def retry_locked(fn: Callable[[], T], store: str, timeout: float | None = None) -> T:
    """fn(), retried with a growing pause (0.5 s doubling to 8 s) while the store is locked by
    another process, for up to `timeout` seconds (VISIONOPS_STORE_LOCK_TIMEOUT, default 60);
    then a one-line ModelStoreError naming the store and what to do. Each try itself waits a
    few seconds for the lock (SQLite's busy timeout), so the wait ends within timeout + one try."""
    if timeout is None:
        timeout = float(os.environ.get("VISIONOPS_STORE_LOCK_TIMEOUT", "60"))
    start, pause = time.monotonic(), 0.5
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_locked(exc):
                raise
            waited = time.monotonic() - start
            if waited + pause > timeout:
                raise ModelStoreError(
                    f"the MLflow store {store} is locked by another process (still locked after {waited:.0f} s): "
                    "let the other writer (a training, `dvc repro`, `mlflow ui`) finish or stop it, then start "
                    "again; VISIONOPS_STORE_LOCK_TIMEOUT sets how long to wait") from None
            log.warning("the MLflow store %s is locked by another process: retrying in %.1f s (waited %.0f s of %.0f)",
                        store, pause, waited, timeout)
            time.sleep(pause)
            pause = min(pause * 2, 8.0)


def resolve(uri: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """(name, version) that a models:/ URI points at, with a clear error if it points nowhere."""
    import mlflow

    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    check_tracking_server(tracking_uri)
    return retry_locked(lambda: _resolve(uri, tracking_uri), tracking_uri)


def _resolve(uri: str, tracking_uri: str) -> tuple[str, str]:
    from mlflow.exceptions import MlflowException

    client = store_client(tracking_uri)
    name, alias, version = parse_uri(uri)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if is_locked(exc):
            raise
        raise ModelStoreError(
            f"no registered model {name!r} in {tracking_uri}: run the pipeline (`make demo` or `dvc repro register`) "
            "or check MLFLOW_TRACKING_URI"
        ) from exc
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        if is_locked(exc):
            raise
        what = f"alias @{alias}" if alias else f"version {version}"
        versions = [str(v.version) for v in client.search_model_versions(f"name='{name}'")]
        raise ModelStoreError(
            f"model {name!r} has no {what} (versions: {', '.join(sorted(versions, key=int)) or 'none'}); "
            f"promote one with `python -m train.promote version=N`"
        ) from exc
    return name, str(mv.version)


def _alive(pid: int, started_ms: int) -> bool:
    import psutil

    try:
        return abs(psutil.Process(pid).create_time() * 1000 - started_ms) < 1000  # not a reused pid
    except psutil.Error:
        return False


def sweep_copies(root: Path | None = None) -> int:
    """Remove temporary copies whose fetching process has gone; returns how many."""
    root = root or copies_root()
    removed = 0
    for d in root.glob("*") if root.is_dir() else []:
        m = _COPY.search(d.name)
        if m and not _alive(int(m.group(1)), int(m.group(2))):
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    return removed


def copies_root() -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / COPIES_DIR


def _temporary_copy(name: str, version: str) -> Path:
    import tempfile

    import psutil

    root = copies_root()
    sweep_copies(root)
    root.mkdir(parents=True, exist_ok=True)
    started = int(psutil.Process().create_time() * 1000)
    return Path(tempfile.mkdtemp(prefix=f"{name}-v{version}.pid{os.getpid()}.{started}.", dir=root))


def fetch(uri: str, dst: str | os.PathLike | None = None, tracking_uri: str | None = None) -> LocalModel:
    """The version's files in `dst`, or in a temporary copy (see the module docstring) that the
    caller removes with `.cleanup()` or by using the result as a context manager."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    name, version = resolve(uri, tracking_uri)
    temporary = _temporary_copy(name, version) if dst is None else None
    dst = temporary or Path(dst)
    # Download from the version's own artifact location through a client bound to this store:
    # a models:/ URI would resolve through MLflow's global registry URI instead.
    try:
        source = retry_locked(lambda: store_client(tracking_uri).get_model_version_download_uri(name, version),
                              tracking_uri)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=tracking_uri))
    except ModelStoreError:
        _remove(temporary)
        raise
    except Exception as exc:
        _remove(temporary)
        raise ModelStoreError(f"could not download {name} version {version}: {exc}") from exc
    try:
        bundle = ModelBundle.load(local / "artifacts")
        parity_file = local / "artifacts" / "parity.json"
        parity = json.loads(parity_file.read_text()) if parity_file.exists() else {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _remove(temporary)
        raise ModelStoreError(f"model artifact of {uri} (version {version}) is corrupt or not a visionops model: {exc}") from exc
    return LocalModel(uri, name, version, local, bundle, parity, temporary=temporary)


def _remove(temporary: Path | None) -> None:
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
