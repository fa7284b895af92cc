"""The command line a user types: clear errors instead of stack traces."""

from __future__ import annotations

import pytest

from helpers import run_cli, tiny_overrides

pytestmark = pytest.mark.integration


def test_pretrained_weights_offline_fail_with_a_clear_message(tmp_path, digits_small):
    tiny = [o for o in tiny_overrides(tmp_path, digits_small) if not o.startswith("model.net.width")]
    r = run_cli(["-m", "train", *tiny,
                 "model=resnet18", "model.net.weights=DEFAULT", "data.validation.min_per_class=3"],
                env={"TORCH_HOME": str(tmp_path / "torch")})
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not load pretrained weights") and "model.net.weights=null" in last
    assert "Traceback" not in r.stderr


def test_prepare_on_a_missing_folder_says_what_to_do(tmp_path):
    r = run_cli(["-m", "train.prepare", "data=imagefolder", f"data.root={tmp_path / 'nope'}",
                 f"paths.prepared={tmp_path / 'p'}", f"paths.reports={tmp_path / 'r'}"])
    assert r.returncode == 2
    assert "is not a folder" in r.stderr and "Traceback" not in r.stderr


def test_help_says_what_train_does_before_hydras_listing():
    r = run_cli(["-m", "train", "--help"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("`python -m train`: train an image classifier with PyTorch Lightning, tracked in MLflow.")
    assert "debug: fast_dev_run" in r.stdout and "model: efficientnet_b0" in r.stdout
    assert "powered by Hydra" not in r.stdout, "our listing, not Hydra's boilerplate"


def test_make_help_lists_every_target_with_the_real_ports():
    import re
    import subprocess

    from helpers import REPO

    makefile = (REPO / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.MULTILINE).group(1).split()
    r = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
                       env={"PATH": "/usr/bin:/bin"})  # no venv on PATH: help must not need (or make) one
    assert r.returncode == 0, r.stderr
    listed = set(re.findall(r"^\s+make (\S+)", r.stdout, re.MULTILINE))
    assert set(phony) <= listed, f"targets missing from `make help`: {sorted(set(phony) - listed)}"
    assert "http://127.0.0.1:3000" in r.stdout and "http://127.0.0.1:5000" in r.stdout
    assert "Installing" not in r.stdout
