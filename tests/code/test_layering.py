"""What each package may import (their docstrings say it): the shared core nothing of the other
three, training the core, serving the core, monitoring the core and serving; serving and
monitoring never training, Lightning or Hydra; and no module takes a private name from another.
Read from the sources (`ast`) and checked in a fresh interpreter."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

SRC = REPO / "src"


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in a file, at any depth (lazy imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


def offending(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(REPO)}:{line} imports {module}"
            for path in sorted((SRC / package).rglob("*.py"))
            for line, module, _ in imports(path)
            if module.split(".")[0] in forbidden]


@pytest.mark.parametrize(("package", "forbidden"), [
    ("visionops", ("train", "serve", "monitor", "lightning", "torch")),
    ("train", ("serve", "monitor")),
    ("serve", ("train", "monitor", "lightning", "hydra")),
    ("monitor", ("train", "lightning", "hydra")),
])
def test_packages_import_only_what_they_may(package, forbidden):
    assert offending(package, forbidden) == []


def test_no_module_imports_a_private_name_of_another():
    private = [f"{path.relative_to(REPO)}:{line} takes {name} from {module}"
               for path in sorted(SRC.rglob("*.py"))
               for line, module, names in imports(path)
               for name in names if name.startswith("_") and not name.startswith("__")]
    assert private == []


_LOADED = """
import json, sys
import {modules}
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""


@pytest.mark.parametrize("modules", ["monitor.job", "serve.runtime", "monitor.reference, monitor.__main__"])
def test_serving_and_monitoring_load_no_training_code(modules):
    """A fresh interpreter: what importing them actually loads, lazy imports of imports included."""
    out = subprocess.run([sys.executable, "-c", _LOADED.format(modules=modules)], capture_output=True,
                         text=True, check=True, cwd=REPO)
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"train", "lightning", "torch", "hydra"}, sorted(loaded & {"train", "lightning", "torch", "hydra"})
