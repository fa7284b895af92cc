"""Lightning DDP for real: two CPU processes (gloo backend) finish one tiny epoch."""

from __future__ import annotations

import json

import mlflow
import pytest

from helpers import run_cli, tiny_overrides

pytestmark = pytest.mark.integration


def test_two_process_ddp_on_cpu(tmp_path, digits_small):
    r = run_cli(["-m", "train", *tiny_overrides(tmp_path, digits_small),
                 "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
                 "trainer.max_epochs=1", "hydra.run.dir=" + str(tmp_path / "hydra")], timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "distributed_backend=gloo" in out and "All distributed processes registered" in out
    run_info = json.loads((tmp_path / "reports" / "train" / "run.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("visionops").experiment_id])
    assert [x.info.run_id for x in runs] == [run_info["run_id"]], "both ranks log into one MLflow run"
    assert client.get_run(run_info["run_id"]).data.params["trainer.strategy"] == "ddp"
    assert (tmp_path / "models" / "checkpoints" / "best.ckpt").exists()
