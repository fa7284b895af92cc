"""MLflow tracking: where runs go, what every run records, and sweep parents."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

DEFAULT_URI = "sqlite:///mlflow.db"
RUN_ID_ENV = "VISIONOPS_MLFLOW_RUN_ID"  # set for DDP child processes so they join rank 0's run


def tracking_uri(cfg_uri: str | None) -> str:
    """The config key wins; else $MLFLOW_TRACKING_URI; else a SQLite store in the working dir."""
    return cfg_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        if out.returncode != 0 or not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
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
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlruns").as_uri()
    return None


def connect(cfg: DictConfig) -> str:
    """Point MLflow at the configured store and experiment; fail with advice if unreachable."""
    import mlflow

    uri = tracking_uri(cfg.logger.tracking_uri)
    mlflow.set_tracking_uri(uri)
    try:
        from visionops.model_store import check_tracking_server

        check_tracking_server(uri)
        if mlflow.get_experiment_by_name(cfg.logger.experiment_name) is None:
            mlflow.MlflowClient().create_experiment(
                cfg.logger.experiment_name, artifact_location=artifact_location(uri, cfg.logger.get("artifact_location"))
            )
        mlflow.set_experiment(cfg.logger.experiment_name)
    except Exception as exc:  # MlflowException, requests errors: all mean "cannot use this store"
        from train.errors import VisionopsError

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


def log_run_context(cfg: DictConfig, data_version: str) -> None:
    """Params (flattened config), the YAML config, git commit and data version for one run."""
    import mlflow

    resolved = OmegaConf.to_container(cfg, resolve=True)
    params = {k: ("" if v is None else str(v))[:6000] for k, v in flatten(resolved).items()}
    items = list(params.items())
    for i in range(0, len(items), 90):
        mlflow.log_params(dict(items[i : i + 90]))
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    mlflow.set_tags({
        "git_commit": git_commit(),
        "data_version": data_version,
        "config_hash": config_hash(cfg),
        "model.arch": str(cfg.model.arch),
        "data.name": str(cfg.data.name),
        **{str(k): str(v) for k, v in (cfg.logger.get("tags") or {}).items()},
    })
