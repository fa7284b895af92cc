"""The README's "Where things live" names what is there: every config group and config file under
conf/, every test folder, and every module of the four packages (issue 10)."""

from __future__ import annotations

import re

import pytest

from helpers import REPO


def rows() -> dict[str, str]:
    """The section's table: first cell (the folder) -> second cell."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            table[cells[0]] = cells[1]
    return table


def named(cell: str) -> set[str]:
    """Every `code` span of a cell, split on commas, braces and slashes: the names it mentions."""
    names = set()
    for span in re.findall(r"`([^`]+)`", cell):
        names |= {n for n in re.split(r"[\s,{}/]+", span) if n}
        names.add(span)
    return names


def test_every_config_group_and_file_is_listed():
    cell = rows()["`conf/`"]
    conf = REPO / "conf"
    groups = sorted(p.name for p in conf.iterdir() if p.is_dir())
    files = sorted(p.name for p in conf.glob("*.yaml"))
    missing = [f"{g}/" for g in groups if f"`{g}/`" not in cell] + [f for f in files if f not in named(cell)]
    assert missing == [], f"README's conf/ row leaves out {missing}"


def test_every_test_folder_is_listed():
    cell = rows()["`tests/`"]
    folders = sorted(p.name for p in (REPO / "tests").iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    assert [f for f in folders if f"`{f}/`" not in cell] == []


@pytest.mark.parametrize("package", ["train", "serve", "monitor", "visionops"])
def test_every_module_is_listed(package):
    cell = rows()[f"`src/{package}/`"]
    names = named(cell)
    modules = sorted(p.stem for p in (REPO / "src" / package).glob("*.py") if p.stem != "__init__")
    missing = [m for m in modules if m not in names and f"{m}.py" not in names]
    assert missing == [], f"README's src/{package}/ row leaves out {missing}"
