"""Shared fixtures: tiny datasets made from the bundled digits, tiny configs, a real MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import DictConfig

from helpers import REPO, make_cfg

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    """Entry points resolve conf/ and relative paths from the repository root."""
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def digits_small(tmp_path_factory) -> Path:
    """20 real digit scans per class (200 PNGs)."""
    from train.raw import write_digits

    root = tmp_path_factory.mktemp("digits") / "digits"
    write_digits(root, per_class=20)
    return root


@pytest.fixture
def prepared_cfg(tmp_path, digits_small) -> DictConfig:
    """A tiny config whose prepare stage has run."""
    from train.prepare import prepare

    cfg = make_cfg(tmp_path, digits_small)
    prepare(cfg)
    return cfg


@pytest.fixture(scope="session")
def digits_full(tmp_path_factory) -> Path:
    """All 1,797 real digit scans."""
    from train.raw import write_digits

    root = tmp_path_factory.mktemp("digits_full") / "digits"
    write_digits(root)
    return root


def pytest_addoption(parser):
    parser.addoption("--model-uri", default=None,
                     help="registered model the tests/model suite checks (default: the project's champion in its "
                          "store, see visionops.project; built in a temporary store if absent)")


@pytest.fixture(scope="session")
def digits_det_small(tmp_path_factory) -> Path:
    """60 images of the bundled detection dataset (COCO), generated as the raw stage does."""
    from train.tasks.detection.synth import generate

    root = tmp_path_factory.mktemp("digits_det") / "digits_det"
    generate(root, n=60, seed=3)
    return root
