"""A tiny real training run into a temporary MLflow SQLite store, read back through the client;
evaluation; and resume from a checkpoint continuing the epoch count."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from helpers import make_cfg
from train.evaluate import evaluate
from train.fit import train
from train.prepare import prepare

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_small):
    tmp = tmp_path_factory.mktemp("run")
    cfg = make_cfg(tmp, digits_small, ["trainer.max_epochs=2", "logger.run_name=tiny"])
    prepare(cfg)
    metrics, objects = train(cfg)
    return tmp, cfg, metrics, objects


def test_run_params_metrics_and_artifacts_read_back(trained):
    tmp, _cfg, metrics, _objects = trained
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    run = client.get_run(metrics["run_id"])
    p = run.data.params
    assert p["model.arch"] == "small_cnn" and p["trainer.max_epochs"] == "2" and p["seed"] == "42"
    assert p["model.optimizer.lr"] == "0.003"
    tags = run.data.tags
    assert tags["data_version"] == metrics["data_version"] and len(tags["git_commit"]) >= 7
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert [m.step for m in history] == [0, 1], "one val/acc point per epoch"
    assert "train/loss" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "checkpoints", "history.csv"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.ckpt"]
    config_yaml = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp))).read_text()
    assert "arch: small_cnn" in config_yaml


def test_outputs_on_disk(trained):
    tmp, _cfg, _metrics, _ = trained
    assert (tmp / "models" / "checkpoints" / "best.ckpt").exists()
    assert (tmp / "models" / "checkpoints" / "last.ckpt").exists()
    m = json.loads((tmp / "reports" / "train" / "metrics.json").read_text())
    assert m["epochs"] == 2 and 0.0 <= m["best_val_acc"] <= 1.0
    assert (tmp / "reports" / "train" / "history.csv").read_text().count("\n") == 3
    # Training trains: judging the best checkpoint is the evaluate stage's (below).
    assert "val/ece" not in m and sorted(p.name for p in (tmp / "reports" / "train").iterdir()) == [
        "history.csv", "metrics.json", "run.json"]


def test_evaluate_writes_metrics_plots_and_logs_to_the_run(trained):
    """Test split: the metrics; validation split: the best checkpoint's calibration and confusion
    matrix. Both logged into the training's MLflow run, leaving its per-epoch curves alone."""
    tmp, cfg, metrics, _ = trained
    m = evaluate(cfg)
    assert {"test/acc", "test/f1_macro", "test/ece", "per_class"} <= set(m)
    assert set(m["per_class"]) == {str(i) for i in range(10)}
    out = tmp / "reports" / "evaluate"
    assert (out / "confusion.png").stat().st_size > 5000
    assert (out / "confusion.csv").read_text().startswith("actual,predicted\n")
    val = json.loads((out / "validation.json").read_text())
    assert 0.0 <= val["val/ece"] <= 1.0 and set(val["per_class"]) == set(m["per_class"])
    assert (out / "confusion_val.png").stat().st_size > 5000
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    run = client.get_run(metrics["run_id"])
    assert run.data.metrics["test/acc"] == pytest.approx(m["test/acc"])
    assert run.data.metrics["val/ece"] == pytest.approx(val["val/ece"])
    assert [p.step for p in client.get_metric_history(run.info.run_id, "val/acc")] == [0, 1], "curves untouched"
    assert {"plots/confusion.png", "plots/confusion_val.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "plots")}


def test_resume_continues_the_epoch_count_in_the_same_run(trained):
    tmp, cfg, metrics, _ = trained
    last = tmp / "models" / "checkpoints" / "last.ckpt"
    cfg2 = make_cfg(tmp, Path(cfg.data.root), ["trainer.max_epochs=3", f"ckpt_path={last}"])
    m2, objects = train(cfg2)
    assert objects["trainer"].current_epoch == 3
    assert m2["run_id"] == metrics["run_id"], "the checkpoint names its MLflow run: the resume continues it"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(m2["run_id"], "val/acc")]
    # One history, epochs 0..2 (Lightning re-validates the restored epoch 1 before training epoch 2).
    assert sorted(set(steps)) == [0, 1, 2], steps
    run = client.get_run(m2["run_id"])
    assert run.data.tags["resumed_from"] == str(last) and run.info.status == "FINISHED"
    assert "trainer.max_epochs: 2 -> 3" in run.data.tags["resumed.changed"]
    assert run.data.params["trainer.max_epochs"] == "2", "params keep the first value (MLflow cannot change them)"


def test_same_seed_same_model(tmp_path, digits_small):
    """Seed + deterministic flag: two runs of one config train the same weights, augmentation
    included (albumentations has its own RNG), with DataLoader workers too."""
    import torch

    results, names = [], []
    for i in range(2):
        cfg = make_cfg(tmp_path / str(i), digits_small, ["data.num_workers=2", "augment=strong"])
        metrics, objects = train(cfg)
        results.append((metrics["val/loss"], objects["model"].net.head[1].weight.detach().clone()))
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / str(i) / 'mlflow.db'}")
        names.append(client.get_run(metrics["run_id"]).info.run_name)
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])
    # Same seed, same weights, but two runs the runs list can tell apart (MLflow's random names
    # come from Python's `random`, which the seed fixes).
    assert names[0] != names[1] and all(n.startswith("small_cnn-digits-") for n in names), names
