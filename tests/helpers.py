"""Helpers shared by the tests: tiny configs, a real pipeline run, subprocess calls."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from train.build import build_version, pipeline_cfg  # shared with the benchmarks

__all__ = ["REPO", "bin_path", "build_version", "make_cfg", "pipeline_cfg", "run_cli", "tiny_overrides"]
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
    from visionops.config import compose

    return compose(tiny_overrides(tmp, data_root, extra))


def run_cli(args: list[str], cwd: Path = REPO, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
                          check=False)


def bin_path(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else (shutil.which(name) or name)
