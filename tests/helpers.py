"""Helpers shared by the tests: tiny configs, a real pipeline run, subprocess calls."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]

def tiny_overrides(tmp: Path, data_root: Path, extra: list[str] | None = None) -> list[str]:
    return [
        "trainer=cpu",
        f"paths.prepared={tmp / 'prepared'}",
        f"paths.models={tmp / 'models'}",
        f"paths.reports={tmp / 'reports'}",
        f"data.root={data_root}",
        "data.validation.min_per_class=3",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "model.net.width=8",
        f"logger.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
        "logger.log_system_metrics=false",
        *(extra or []),
    ]


def make_cfg(tmp: Path, data_root: Path, extra: list[str] | None = None) -> DictConfig:
    from train.config import compose

    return compose(tiny_overrides(tmp, data_root, extra))


def run_cli(args: list[str], cwd: Path = REPO, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def bin_path(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else (shutil.which(name) or name)


def pipeline_cfg(store: Path, work: Path, data_root: Path, extra: list[str] | None = None) -> DictConfig:
    """A config whose runs share one MLflow store and one prepared split (store/), while each
    model's checkpoints, exports and reports live in its own folder (work/)."""
    from train.config import compose

    return compose([
        "trainer=cpu", f"data.root={data_root}", f"paths.prepared={store / 'prepared'}",
        f"paths.models={work / 'models'}", f"paths.reports={work / 'reports'}",
        f"logger.tracking_uri=sqlite:///{store / 'mlflow.db'}", "logger.log_system_metrics=false",
        "trainer.enable_progress_bar=false", "export.latency.runs=50",
        # a narrow small CNN keeps tests fast; torchvision backbones have no width
        *([] if any(e.startswith("model=") for e in (extra or [])) else ["model.net.width=8"]),
        *(extra or []),
    ])


def build_version(store: Path, work: Path, data_root: Path, extra: list[str] | None = None) -> dict:
    """prepare (once) -> train -> evaluate -> export -> register: one new registry version."""
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
