"""The model under test: `--model-uri` (default: the project's champion, from
$VISIONOPS_MODEL_URI or params.yaml, in $MLFLOW_TRACKING_URI or the repository's mlflow.db: the
rule of `visionops.project`). Where that store has no such model (a fresh clone before
`make demo`), the session's shared champion (tests/conftest.py: a small model trained and registered
in a temporary store by the real pipeline) is checked instead, and the tests say so in their output."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from helpers import REPO
from visionops.manifest import read_manifest
from visionops.model_store import LocalModel, ModelStoreError, fetch
from visionops.project import model_uri, tracking_uri


@pytest.fixture(scope="session")
def model_under_test(request) -> tuple[LocalModel, Path]:
    """(the fetched model, the prepared folder whose manifests it is checked on)."""
    given = request.config.getoption("--model-uri")
    uri, tracking = model_uri(given, start=REPO), tracking_uri(start=REPO)
    prepared = REPO / "data" / "prepared"
    if given is not None:
        return fetch(uri, tracking_uri=tracking), prepared
    try:
        if (REPO / "mlflow.db").exists() or "MLFLOW_TRACKING_URI" in os.environ:
            return fetch(uri, tracking_uri=tracking), prepared
    except ModelStoreError:
        pass
    champion = request.getfixturevalue("shared_champion")  # trained now, once for the whole session
    warnings.warn(f"{uri} not found in {tracking}: checking the tests' champion in {champion.store}")
    return fetch(uri, tracking_uri=champion.tracking_uri), champion.store / "prepared"


@pytest.fixture(scope="session")
def fixed_set(model_under_test):
    """The first 100 images of the pinned test manifest."""
    model, prepared = model_under_test
    records = read_manifest(prepared / "test.csv")[:100]
    labels = sorted({r.label for r in records})
    assert set(labels) <= set(model.bundle.labels), "the test manifest's classes are not the model's"
    return records
