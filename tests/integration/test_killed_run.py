"""A training killed mid-run (SIGKILL) does not leave its MLflow run RUNNING forever: the next use
of the store marks it FAILED (live processes and other hosts' runs are left alone), and resuming
from its last.ckpt continues the same MLflow run with a continuous epoch history."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import mlflow
import psutil
import pytest
import torch

from helpers import REPO, make_cfg, tiny_overrides
from train import tracking
from train.decision import client_for
from train.fit import train
from train.prepare import prepare

pytestmark = pytest.mark.integration


def _kill_after_first_checkpoint(tmp_path, digits_small) -> None:
    args = [*tiny_overrides(tmp_path, digits_small), "trainer.max_epochs=500", "callbacks.early_stopping.patience=1000"]
    proc = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    last = tmp_path / "models" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    try:
        while not last.exists():
            assert proc.poll() is None, f"training ended before its first checkpoint: {proc.stderr.read()[-3000:]}"
            assert time.time() < deadline, "no checkpoint after 300 s"
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_killed_run_is_marked_failed_then_resumed_in_the_same_run(tmp_path, digits_small):
    prepare(make_cfg(tmp_path, digits_small))
    _kill_after_first_checkpoint(tmp_path, digits_small)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("visionops").experiment_id
    (killed,) = client.search_runs([exp_id])
    assert killed.info.status == "RUNNING", "SIGKILL leaves the run open: nothing in the process could end it"

    # Two RUNNING runs that must be left alone: one whose process is alive (this one), and one of
    # another host, whose processes cannot be checked from here.
    me = psutil.Process()
    alive = client.create_run(exp_id, tags={tracking.HOST_TAG: socket.gethostname(), tracking.PID_TAG: str(me.pid),
                                            tracking.STARTED_TAG: f"{me.create_time():.2f}"})
    elsewhere = client.create_run(exp_id, tags={tracking.HOST_TAG: "another-host", tracking.PID_TAG: "1",
                                                tracking.STARTED_TAG: "1.00"})

    cfg = make_cfg(tmp_path, digits_small)
    tracking.connect(cfg)  # the next use of the store
    failed = client.get_run(killed.info.run_id)
    assert failed.info.status == "FAILED" and "ended without finishing" in failed.data.tags["visionops.failure"]
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"

    # register and promote use the store too: a run whose process has ended is marked there as well.
    ended = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    started = psutil.Process(ended.pid).create_time()
    ended.wait()
    orphan = client.create_run(exp_id, tags={tracking.HOST_TAG: socket.gethostname(),
                                             tracking.PID_TAG: str(ended.pid), tracking.STARTED_TAG: f"{started:.2f}"})
    client_for(cfg)
    assert client.get_run(orphan.info.run_id).info.status == "FAILED"

    last = tmp_path / "models" / "checkpoints" / "last.ckpt"
    done = int(torch.load(last, map_location="cpu", weights_only=False)["epoch"])
    final = done + 3
    metrics, _ = train(make_cfg(tmp_path, digits_small, [f"trainer.max_epochs={final}", f"ckpt_path={last}",
                                                         "callbacks.early_stopping.patience=1000"]))
    assert metrics["run_id"] == killed.info.run_id, "the resume continues the killed run"
    run = client.get_run(killed.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from"] == str(last)
    steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "val/acc")})
    assert steps == list(range(final)), f"epochs 0..{final - 1} without a gap: {steps}"
    assert "trainer.max_epochs: 500 -> " in run.data.tags["resumed.changed"]
