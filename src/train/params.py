"""`python -m train.params`: compose conf/ into params.yaml exactly as `dvc exp run` does."""

from __future__ import annotations

import sys
from pathlib import Path

from visionops.config import conf_dir


def write_params(output: Path = Path("params.yaml"), overrides: list[str] | None = None) -> bool:
    """Write params.yaml; return True when its content changed."""
    import tempfile

    from dvc.utils.hydra import compose_and_dump

    with tempfile.TemporaryDirectory() as tmp:
        tmp_file = Path(tmp) / "params.yaml"
        compose_and_dump(tmp_file, str(conf_dir()), None, "config", "", list(overrides or []))
        new = tmp_file.read_text()
    old = output.read_text() if output.exists() else None
    if new != old:
        output.write_text(new)
        return True
    return False


def main() -> None:
    changed = write_params(Path("params.yaml"), sys.argv[1:])
    print("params.yaml " + ("updated from conf/" if changed else "already matches conf/"))


if __name__ == "__main__":
    main()
