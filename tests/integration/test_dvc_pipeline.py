"""`dvc repro` for real, in a temporary git copy of the repository: the pipeline runs end to end,
and a second `dvc repro` with nothing changed does nothing, in seconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from helpers import REPO, bin_path

pytestmark = pytest.mark.integration


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("clone") / "visionops"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    # Shrink the run: the same pipeline, one short epoch of a narrow CNN.
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["trainer"].update(max_epochs=1, limit_train_batches=4, limit_val_batches=2, enable_progress_bar=False)
    params["model"]["net"]["width"] = 8
    params["logger"]["log_system_metrics"] = False
    params["export"]["latency"].update(runs=30, batch_runs=5)
    params["registry"]["gate"]["latency_budget_ms"] = 1000.0
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dst / "dvc.lock").unlink(missing_ok=True)
    _git(dst, "init", "-q")
    _git(dst, "add", "-A")
    _git(dst, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "copy")
    return dst


def _dvc(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "DVC_NO_ANALYTICS": "1", "BENTOML_HOME": str(cwd / ".bentoml"),
           "PATH": f"{Path(bin_path('python')).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([bin_path("dvc"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_repro_runs_every_stage_then_does_nothing(repo_copy):
    r = _dvc(repo_copy, "repro")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for stage in ("raw", "prepare", "train", "evaluate", "export", "register", "bento"):
        assert f"Running stage '{stage}'" in r.stdout
    m = json.loads((repo_copy / "reports" / "evaluate" / "metrics.json").read_text())
    assert 0.0 <= m["test/acc"] <= 1.0
    assert (repo_copy / "mlflow.db").exists(), "the default SQLite tracking store is at the repo root"
    assert (repo_copy / "dvc.lock").exists()
    verdict = json.loads((repo_copy / "reports" / "register" / "verdict.json").read_text())
    assert verdict["decision"] == "promoted to champion" and verdict["champion_after"] == "1"
    assert (repo_copy / "models" / "bento" / "visionops-gpu.bento").exists()

    t0 = time.time()
    again = _dvc(repo_copy, "repro")
    elapsed = time.time() - t0
    assert again.returncode == 0
    assert "Running stage" not in again.stdout
    assert "up to date" in again.stdout.lower()
    assert elapsed < 30, f"a no-op dvc repro took {elapsed:.1f}s"

    shown = _dvc(repo_copy, "metrics", "show", "--json")
    assert "test/acc" in shown.stdout


def test_exp_run_composes_conf_with_hydra(repo_copy):
    r = _dvc(repo_copy, "exp", "run", "-S", "augment=none", "-S", "trainer.max_epochs=1",
             "-S", "trainer.limit_train_batches=3", "-S", "trainer.limit_val_batches=2",
             "-S", "model.net.width=8", "-S", "logger.log_system_metrics=false",
             "-S", "trainer.enable_progress_bar=false")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    shown = _dvc(repo_copy, "exp", "show", "--json")
    assert shown.returncode == 0
    assert "augment" in shown.stdout and "test/acc" in shown.stdout
