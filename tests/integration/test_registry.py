"""The registry gate for real, in a temporary MLflow SQLite store: a worse challenger does not
take the champion alias, a better one does, a forced promotion records its reason, a rollback
restores the previous version; bad input fails clearly and moves no alias."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest

from helpers import build_version, run_cli

pytestmark = pytest.mark.integration
NAME = "visionops-digits"
V3 = ["trainer.max_epochs=4", "model.net.width=16"]  # the better challenger: far above v1's two narrow epochs


@pytest.fixture(scope="module")
def registry(tmp_path_factory, digits_full):
    store = tmp_path_factory.mktemp("registry")
    v1 = build_version(store, store / "v1", digits_full, ["trainer.max_epochs=2"])
    v2 = build_version(store, store / "v2", digits_full, ["trainer.max_epochs=1", "trainer.limit_train_batches=1"])
    v3 = build_version(store, store / "v3", digits_full, V3)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    return store, digits_full, client, (v1, v2, v3)


def _champion(client) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def _promote(store: Path, *args: str):
    return run_cli(["-m", "train.promote", *args, f"logger.tracking_uri=sqlite:///{store / 'mlflow.db'}",
                    f"paths.prepared={store / 'prepared'}", f"paths.reports={store / 'promote'}"])


def test_first_version_becomes_champion(registry):
    _, _, _, (v1, _, _) = registry
    assert v1["decision"] == "promoted to champion" and v1["champion"] is None


def test_worse_challenger_does_not_take_the_alias(registry):
    _, _, client, (_v1, v2, _) = registry
    assert v2["passed"] is False and v2["gates"]["metric"]["passed"] is False
    assert v2["gates"]["metric"]["ci_high"] < 0, "one training step is clearly worse"
    assert v2["decision"].startswith("kept as challenger")
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "2"


def test_better_challenger_takes_the_alias(registry):
    store, _, client, (v1, _, v3) = registry
    assert v3["passed"] and v3["champion"]["version"] == "1"
    assert v3["challenger"]["accuracy"] > v1["challenger"]["accuracy"]
    assert _champion(client) == "3"
    verdict = json.loads((store / "v3" / "reports" / "register" / "verdict.json").read_text())
    assert set(verdict["gates"]) == {"parity", "latency", "metric"}
    assert "# visionops-digits version 3" in client.get_model_version(NAME, "3").description


def test_version_tags_and_artifacts(registry):
    _, _, client, _ = registry
    mv = client.get_model_version(NAME, "3")
    assert {"git_commit", "data_version", "run_id", "config_hash"} <= set(mv.tags)
    run_artifacts = {a.path for a in client.list_artifacts(mv.tags["run_id"], "registry/v3")}
    assert "registry/v3/model_card.md" in run_artifacts


def test_pyfunc_loads_and_predicts_like_onnx(registry):
    """What `mlflow models serve` would run: probabilities from the pyfunc flavour."""
    _store, _, client, _ = registry
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    probs = model.predict(x)
    assert probs.shape == (3, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert model.metadata.get_input_schema() is not None


def test_forced_promotion_records_reason_then_rollback(registry):
    store, _, client, _ = registry
    r = _promote(store, "version=2")
    assert r.returncode == 0 and "kept as challenger" in r.stdout and _champion(client) == "3"
    r = _promote(store, "version=2", "force=true")
    assert r.returncode == 2 and "needs a reason" in r.stderr and _champion(client) == "3"
    r = _promote(store, "version=2", "force=true", "reason=incident-42 hotfix")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _champion(client) == "2"
    assert client.get_model_version(NAME, "2").tags["promotion.forced_reason"] == "incident-42 hotfix"
    assert json.loads((store / "promote" / "register" / "verdict.json").read_text())["reason"] == "incident-42 hotfix"
    # Roll back: the same command with the previous version; it beats v2, so the gates pass.
    r = _promote(store, "version=3")
    assert r.returncode == 0 and _champion(client) == "3"


@pytest.mark.parametrize("args, message", [
    (["version=7"], "has no version 7"),
    (["version=1", "registry.model_name=no-such-model"], "no registered model 'no-such-model'"),
])
def test_missing_model_or_version_is_a_clear_error(registry, args, message):
    store, _, client, _ = registry
    r = _promote(store, *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert _champion(client) == "3"


def test_missing_alias_is_a_clear_error(registry):
    from visionops.model_store import ModelStoreError, fetch

    _, _, client, _ = registry
    with pytest.raises(ModelStoreError, match="has no alias @staging"):
        fetch(f"models:/{NAME}@staging", tracking_uri=client.tracking_uri)


def test_unreachable_tracking_server_is_a_clear_error(registry):
    _store, _, client, _ = registry
    r = run_cli(["-m", "train.promote", "version=1", "logger.tracking_uri=http://127.0.0.1:9"])
    assert r.returncode == 2 and "cannot reach the MLflow tracking server" in r.stderr
    assert "Traceback" not in r.stderr and _champion(client) == "3"


def test_corrupt_model_artifact_moves_nothing(registry, tmp_path):
    store, _data_root, client, _ = registry
    # A version whose ONNX file is garbage: its artifacts are corrupted in the store itself.
    mv = client.get_model_version(NAME, "1")
    mlflow.set_tracking_uri(client.tracking_uri)  # MLflow resolves models:/ URIs in the process-wide registry
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/1", dst_path=str(tmp_path / "dl"),
                                                     tracking_uri=client.tracking_uri))
    fmt = json.loads((local / "artifacts" / "bundle.json").read_text())["serving_format"]
    fname = {"onnx_fp32": "model.onnx", "onnx_int8": "model.int8.onnx"}[fmt]
    model_id = mv.source.split("/")[-1]  # MLflow 3 keeps logged models under mlruns/<exp>/models/<model id>/
    stored = [p for p in (store / "mlruns").rglob(fname) if model_id in str(p)]
    assert stored, f"could not find the stored {fname} of version 1 ({mv.source})"
    backup = tmp_path / "backup.onnx"
    shutil.copy(stored[0], backup)
    try:
        stored[0].write_bytes(b"not an onnx model")
        r = _promote(store, "version=1", "force=true", "reason=test")
        assert r.returncode == 2 and "corrupt" in r.stderr and "Traceback" not in r.stderr
        assert _champion(client) == "3"
    finally:
        shutil.copy(backup, stored[0])


def _own_tmp(monkeypatch, tmp_path: Path) -> Path:
    """This process's temporary directory, where fetched model copies go, moved into tmp_path."""
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def _model_copies(tmp: Path) -> list[Path]:
    return sorted(tmp.rglob("bundle.json"))  # a fetched version's files, whatever the folder layout


def test_register_and_promote_leave_no_model_copies(registry, tmp_path, monkeypatch):
    """register and promote fetch the challenger and the champion to gate them: the copies go
    when they are done, whether the gate passes or not (on a copy of the store: aliases here stay)."""
    from omegaconf import open_dict

    from helpers import pipeline_cfg
    from train.promote import promote
    from train.register import register

    store, data_root, _, _ = registry
    shutil.copy(store / "mlflow.db", tmp_path / "mlflow.db")
    cfg = pipeline_cfg(store, store / "v3", data_root, V3)
    with open_dict(cfg):
        cfg.logger.tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        cfg.paths.reports = str(tmp_path / "reports")
    shutil.copytree(store / "v3" / "reports" / "train", tmp_path / "reports" / "train")
    tmp = _own_tmp(monkeypatch, tmp_path)
    verdict = register(cfg)  # v3's export again: version 4, gated against champion v3
    assert verdict["challenger"]["version"] == "4" and verdict["champion"]["version"] == "3"
    assert _model_copies(tmp) == []
    assert promote(cfg, "2")["decision"].startswith("kept as challenger")
    assert _model_copies(tmp) == []
    with pytest.raises(Exception, match="needs a reason"):
        promote(cfg, "2", force=True)
    with pytest.raises(Exception, match="has no version 9"):
        promote(cfg, "9")
    assert _model_copies(tmp) == []


def test_copies_left_by_a_killed_process_go_at_the_next_fetch(registry, tmp_path, monkeypatch):
    from visionops.model_store import COPIES_DIR, fetch

    _, _, client, _ = registry
    tmp = _own_tmp(monkeypatch, tmp_path)
    fetch_and_die = ("import os, signal; from visionops.model_store import fetch; "
                     f"fetch('models:/{NAME}@champion', tracking_uri={client.tracking_uri!r}); "
                     "os.kill(os.getpid(), signal.SIGKILL)")
    killed = run_cli(["-c", fetch_and_die], env={"TMPDIR": str(tmp)})
    assert killed.returncode == -9
    left = _model_copies(tmp)
    assert len(left) == 1 and COPIES_DIR in str(left[0]), "the killed process's copy is where fetch puts copies"
    with fetch(f"models:/{NAME}@champion", tracking_uri=client.tracking_uri) as local:
        assert _model_copies(tmp) == [local.directory / "artifacts" / "bundle.json"], "the orphan is gone"
        assert local.load() is not None
    assert _model_copies(tmp) == []
