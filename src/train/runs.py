"""What kind of training run this is, where it writes, and what it is called.

Pipeline stages (`python -m train --params params.yaml`, what dvc.yaml runs) write the pipeline's
outputs (models/, reports/, data/prepared/). Everything else, ad-hoc `python -m train ...`, the
`debug=` presets and hyperparameter sweeps, writes under its own Hydra run folder
(outputs/train/<time>/) so it never touches what DVC tracks. A path the user sets on the command
line (`paths.models=...`) is kept.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from visionops.errors import VisionopsError

log = logging.getLogger(__name__)

RUN_KINDS = ("pipeline", "adhoc", "debug", "sweep")
SOURCE_FILE = "source.json"  # beside the manifests: which data config they were prepared from


def _hydra() -> Any:
    """Hydra's runtime config when running under @hydra.main, else None (params.yaml mode)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _set_on_command_line(hc: Any) -> set[str]:
    """Config keys the user overrode on the command line (`paths.models=x`, `+paths.x=y`)."""
    keys = set()
    for o in hc.overrides.task:
        keys.add(o.split("=", 1)[0].lstrip("+~"))
    return keys


def run_kind(cfg: DictConfig, hc: Any) -> str:
    """`run_kind` from the config (the debug presets set `debug`) or from how we were started."""
    kind = cfg.get("run_kind")
    if kind is not None and kind not in RUN_KINDS:
        raise VisionopsError(f"run_kind={kind} is not one of {', '.join(RUN_KINDS)} (or null: decided by how it runs)")
    if hc is None:
        return kind or "pipeline"
    from hydra.types import RunMode

    if hc.mode == RunMode.MULTIRUN:
        return "sweep"
    return kind or "adhoc"


def data_source(data: DictConfig) -> dict[str, Any]:
    """What decides the content of the manifests: the image folder and the split/validation rules."""
    from omegaconf import OmegaConf

    root = Path(str(data.root)).expanduser()
    try:
        root_s = str(root.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        root_s = str(root.resolve())
    return {"root": root_s, "channels": int(data.channels),
            "split": OmegaConf.to_container(data.split, resolve=True),
            "validation": OmegaConf.to_container(data.validation, resolve=True)}


def manifests_match(prepared: Path, data: DictConfig) -> bool:
    """True when `prepared` holds manifests made from this data config (older manifests without a
    record of their source count as matching)."""
    if not (prepared / "labels.json").exists():
        return False
    src = prepared / SOURCE_FILE
    if not src.exists():
        return True
    return json.loads(src.read_text()) == data_source(data)


def _relative(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def isolate(cfg: DictConfig) -> DictConfig:
    """Decide the run kind and, for anything but a pipeline stage, move the outputs into the run
    folder. Sets cfg.run_kind and cfg.run_dir (None for pipeline runs)."""
    hc = _hydra()
    kind = run_kind(cfg, hc)
    with open_dict(cfg):
        cfg.run_kind = kind
        cfg.run_dir = None
        if kind == "pipeline" or hc is None:
            return cfg
        out = _relative(Path(hc.runtime.output_dir))
        shared = _relative(Path(hc.sweep.dir)) if kind == "sweep" else out  # one prepared split per sweep
        cfg.run_dir = str(out)
        explicit = _set_on_command_line(hc)
        if "paths" in explicit:
            return cfg  # a whole paths preset chosen by the user
        if "paths.models" not in explicit:
            cfg.paths.models = str(out / "models")
        if "paths.reports" not in explicit:
            cfg.paths.reports = str(out / "reports")
        if "paths.prepared" not in explicit and not manifests_match(Path(cfg.paths.prepared), cfg.data):
            # The pipeline's manifests are reused read-only when they are this data; otherwise the
            # prepare step runs into the run folder, never into data/prepared.
            cfg.paths.prepared = str(shared / "prepared")
    return cfg


def run_name(cfg: DictConfig) -> str:
    """`logger.run_name` when set; else `<recipe>-<time>-<4 hex>`, e.g. small_cnn-digits-20261202-101500-3fa2.

    Drawn from os.urandom, which seeding does not touch (MLflow's own random names come from
    Python's `random`, so every run with the same seed got the same name)."""
    if cfg.logger.get("run_name"):
        return str(cfg.logger.run_name)
    base = cfg.task_name if cfg.get("task_name") not in (None, "train") else f"{cfg.model.arch}-{cfg.data.name}"
    hc = _hydra()
    preset = hc.runtime.choices.get("debug") if hc is not None else None
    if preset:
        base = f"{preset}-{base}"
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
