"""`train(cfg)`: fit a classifier on the prepared manifests with Lightning, tracked in MLflow.

Returns (metrics, objects) and never exits: the train stage's CLI (train/__main__.py) wraps it,
tests call it. Checkpoints carry their MLflow run id, so a resume continues the same run.
Training writes what training produces: the checkpoints, the learning curves and the run's
training metrics. Judging the best checkpoint (calibration, confusion matrices on the validation
and test splits) is the evaluate stage's (`train.evaluate`), which logs into the same run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from train import runs, tracking
from train.datamodule import ManifestDataModule
from train.module import ImageClassifier
from train.trainer_setup import resolve_trainer_config, root_logging_only
from visionops.manifest import data_version
from visionops.preprocess import PreprocessSpec

log = logging.getLogger(__name__)


def _rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


def _sweep_dir() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return str(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    except (ImportError, ValueError):
        return None


class EpochMLFlowLogger(MLFlowLogger):
    """Logs each metric at step = epoch, so curves line up across batch sizes and resumed runs."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        super().log_metrics(metrics, step=int(epoch) if epoch is not None else step)

    def log_hyperparams(self, params: Any) -> None:
        """The full config is logged once, flattened, by train(); Lightning's copy would clash."""


def _write_history(run_id: str, out_csv: Path) -> None:
    """Per-epoch metrics from MLflow as a CSV that `dvc plots` draws as learning curves."""
    import mlflow

    client = mlflow.MlflowClient()
    keys = ["train/loss", "val/loss", "train/acc", "val/acc"]
    by_step: dict[int, dict[str, float]] = {}
    for k in keys:
        for m in client.get_metric_history(run_id, k):
            by_step.setdefault(m.step, {})[k] = m.value
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w") as fh:
        fh.write("epoch," + ",".join(k.replace("/", "_") for k in keys) + "\n")
        for step in sorted(by_step):
            row = by_step[step]
            fh.write(f"{step}," + ",".join(f"{row[k]:.6f}" if k in row else "" for k in keys) + "\n")


class RunIdInCheckpoint(L.Callback):
    """Stores the MLflow run id in every checkpoint, so a resume continues the same run."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[tracking.CKPT_RUN_KEY] = self.run_id


def _start_run(cfg: DictConfig, resuming: bool) -> Any:
    """Rank 0's MLflow run: the checkpoint's own run when resuming (same store), else a new one."""
    import mlflow

    exp = mlflow.get_experiment_by_name(cfg.logger.experiment_name)
    previous = tracking.run_in_checkpoint(str(cfg.ckpt_path), exp.experiment_id) if resuming else None
    parent = None
    sweep = _sweep_dir()
    if sweep:
        parent = tracking.sweep_parent(cfg, str(Path(sweep).resolve()))
    if cfg.logger.log_system_metrics:
        mlflow.set_system_metrics_sampling_interval(2)
        mlflow.set_system_metrics_samples_before_logging(1)
    tags = {**tracking.process_tags(), "visionops.run_kind": str(cfg.get("run_kind") or "adhoc")}
    if cfg.get("run_dir"):
        tags["visionops.output_dir"] = str(cfg.run_dir)
    if parent:
        tags["mlflow.parentRunId"] = parent
    if resuming:
        tags["resumed_from"] = str(cfg.ckpt_path)
    active = mlflow.start_run(run_id=previous, run_name=None if previous else runs.run_name(cfg),
                              log_system_metrics=bool(cfg.logger.log_system_metrics), tags=tags)
    return active, previous is not None


def _summary(cfg: DictConfig, result: dict[str, Any], reports: Path, uri: str, exp_id: str) -> str:
    """The line that ends every training: what was trained, how well, where everything went."""
    best = result.get("best_val_acc")
    score = f"best val/acc {best:.4f}" if best is not None else (
        f"val/acc {result['val/acc']:.4f}" if "val/acc" in result else "no validation score")
    model = result["best_checkpoint"] or "none saved (no checkpoint in this mode)"
    kind = str(cfg.get("run_kind") or "adhoc")
    where = "" if kind == "pipeline" else f" ({kind} run, outputs in {cfg.get('run_dir') or Path(cfg.paths.models).parent}/)"
    epochs = result["epochs"]
    return (f"Trained {cfg.model.arch} for {epochs} epoch{'s' if epochs != 1 else ''} in {result['seconds']}s{where}: "
            f"{score}. Model: {model}  Metrics: {reports}/metrics.json  "
            f"MLflow run: {result['run_id']} (experiment {exp_id}, {uri}; `make mlflow-ui` to browse)")


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    import mlflow

    t0 = time.time()
    root_logging_only()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    trainer_kw, channels_last = resolve_trainer_config(cfg.trainer)

    if not (Path(cfg.paths.prepared) / "labels.json").exists():
        from train.prepare import prepare

        log.info("no manifests in %s: running the prepare stage first", cfg.paths.prepared)
        prepare(cfg)
    dm = ManifestDataModule.from_config(cfg, pin_memory=trainer_kw.get("accelerator") in ("gpu", "cuda"))
    dm.setup("fit")
    spec = PreprocessSpec.from_data_config(cfg.data)
    model = ImageClassifier(
        net_cfg=OmegaConf.to_container(cfg.model.net, resolve=True),
        num_classes=dm.num_classes,
        in_channels=spec.channels,
        labels=dm.labels,
        preprocess=spec.to_dict(),
        optimizer=instantiate(cfg.model.optimizer),
        scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
        channels_last=channels_last,
    )

    models_dir = Path(cfg.paths.models)
    ckpt_dir = models_dir / "checkpoints"
    reports = Path(cfg.paths.reports) / "train"
    resuming = cfg.get("ckpt_path") is not None
    rank = _rank()
    if rank == 0 and not resuming and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # a fresh run never mixes with an old run's checkpoints

    uri = tracking.connect(cfg)
    data_ver = data_version(Path(cfg.paths.prepared))
    active = None
    if rank == 0:
        active, continued = _start_run(cfg, resuming)
        os.environ[tracking.RUN_ID_ENV] = active.info.run_id
        tracking.log_run_context(cfg, data_ver, continued=continued)
    run_id = os.environ[tracking.RUN_ID_ENV]

    logger = EpochMLFlowLogger(
        experiment_name=cfg.logger.experiment_name, tracking_uri=uri, run_id=run_id, log_model=False
    )
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor=cfg.callbacks.checkpoint.monitor,
        mode=cfg.callbacks.checkpoint.mode, save_last=True, enable_version_counter=False,
    )
    es = cfg.callbacks.early_stopping
    callbacks = [checkpoint, RunIdInCheckpoint(run_id),
                 EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta)]
    trainer = L.Trainer(logger=logger, callbacks=callbacks, deterministic=bool(cfg.deterministic), **trainer_kw)

    status = "FAILED"
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
        if not trainer.is_global_zero:
            return {}, {"trainer": trainer}
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if np.ndim(v.cpu()) == 0}
        best_path = checkpoint.best_model_path or ""
        result: dict[str, Any] = {
            "epochs": int(trainer.current_epoch),
            "best_val_acc": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
            **{k: metrics[k] for k in ("train/loss", "val/loss", "val/acc", "val/f1_macro") if k in metrics},
            "run_id": run_id,
            "data_version": data_ver,
            "seconds": round(time.time() - t0, 1),
        }
        if best_path and cfg.logger.log_checkpoint:
            mlflow.log_artifact(best_path, "checkpoints")
        result["best_checkpoint"] = best_path
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "metrics.json").write_text(json.dumps(
            {k: v for k, v in result.items() if k not in ("run_id", "best_checkpoint", "data_version")}, indent=2) + "\n")
        (reports / "run.json").write_text(json.dumps(
            {"run_id": run_id, "tracking_uri": uri, "experiment": cfg.logger.experiment_name,
             "best_checkpoint": best_path, "data_version": data_ver}, indent=2) + "\n")
        _write_history(run_id, reports / "history.csv")
        mlflow.log_artifact(str(reports / "history.csv"))
        exp_id = mlflow.get_run(run_id).info.experiment_id
        print(_summary(cfg, result, reports, uri, exp_id), flush=True)
        status = "KILLED" if trainer.interrupted else "FINISHED"
        return result, {"trainer": trainer, "model": model, "datamodule": dm, "run_id": run_id}
    finally:
        if active is not None:
            mlflow.end_run(status=status)
            os.environ.pop(tracking.RUN_ID_ENV, None)
