"""What the product generates while you use it never shows up in `git status`."""

from __future__ import annotations

import subprocess

import pytest

from helpers import REPO

GENERATED = [
    "dvc_plots/index.html",                         # dvc plots show / make plots
    "dvc_plots/static/workspace_reports_evaluate_confusion.png",
    ".dvc/plots/offline.html",                      # the offline page template make writes
    "reports/notebooks/learning_curves.png",        # the notebook's figures
    "logs/demo-20261202-101500/server.log",         # the demo loop's server log
    "bentoml-serve.log",                            # any server or job log
    "outputs/train/2026-12-02_10-15-00/models/checkpoints/best.ckpt",  # ad-hoc and debug runs
    "mlflow.db",
]


@pytest.mark.parametrize("path", GENERATED)
def test_generated_files_are_ignored(path):
    r = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO, check=False)
    assert r.returncode == 0, f"{path} would show up in git status"


def test_the_plot_templates_we_ship_are_not_ignored():
    r = subprocess.run(["git", "check-ignore", "-q", "--no-index", ".dvc/plots/class_counts.json"], cwd=REPO, check=False)
    assert r.returncode == 1
