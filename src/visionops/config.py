"""How every entry point gets its config and reports a user's error: training's, monitoring's.

`python -m train experiment=X key=value` composes conf/ with Hydra (mistyped keys fail with
Hydra's message). Pipeline stages run `python -m train --params params.yaml`: the config DVC
composed from conf/ (`dvc exp run -S ...` rewrites it), so the stage trains exactly what DVC
tracks as params. A VisionopsError raised by the task (or wrapped by Hydra's instantiate) is
printed as one `error: ...` line and exits 2.

Hydra is imported only when a command line is composed; this module needs omegaconf, never
Lightning, so `python -m monitor` and its helpers run it as training does.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from visionops.errors import VisionopsError

log = logging.getLogger("visionops")


def conf_dir() -> Path:
    """conf/ of the repository we run in (found from the working directory upwards), else the
    one beside the installed sources."""
    env = os.environ.get("VISIONOPS_CONF")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "conf" / "config.yaml").exists():
            return d / "conf"
    return (Path(__file__).resolve().parents[2] / "conf").resolve()


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose conf/ like the command line would (for tests, notebooks and DVC's params.yaml)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _user_error(exc: BaseException) -> VisionopsError | None:
    """The VisionopsError behind an exception (Hydra's instantiate wraps what a target raises)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, VisionopsError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def run_guarded(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """`task(cfg)`; a user's error (see `_user_error`) becomes one `error: ...` line and exit 2."""
    try:
        return task(cfg)
    except Exception as exc:
        err = _user_error(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def run_task(task: Callable[[DictConfig], Any], task_name: str, description: str | None = None) -> None:
    """Run `task(cfg)` from the command line, with params.yaml or with Hydra. `description` (the
    entry point's docstring) heads `--help`, before Hydra's listing of groups and keys."""
    argv = sys.argv[1:]
    if description and ("--help" in argv or "-h" in argv):
        print(description.strip() + "\n", flush=True)
    if "--params" in argv:
        i = argv.index("--params")
        try:
            params_file = Path(argv[i + 1])
        except IndexError:
            sys.exit("error: --params needs a file, e.g. --params params.yaml")
        if not params_file.exists():
            sys.exit(f"error: {params_file} not found; run `make params` to compose it from conf/")
        cfg = OmegaConf.load(params_file)
        extra = argv[:i] + argv[i + 2 :]
        if extra:
            OmegaConf.set_struct(cfg, True)
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(extra))
        OmegaConf.set_struct(cfg, True)
        _setup_logging()
        run_guarded(task, cfg)
        return

    import hydra

    @hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> Any:
        return run_guarded(task, cfg)

    _main()
