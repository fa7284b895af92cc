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
