"""Helpers shared by the tests: tiny configs, a real pipeline run, subprocess calls, and builds
started in the background."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from train.build import build_version, pipeline_cfg  # shared with the benchmarks

__all__ = ["REPO", "Background", "bin_path", "build_version", "make_cfg", "pipeline_cfg", "run_cli", "tiny_overrides"]
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


class Background:
    """A command started now, in a process group of its own, its output kept in files under `logs`;
    `wait()` returns what subprocess.run would have. `path` is the folder it builds in. The tests
    start their slowest self-contained builds this way as the session begins (tests/conftest.py,
    `_head_starts`), to run on the core that the quick tests leave idle."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], logs: Path, path: Path):
        self.args, self.path = args, path
        self._out, self._err = logs / "stdout.txt", logs / "stderr.txt"
        self._started = time.monotonic()
        with open(self._out, "wb") as out, open(self._err, "wb") as err:
            self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True)

    def wait(self, timeout: float = 600) -> subprocess.CompletedProcess:
        """Its result, once it has finished; killed and TimeoutExpired `timeout` s after it started."""
        try:
            self.proc.wait(timeout=max(0.0, self._started + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        return subprocess.CompletedProcess(self.args, self.proc.returncode, self._out.read_text(errors="replace"),
                                           self._err.read_text(errors="replace"))

    def stop(self) -> None:
        """Kill it and everything it started, if it is still running."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


if __name__ == "__main__":  # python tests/helpers.py STORE WORK DATA [OVERRIDE ...]: build_version; its verdict as JSON
    import json

    store, work, data, *extra = sys.argv[1:]
    print(json.dumps(build_version(Path(store), Path(work), Path(data), extra), default=str))
