"""Hyperparameter search with Hydra's Optuna sweeper: trials are MLflow runs under one parent."""

from __future__ import annotations

import mlflow
import pytest

from helpers import make_cfg, run_cli, tiny_overrides
from train.prepare import prepare

pytestmark = pytest.mark.integration


def test_optuna_sweep_groups_trials_under_a_parent_run(tmp_path, digits_small):
    prepare(make_cfg(tmp_path, digits_small))
    r = run_cli(["-m", "train", *tiny_overrides(tmp_path, digits_small), "hparams_search=optuna",
                 "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("visionops")
    runs = client.search_runs([exp.experiment_id])
    parents = [x for x in runs if x.data.tags.get("visionops.kind") == "sweep"]
    assert len(parents) == 1
    trials = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(trials) == 3
    assert len({(t.data.params["model.optimizer.lr"], t.data.params["data.batch_size"],
                 t.data.params["augment.name"]) for t in trials}) == 3, "each trial tries different values"
    assert (tmp_path / "sweep" / "optimization_results.yaml").exists()
