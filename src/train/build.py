"""One registered version, built in-process: prepare (once) -> train -> evaluate -> export ->
register, without DVC. The tests and the benchmarks get their models this way.

    build_version(store, store / "v1", data_root, ["model.net.width=16"])

`store` holds what versions share (the MLflow SQLite store, the prepared split); `work` holds one
model's checkpoints, exports and reports. The defaults keep it quick: the CPU trainer, no progress
bar or system metrics, a short latency measurement and a narrow small CNN (torchvision backbones
have no width); `extra` overrides any of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def pipeline_cfg(store: Path, work: Path, data_root: Path, extra: list[str] | None = None) -> DictConfig:
    """The composed config of a version built in `work` against the shared `store`."""
    from visionops.config import compose

    return compose([
        "trainer=cpu", f"data.root={data_root}", f"paths.prepared={store / 'prepared'}",
        f"paths.models={work / 'models'}", f"paths.reports={work / 'reports'}",
        f"logger.tracking_uri=sqlite:///{store / 'mlflow.db'}", "logger.log_system_metrics=false",
        "trainer.enable_progress_bar=false", "export.latency.runs=50",
        *([] if any(e.startswith("model=") for e in (extra or [])) else ["model.net.width=8"]),
        *(extra or []),
    ])


def build_version(store: Path, work: Path, data_root: Path, extra: list[str] | None = None) -> dict[str, Any]:
    """prepare (once per store) -> train -> evaluate -> export -> register; returns the gate's verdict."""
    from train.evaluate import evaluate
    from train.export import export
    from train.fit import train
    from train.prepare import prepare
    from train.register import register

    cfg = pipeline_cfg(store, work, data_root, extra)
    if not (store / "prepared" / "labels.json").exists():
        prepare(cfg)
    train(cfg)
    evaluate(cfg)
    export(cfg)
    return register(cfg)
