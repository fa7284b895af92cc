"""Which MLflow store and which model a command uses when it is not told: one rule for every command.

    store: the command's own key (logger.tracking_uri, tracking_uri=, Settings.tracking_uri)
           > $MLFLOW_TRACKING_URI > logger.tracking_uri of the project's params.yaml
           > mlflow.db in the project's folder (sqlite:///mlflow.db, relative, where that is the
             working directory or there is no project)
    model: the command's own key (monitor.model_uri, model=, Settings.model_uri)
           > $VISIONOPS_MODEL_URI > the project's champion, models:/<registry.model_name>@<registry.champion_alias>
           > models:/visionops-digits@champion

The project is the nearest folder holding params.yaml, from the working directory upwards. It is
read as plain YAML (DVC writes it resolved from conf/), so serving needs neither Hydra nor
OmegaConf; a command that has its config composed already passes its `registry` section.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PARAMS_FILE = "params.yaml"
FALLBACK_TRACKING_URI = "sqlite:///mlflow.db"
FALLBACK_MODEL_URI = "models:/visionops-digits@champion"
_SQLITE = "sqlite:///"

log = logging.getLogger("visionops.project")


def find_root(start: str | os.PathLike | None = None) -> Path | None:
    """The nearest folder with a params.yaml, from `start` (the working directory) upwards."""
    here = Path(start or Path.cwd()).resolve()
    return next((d for d in (here, *here.parents) if (d / PARAMS_FILE).is_file()), None)


def read_params(root: Path | None) -> dict[str, Any]:
    """The project's params.yaml as plain data ({} without a project)."""
    if root is None:
        return {}
    import yaml

    path = root / PARAMS_FILE
    try:
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        from visionops.errors import VisionopsError

        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise VisionopsError(f"cannot read {path} ({first}): fix it, or compose it again from conf/ "
                             "with `make params`") from exc
    return data if isinstance(data, dict) else {}


def _setting(section: Mapping[str, Any] | None, key: str, where: str) -> str | None:
    """A string setting, or None when unset. An interpolation left in a hand-written params.yaml
    cannot be resolved without Hydra: it is reported and skipped, never used as a name."""
    value = section.get(key) if isinstance(section, Mapping) else None
    if value is None or value == "":
        return None
    value = str(value)
    if "${" in value:
        log.warning("%s.%s is %r, which needs Hydra to resolve: ignored (compose params.yaml with `make params`)",
                    where, key, value)
        return None
    return value


def tracking_uri(configured: str | None = None, start: str | os.PathLike | None = None) -> str:
    """The MLflow store (see the module docstring for the order)."""
    if configured:
        return str(configured)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = find_root(start)
    return _setting(read_params(root).get("logger"), "tracking_uri", "logger") or local_store(root)


def local_store(root: Path | None) -> str:
    """The SQLite store in the project's folder `root` (the working directory without a project)."""
    if root is None or root == Path.cwd().resolve():
        return FALLBACK_TRACKING_URI  # relative: a run's recorded store stays valid when the folder moves
    return f"{_SQLITE}{root / 'mlflow.db'}"


def model_uri(configured: str | None = None, registry: Mapping[str, Any] | None = None,
              start: str | os.PathLike | None = None) -> str:
    """The registered model (see the module docstring for the order). `registry`: the caller's
    composed `registry` section, in place of the one in params.yaml."""
    if configured:
        return str(configured)
    if os.environ.get("VISIONOPS_MODEL_URI"):
        return os.environ["VISIONOPS_MODEL_URI"]
    if registry is None:
        registry = read_params(find_root(start)).get("registry")
    name = _setting(registry, "model_name", "registry")
    if name is None:
        return FALLBACK_MODEL_URI
    alias = _setting(registry, "champion_alias", "registry") or "champion"
    return f"models:/{name}@{alias}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// store URI (relative to the working directory when the
    URI is); None for any other store."""
    return Path(uri[len(_SQLITE):]) if uri.startswith(_SQLITE) else None
