"""Shared fixtures: tiny datasets made from the bundled digits, tiny configs, and one small trained
champion in a real MLflow store that the serving, batch, packaging, monitoring and model tests read."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import DictConfig

from helpers import REPO, Background, make_cfg

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
# One thread per process for OpenMP and BLAS, here and in every subprocess the tests start (training,
# the drift job, DVC's stages): on 2 cores a second thread only helps when nothing else runs, and
# threads that spin waiting for a busy core made the drift job's t-SNE 4x slower (2.3 s -> 9 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """PyTorch in this process computes on one thread. The models here are tiny, and the tests'
    servers and subprocesses (or anything else on the machine) share the cores: with a thread per
    core, training the shared champion took 80-90 s instead of 15 s whenever another process was busy
    (its threads spin waiting for each other). Subprocesses keep PyTorch's default."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    """Entry points resolve conf/ and relative paths from the repository root."""
    monkeypatch.chdir(REPO)


# The environment the session started with. The pipeline's entry points point MLflow at their store
# process-wide (mlflow.set_tracking_uri, which also sets $MLFLOW_TRACKING_URI for subprocesses), and
# session- and module-scoped fixtures run them too: every test starts from this environment.
_SESSION_ENV = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test starts and leaves with the session's environment and MLflow's process-wide store
    unset, so that no test (nor a fixture that trained or registered before it) points a later test
    at its store. Autouse function fixtures run after the wider-scoped ones: what those set is undone."""
    _restore_environment()
    yield
    _restore_environment()


def _restore_environment() -> None:
    for key in {*os.environ, *_SESSION_ENV} - {"PYTEST_CURRENT_TEST"}:  # that one is pytest's
        if key not in _SESSION_ENV:
            del os.environ[key]
        elif os.environ.get(key) != _SESSION_ENV[key]:
            os.environ[key] = _SESSION_ENV[key]
    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as registry
        from mlflow.tracking._tracking_service import utils as tracking

        tracking._tracking_uri = registry._registry_uri = None  # as on import: mlflow reads the environment


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


@dataclass(frozen=True)
class Champion:
    """Version 1 of visionops-digits, @champion, in its own MLflow SQLite store. Read-only: a test
    that registers a version, moves an alias or writes next to it builds its own (helpers.build_version)."""

    store: Path  # mlflow.db, mlruns/ and the prepared split (prepared/)
    work: Path  # the version's checkpoints, exports and reports
    data: Path  # the images it was trained on (all 1,797 digits)
    overrides: tuple[str, ...]  # what build_version was given

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.store / 'mlflow.db'}"

    def fingerprint(self) -> tuple:
        """Every registered version, alias and run in the store, and every file under it."""
        con = sqlite3.connect(f"file:{self.store / 'mlflow.db'}?mode=ro", uri=True)
        try:
            rows = tuple(tuple(con.execute(q).fetchall()) for q in (
                "SELECT name, version, current_stage, source FROM model_versions ORDER BY name, version",
                "SELECT name, alias, version FROM registered_model_aliases ORDER BY name, alias",
                "SELECT run_uuid, status FROM runs ORDER BY run_uuid"))
        finally:
            con.close()
        files = tuple(sorted((str(p.relative_to(self.store)), p.stat().st_size) for p in self.store.rglob("*")
                             if p.is_file() and p.name != "mlflow.db"))
        return rows, files


# Wide enough and trained long enough for tests/model's behaviour checks (a one-pixel shift, a JPEG
# re-encode) and the drift monitor's calibration; on 1,797 images it trains in seconds.
CHAMPION_OVERRIDES = ("trainer.max_epochs=10", "model.net.width=16")


@pytest.fixture(scope="session", autouse=True)
def _head_starts(request, tmp_path_factory) -> dict[str, Background]:
    """The slowest self-contained builds that the selected tests need, started in subprocesses as the
    session begins: everything here computes on one thread, so they run on the second core while the
    first works through the quick tests. The shared champion (when a selected test uses it), and what
    a selected test module's `head_start(tmp_path_factory)` starts (test_dvc_pipeline: its `dvc
    repro`). Each is waited for by the fixture that needs it; any still running at the end is stopped."""
    items = request.session.items
    started = {}
    for module in {item.module for item in items if getattr(item, "module", None) is not None}:
        if hasattr(module, "head_start"):
            started[module.__name__] = module.head_start(tmp_path_factory)
    if any({"champion", "shared_champion"} & set(getattr(item, "fixturenames", ())) for item in items):
        started["champion"] = _start_champion(tmp_path_factory, request.getfixturevalue("digits_full"))
    yield started
    for build in started.values():
        build.stop()


def _start_champion(tmp_path_factory, data: Path) -> Background:
    """prepare, train, evaluate, export and register (helpers.build_version) in a subprocess."""
    store = tmp_path_factory.mktemp("champion")
    return Background([sys.executable, str(REPO / "tests" / "helpers.py"), str(store), str(store / "v1"), str(data),
                       *CHAMPION_OVERRIDES], REPO, dict(os.environ), tmp_path_factory.mktemp("champion_build"), store)


@pytest.fixture(scope="session")
def shared_champion(_head_starts, tmp_path_factory, digits_full) -> Champion:
    """Built once per session by the real pipeline (prepare, train, evaluate, export, register).
    Tests reach it through `champion`, which checks that they left it as they found it."""
    build = _head_starts.get("champion") or _start_champion(tmp_path_factory, digits_full)
    r = build.wait()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    verdict = json.loads(r.stdout.strip().splitlines()[-1])
    assert verdict["decision"] == "promoted to champion", verdict
    return Champion(store=build.path, work=build.path / "v1", data=digits_full, overrides=CHAMPION_OVERRIDES)


@pytest.fixture(scope="module")
def champion(shared_champion) -> Champion:
    """The shared champion, for one test module; afterwards, its store must be unchanged."""
    before = shared_champion.fingerprint()
    yield shared_champion
    assert shared_champion.fingerprint() == before, (
        f"a test of this module changed the shared champion's store {shared_champion.store}: a test that "
        "registers, promotes or writes there needs a store of its own (helpers.build_version in its tmp_path)")


def pytest_addoption(parser):
    parser.addoption("--model-uri", default=None,
                     help="registered model the tests/model suite checks (default: the project's champion in its "
                          "store, see visionops.project; the session's shared champion if absent)")
