"""`make clean` in a temporary git copy of the repository: the generated files go; every tracked
file, the user's state (environment, MLflow store, prediction log, monitor reports, kept images)
and DVC's outputs stay."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = pytest.mark.integration

GENERATED = [
    "outputs/2026-01-01/12-00-00/.hydra/config.yaml",  # Hydra run folders
    "multirun/2026-01-01/12-00-00/0/train.log",
    "lightning_logs/version_0/metrics.csv",
    "dvc_plots/index.html",                            # dvc plots show
    ".pytest_cache/v/cache/lastfailed",
    ".ruff_cache/0.15.0/123456",
    "__pycache__/conftest.cpython-311.pyc",
    "src/train/__pycache__/pipeline.cpython-311.pyc",
    "tests/code/__pycache__/test_images.cpython-311-pytest-9.0.pyc",
    "notebooks/.ipynb_checkpoints/compare_runs-checkpoint.ipynb",
]
KEPT = [
    ".venv/bin/python",
    ".venv/lib/python3.11/site-packages/numpy/__pycache__/version.cpython-311.pyc",
    "mlflow.db",
    "mlruns/1/models/m-abc/artifacts/MLmodel",
    "logs/predictions/predictions-20260101-host-1.jsonl",
    "monitoring/workspace/project/snapshots/run.json",
    "reports/monitor/2026-01-01/drift.json",
    "data/incoming/2026-01-01/3/img.png",
    "data/curated/3/img.png",
    "data/prepared/manifest.csv",          # DVC outputs: DVC's to manage
    "data/reference/reference.parquet",
    "models/checkpoints/best.ckpt",
    "reports/train/run.json",
    ".dvc/cache/files/md5/ab/cdef0123",
    "notes.md",                            # the user's own, not yet added to git
    "src/train/new_stage.py",
]
TRACKED_IN_A_CLEANED_FOLDER = "outputs/README.md"  # forced into git: git's word wins over the folder's name


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    dst = tmp_path / "visionops"
    for f in _git(REPO, "ls-files", "-z").split("\0"):
        if f and (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    _git(dst, "init", "-q")
    (dst / TRACKED_IN_A_CLEANED_FOLDER).parent.mkdir(parents=True)
    (dst / TRACKED_IN_A_CLEANED_FOLDER).write_text("kept\n")
    _git(dst, "add", "-A")
    _git(dst, "add", "-f", TRACKED_IN_A_CLEANED_FOLDER)
    _git(dst, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "copy")
    for f in GENERATED + KEPT:
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        (dst / f).write_text("x\n")
    return dst


def _make_clean(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "clean"], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


def test_make_clean_removes_generated_files_and_nothing_tracked_or_the_users(repo_copy):
    tracked = [f for f in _git(repo_copy, "ls-files", "-z").split("\0") if f]
    r = _make_clean(repo_copy)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [f for f in tracked if not (repo_copy / f).is_file()] == [], "make clean removed tracked files"
    assert _git(repo_copy, "status", "--porcelain", "--untracked-files=no") == ""
    assert [f for f in GENERATED if (repo_copy / f).exists()] == []
    assert not (repo_copy / "outputs" / "2026-01-01").exists() and not (repo_copy / "src/train/__pycache__").exists()
    assert [f for f in KEPT if not (repo_copy / f).is_file()] == []
    assert "removed src/train/__pycache__/" in r.stdout  # says what it removed
    again = _make_clean(repo_copy)  # nothing left to do is not an error
    assert again.returncode == 0 and again.stdout == ""
