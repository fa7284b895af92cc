"""One rule for which MLflow store and which model (visionops.project): the command's own key, then
the environment, then the project's params.yaml, then one fallback; and every command follows it."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import REPO
from visionops import project
from visionops.errors import VisionopsError

FLOWERS = """\
logger:
  tracking_uri: null
  experiment_name: visionops
registry:
  model_name: visionops-flowers
  champion_alias: champion
"""


@pytest.fixture
def flowers(tmp_path, monkeypatch) -> Path:
    """A project whose model follows its data (visionops-flowers), entered, with a clean environment."""
    (tmp_path / "params.yaml").write_text(FLOWERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("VISIONOPS_MODEL_URI", raising=False)
    return tmp_path


def test_model_key_beats_env_beats_project_beats_fallback(flowers, monkeypatch, tmp_path_factory):
    assert project.model_uri() == "models:/visionops-flowers@champion"
    monkeypatch.setenv("VISIONOPS_MODEL_URI", "models:/from-env@champion")
    assert project.model_uri() == "models:/from-env@champion"
    assert project.model_uri("models:/from-key/3") == "models:/from-key/3"
    monkeypatch.delenv("VISIONOPS_MODEL_URI")
    assert project.model_uri(registry={"model_name": "composed", "champion_alias": "gold"}) == "models:/composed@gold"
    monkeypatch.chdir(tmp_path_factory.mktemp("no_project"))
    assert project.model_uri() == project.FALLBACK_MODEL_URI == "models:/visionops-digits@champion"


def test_store_key_beats_env_beats_project_beats_fallback(flowers, monkeypatch, tmp_path_factory):
    assert project.tracking_uri() == "sqlite:///mlflow.db"  # the project is the working directory
    (flowers / "params.yaml").write_text(FLOWERS.replace("tracking_uri: null", "tracking_uri: http://mlflow:5000"))
    assert project.tracking_uri() == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert project.tracking_uri() == "sqlite:///env.db"
    assert project.tracking_uri("sqlite:///key.db") == "sqlite:///key.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path_factory.mktemp("no_project"))
    assert project.tracking_uri() == project.FALLBACK_TRACKING_URI == "sqlite:///mlflow.db"


def test_from_a_subfolder_the_store_is_the_projects(flowers, monkeypatch):
    """Not a new empty mlflow.db wherever the command happens to run (conf/logger says: at the root)."""
    (flowers / "notebooks").mkdir()
    monkeypatch.chdir(flowers / "notebooks")
    assert project.tracking_uri() == f"sqlite:///{flowers.resolve() / 'mlflow.db'}"
    assert project.model_uri() == "models:/visionops-flowers@champion"


def test_an_unresolved_interpolation_is_never_used_as_a_name(flowers, caplog):
    (flowers / "params.yaml").write_text(FLOWERS.replace("visionops-flowers", "visionops-${data.name}"))
    with caplog.at_level(logging.WARNING, "visionops.project"):
        assert project.model_uri() == project.FALLBACK_MODEL_URI
    assert "needs Hydra to resolve" in caplog.text and "make params" in caplog.text


def test_a_broken_params_file_is_one_line_that_says_what_to_do(flowers):
    (flowers / "params.yaml").write_text("registry: [unclosed\n")
    with pytest.raises(VisionopsError, match=r"cannot read .*params.yaml .*make params") as err:
        project.model_uri()
    assert "\n" not in str(err.value)


def test_serving_defaults_follow_the_project(flowers, monkeypatch):
    from serve.settings import Settings

    assert (Settings().model_uri, Settings().tracking_uri) == ("models:/visionops-flowers@champion", "sqlite:///mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert Settings().tracking_uri == "http://mlflow:5000"


def test_the_monitor_follows_its_config_then_the_environment(flowers, monkeypatch):
    from monitor.reference import model_uri, tracking_uri

    cfg = OmegaConf.create({"monitor": {"model_uri": None}, "logger": {"tracking_uri": None},
                            "registry": {"model_name": "bench-holdout", "champion_alias": "champion"}})
    assert (model_uri(cfg), tracking_uri(cfg)) == ("models:/bench-holdout@champion", "sqlite:///mlflow.db")
    monkeypatch.setenv("VISIONOPS_MODEL_URI", "models:/served@champion")
    assert model_uri(cfg) == "models:/served@champion"
    cfg.monitor.model_uri = "models:/watched/2"
    assert model_uri(cfg) == "models:/watched/2"


def test_batch_looks_for_the_projects_store(flowers, monkeypatch):
    from serve.batch import BatchError, run

    (flowers / "in").mkdir()
    (flowers / "in" / "a.png").write_bytes(b"not opened before the store is found")
    monkeypatch.chdir(flowers / "in")
    with pytest.raises(BatchError, match=re.escape(f"no MLflow store at sqlite:///{flowers.resolve() / 'mlflow.db'}")):
        run(flowers / "in", flowers / "out.csv", progress=False)


def test_no_hand_written_copies_of_the_defaults():
    """The fallback model and the store's name are written once, in visionops/project.py."""
    copies = [f"{p.relative_to(REPO)}:{i}" for p in [*(REPO / "src").rglob("*.py"), REPO / "Makefile"]
              if p.name != "project.py"
              for i, line in enumerate(p.read_text().splitlines(), 1)
              if "models:/visionops-digits" in line or "sqlite:///mlflow.db" in line]
    assert copies == []
