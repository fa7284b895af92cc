"""MLflow tracking: where runs go, what every run records, sweep parents, and runs whose process died.

Every run is tagged with the host, pid and start time of the process that writes it. A training
killed with SIGKILL (or a lost machine) cannot end its run, so `connect()` marks this host's
RUNNING runs whose process is gone as FAILED the next time the store is used; runs of other hosts
are left alone (their processes cannot be checked from here).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import socket
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from visionops.errors import VisionopsError
from visionops.project import sqlite_file, tracking_uri

RUN_ID_ENV = "VISIONOPS_MLFLOW_RUN_ID"  # set for DDP child processes so they join rank 0's run
CKPT_RUN_KEY = "visionops_mlflow_run_id"  # in every Lightning checkpoint we write
HOST_TAG, PID_TAG, STARTED_TAG = "visionops.host", "visionops.pid", "visionops.pid_started"

log = logging.getLogger(__name__)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
        sha = out.stdout.strip()
        if out.returncode != 0 or not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"model.net.arch": "small_cnn", ...} for MLflow params."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (list, tuple)) and not all(isinstance(v, (int, float, str, bool)) for v in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def config_hash(cfg: DictConfig) -> str:
    return hashlib.sha256(OmegaConf.to_yaml(cfg, resolve=True).encode()).hexdigest()[:16]


def artifact_location(uri: str, configured: str | None) -> str | None:
    """Artifacts of a SQLite store live beside the database file (mlruns/ next to mlflow.db);
    a server decides for itself (None)."""
    if configured:
        return configured
    db = sqlite_file(uri)
    return (db.resolve().parent / "mlruns").as_uri() if db is not None else None


def connect(cfg: DictConfig) -> str:
    """Point MLflow at the configured store and experiment; fail with advice if unreachable."""
    import mlflow

    uri = tracking_uri(cfg.logger.tracking_uri)  # the one rule: config key, $MLFLOW_TRACKING_URI, the project's
    mlflow.set_tracking_uri(uri)
    try:
        from visionops.model_store import check_tracking_server

        check_tracking_server(uri)
        if mlflow.get_experiment_by_name(cfg.logger.experiment_name) is None:
            mlflow.MlflowClient().create_experiment(
                cfg.logger.experiment_name, artifact_location=artifact_location(uri, cfg.logger.get("artifact_location"))
            )
        exp = mlflow.set_experiment(cfg.logger.experiment_name)
        mark_dead_runs_failed(mlflow.MlflowClient(), exp.experiment_id)
    except Exception as exc:  # MlflowException, requests errors: all mean "cannot use this store"
        raise VisionopsError(
            f"cannot reach the MLflow tracking store {uri} ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0][:200]}). Start the server or fix logger.tracking_uri."
        ) from exc
    return uri


def sweep_parent(cfg: DictConfig, sweep_dir: str) -> str:
    """Find or create the parent run that groups every trial of one hyperparameter sweep."""
    import mlflow

    exp = mlflow.get_experiment_by_name(cfg.logger.experiment_name)
    found = mlflow.search_runs(
        [exp.experiment_id], filter_string=f"tags.`visionops.sweep_dir` = '{sweep_dir}'",
        output_format="list", max_results=1,
    )
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(
        exp.experiment_id,
        run_name=f"sweep {Path(sweep_dir).name}",
        tags={"visionops.sweep_dir": sweep_dir, "visionops.kind": "sweep"},
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def log_run_context(cfg: DictConfig, data_version: str, continued: bool = False) -> None:
    """Params (flattened config), the YAML config, git commit and data version for one run.

    A resumed run keeps its params (MLflow params cannot change): keys whose value changed, such
    as a longer trainer.max_epochs, are listed in the `resumed.changed` tag instead."""
    import mlflow

    resolved = OmegaConf.to_container(cfg, resolve=True)
    params = {k: ("" if v is None else str(v))[:6000] for k, v in flatten(resolved).items()}
    changed = []
    if continued:
        old = mlflow.get_run(mlflow.active_run().info.run_id).data.params
        changed = [f"{k}: {old[k]} -> {v}" for k, v in params.items() if k in old and old[k] != v]
        params = {k: v for k, v in params.items() if k not in old}
    items = list(params.items())
    for i in range(0, len(items), 90):
        mlflow.log_params(dict(items[i : i + 90]))
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config-resumed.yaml" if continued else "config.yaml")
    mlflow.set_tags({
        "git_commit": git_commit(),
        "data_version": data_version,
        "config_hash": config_hash(cfg),
        "model.arch": str(cfg.model.arch),
        "data.name": str(cfg.data.name),
        **({"resumed.changed": "; ".join(changed)[:5000]} if changed else {}),
        **{str(k): str(v) for k, v in (cfg.logger.get("tags") or {}).items()},
    })


def run_in_checkpoint(ckpt_path: str, experiment_id: str) -> str | None:
    """The MLflow run a checkpoint was written by, when that run is in the current store and
    experiment (so a resume continues it); None otherwise."""
    import mlflow
    import torch

    try:
        run_id = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True).get(CKPT_RUN_KEY)
    except (OSError, RuntimeError, ValueError, AttributeError, pickle.UnpicklingError):  # Lightning says it better
        return None
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        log.warning("checkpoint %s was written by MLflow run %s, which is not in this store: starting a new run",
                    ckpt_path, run_id)
        return None
    if run.info.lifecycle_stage != "active" or run.info.experiment_id != experiment_id:
        return None
    return run_id


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def process_tags() -> dict[str, str]:
    """Which process writes this run: checked later by mark_dead_runs_failed."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), STARTED_TAG: f"{_process_start(pid):.2f}"}


def _alive(tags: dict[str, str]) -> bool:
    """Is the process that tagged a run still running (the same process, not a reused pid)?"""
    try:
        pid, started = int(tags[PID_TAG]), float(tags[STARTED_TAG])
    except (KeyError, ValueError):
        return True  # not ours to judge
    now = _process_start(pid)
    return now is not None and abs(now - started) < 1.0


def mark_dead_runs_failed(client: Any, experiment_id: str) -> list[str]:
    """Mark this host's RUNNING runs whose writing process is gone as FAILED; return their ids."""
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=200,
    )
    dead = []
    for run in runs:
        if _alive(run.data.tags):
            continue
        why = (f"process {run.data.tags[PID_TAG]} on {host} ended without finishing the run (killed?); "
               "resume it with ckpt_path=<its last.ckpt>")
        client.set_tag(run.info.run_id, "visionops.failure", why)
        client.set_terminated(run.info.run_id, status="FAILED")
        log.warning("marked MLflow run %s FAILED: %s", run.info.run_id, why)
        dead.append(run.info.run_id)
    return dead
