"""Detection through the shared stages for real: a tiny detector trained a few steps on generated
COCO data into a temporary MLflow store, evaluated (COCO metrics, PR curves, confusion matrix with
background), resumed, reproducible from its seed, and trained by two DDP processes on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from helpers import run_cli
from train.evaluate import evaluate
from train.fit import train
from train.tasks import get_task
from visionops.config import compose

pytestmark = pytest.mark.integration


def det_overrides(tmp: Path, root: Path, extra: list[str] | None = None) -> list[str]:
    return [
        "task=detection", "trainer=cpu", f"data.root={root}",
        f"paths.prepared={tmp / 'prepared'}", f"paths.models={tmp / 'models'}", f"paths.reports={tmp / 'reports'}",
        "data.validation.min_per_class=1", "data.batch_size=8", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "task.log_images=4",
        f"logger.tracking_uri=sqlite:///{tmp / 'mlflow.db'}", "logger.log_system_metrics=false",
        *(extra or []),
    ]


def det_cfg(tmp: Path, root: Path, extra: list[str] | None = None):
    return compose(det_overrides(tmp, root, extra))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_det_small):
    tmp = tmp_path_factory.mktemp("det")
    cfg = det_cfg(tmp, digits_det_small, ["trainer.max_epochs=2"])
    get_task("detection").prepare(cfg)
    metrics, objects = train(cfg)
    return tmp, cfg, metrics, objects


def client(tmp: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")


def test_losses_and_validation_map_per_epoch_and_a_picture_in_mlflow(trained):
    tmp, _cfg, metrics, _ = trained
    c = client(tmp)
    run = c.get_run(metrics["run_id"])
    assert run.data.params["model.arch"] == "centernet" and run.data.params["task.name"] == "detection"
    assert run.data.tags["data_version"] == metrics["data_version"]
    for key in ("val/map_50", "val/map", "val/map_75", "val/loss", "train/loss", "train/loss_heatmap", "train/loss_box", "train/loss_class"):
        assert [m.step for m in c.get_metric_history(run.info.run_id, key)] == [0, 1], key
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "checkpoints", "history.csv", "val_images"} <= artifacts
    pictures = [a.path for a in c.list_artifacts(run.info.run_id, "val_images")]
    assert pictures == ["val_images/epoch_000.jpg", "val_images/epoch_001.jpg"]
    m = json.loads((tmp / "reports" / "train" / "metrics.json").read_text())
    assert m["epochs"] == 2 and 0.0 <= m["best_val_map_50"] <= 1.0 and "val/map_50" in m
    assert (tmp / "reports" / "train" / "history.csv").read_text().splitlines()[0] == (
        "epoch,train_loss,val_loss,val_map,val_map_50")


def test_evaluate_writes_coco_metrics_curves_and_confusion(trained):
    tmp, cfg, metrics, _ = trained
    m = evaluate(cfg)
    out = tmp / "reports" / "evaluate"
    headline = json.loads((out / "metrics.json").read_text())
    assert list(headline) == ["test/map", "test/map_50", "test/map_75", "test/mar_100"]
    details = json.loads((out / "details.json").read_text())
    for key in ("test/map_small", "test/map_medium", "test/map_large", "test/mar_1", "test/mar_10", "test/mar_large"):
        assert key in details
    assert set(details["per_class"]) == {str(d) for d in range(10)}
    assert set(details["per_class"]["3"]) == {"ap", "ap_50", "ar_100", "objects"}
    assert sum(c["objects"] for c in details["per_class"].values()) == details["test/objects"] > 0
    assert (out / "pr_curves.csv").read_text().startswith("class,recall,precision\n")
    confusion = (out / "confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and any("background" in row for row in confusion[1:])
    assert (out / "confusion.png").stat().st_size > 5000 and (out / "predictions.jpg").stat().st_size > 5000
    val = json.loads((out / "validation.json").read_text())
    assert 0.0 <= val["val/map_50"] <= 1.0 and "per_class" in val
    run = client(tmp).get_run(metrics["run_id"])
    assert run.data.metrics["test/map_50"] == pytest.approx(m["test/map_50"])
    assert [p.step for p in client(tmp).get_metric_history(run.info.run_id, "val/map_50")] == [0, 1], "curves untouched"
    assert {"plots/confusion.png", "plots/pr_curves.csv", "plots/predictions.jpg"} <= {
        a.path for a in client(tmp).list_artifacts(run.info.run_id, "plots")}


def test_resume_continues_the_epoch_count_in_the_same_run(trained):
    tmp, cfg, metrics, _ = trained
    last = tmp / "models" / "checkpoints" / "last.ckpt"
    m2, objects = train(det_cfg(tmp, Path(cfg.data.root), ["trainer.max_epochs=3", f"ckpt_path={last}"]))
    assert objects["trainer"].current_epoch == 3 and m2["run_id"] == metrics["run_id"]
    steps = {m.step for m in client(tmp).get_metric_history(m2["run_id"], "val/map_50")}
    assert steps == {0, 1, 2}


def test_same_seed_same_detector(tmp_path, trained):
    """Seeded augmentation (albumentations' own RNG) and deterministic kernels: the same weights."""
    tmp, cfg, _, _ = trained
    weights = []
    for i in range(2):
        extra = [f"paths.prepared={tmp / 'prepared'}", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
        _, objects = train(det_cfg(tmp_path / str(i), Path(cfg.data.root), extra))
        weights.append(objects["model"].net.heatmap[-1].weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_two_process_ddp_detection_on_cpu(tmp_path, trained):
    tmp, cfg, _, _ = trained
    args = [o for o in det_overrides(tmp_path, Path(cfg.data.root)) if not o.startswith("trainer=")]
    r = run_cli(["-m", "train", *args, f"paths.prepared={tmp / 'prepared'}", "trainer=ddp", "trainer.accelerator=cpu",
                 "trainer.devices=2", "trainer.precision=32-true", "hydra.run.dir=" + str(tmp_path / "hydra")],
                timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "distributed_backend=gloo" in r.stdout + r.stderr
    run_info = json.loads((tmp_path / "reports" / "train" / "run.json").read_text())
    c = client(tmp_path)
    runs = c.search_runs([c.get_experiment_by_name("visionops").experiment_id])
    assert [x.info.run_id for x in runs] == [run_info["run_id"]], "both ranks log into one MLflow run"
    assert len(c.get_metric_history(run_info["run_id"], "val/map_50")) == 1
    assert (tmp_path / "models" / "checkpoints" / "best.ckpt").exists()
