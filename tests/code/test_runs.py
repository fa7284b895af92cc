"""Units of the training command line: the run kinds of the presets, distinct run names, the
label-change message of the registry, the offline plots page."""

from __future__ import annotations

import random
import re
from types import SimpleNamespace

import pytest

from helpers import REPO
from train.gate import check_labels, label_change
from train.runs import run_name
from visionops.config import compose
from visionops.errors import VisionopsError

DEBUG_PRESETS = sorted(p.stem for p in (REPO / "conf" / "debug").glob("*.yaml"))


@pytest.mark.parametrize("preset", DEBUG_PRESETS)
def test_every_debug_preset_is_marked_as_a_debug_run(preset):
    """params.yaml mode has no Hydra choices: the marker in the yaml is what says "debug"."""
    assert compose([f"debug={preset}"]).run_kind == "debug"


def test_the_default_run_kind_is_decided_by_how_training_starts():
    assert compose([]).run_kind is None


def test_runs_with_the_same_seed_get_distinct_readable_names():
    cfg = compose([])
    names = []
    for _ in range(2):
        random.seed(42)  # what seeding did to MLflow's own random names
        names.append(run_name(cfg))
    assert names[0] != names[1]
    assert all(re.fullmatch(r"small_cnn-digits-\d{8}-\d{6}-[0-9a-f]{4}", n) for n in names), names
    assert run_name(compose(["experiment=digits_resnet18"])).startswith("digits_resnet18-")
    assert run_name(compose(["logger.run_name=mine"])) == "mine", "an explicit name wins"


def test_label_change_message_names_the_classes_the_champion_and_the_fix():
    msg = label_change("visionops-imagefolder", "3", ["cat", "dog"], ["cat", "dog", "fox"])
    assert "\n" not in msg
    assert "champion of visionops-imagefolder (version 3" in msg and "1 new (fox)" in msg
    assert "registry.model_name=" in msg and "data.name=" in msg and "force=true" in msg
    assert "2 missing (3, 4)" in label_change("m", "1", ["1", "2", "3", "4"], ["1", "2"])
    assert "another order" in label_change("m", "1", ["a", "b"], ["b", "a"])


def test_check_labels_refuses_before_registering_unless_allowed():
    champion = SimpleNamespace(name="visionops-digits", version="1", bundle=SimpleNamespace(labels=["0", "1"]))
    cfg = compose([])
    check_labels(cfg, None, ["a"])  # no champion yet: any labels
    check_labels(cfg, champion, ["0", "1"])
    with pytest.raises(VisionopsError, match="differ from those of the champion of visionops-digits"):
        check_labels(cfg, champion, ["a", "b"])
    check_labels(compose(["registry.allow_label_change=true"]), champion, ["a", "b"])


def test_registered_model_name_follows_the_data():
    assert compose([]).registry.model_name == "visionops-digits"
    assert compose(["data=imagefolder", "data.name=flowers"]).registry.model_name == "visionops-flowers"


def test_plots_page_carries_vega_and_loads_nothing(tmp_path):
    from train.views import write_page

    html = write_page(tmp_path / "offline.html").read_text()
    assert html.count("{plot_divs}") == 1, "DVC fills this placeholder with the charts"
    assert "window.vegaEmbed" in html and len(html) > 500_000
    assert not re.search(r"<script[^>]+src=", html) and "{scripts}" not in html


def test_experiment_table_keeps_the_headline_and_fits_the_width():
    from train.views import experiment_rows, experiment_table

    def exp(name, acc, data, augment, lr):
        return {"rev": "a" * 40, "name": name, "data": {
            "timestamp": "2026-12-02T10:15:00",
            "metrics": {"reports/evaluate/metrics.json": {"data": {"test/acc": acc, "test/f1_macro": acc, "test/ece": 0.02}},
                        "reports/register/gate.json": {"data": {"champion": 1}}},
            "params": {"params.yaml": {"data": {"data": {"name": data, "mean": [0.5] * 3}, "augment": {"name": augment},
                                                "model": {"arch": "small_cnn", "optimizer": {"lr": lr}}}}}}}

    show = [{"rev": "workspace", "name": None, "data": exp("w", 0.9, "digits", "light", 0.003)["data"]},
            {**exp("main", 0.98, "digits", "light", 0.003), "experiments": [
                {"name": "big-run", "revs": [exp("big-run", 0.97, "a-very-long-dataset-name", "strong", 0.001)]}]}]
    rows = experiment_rows(show)
    assert [r["experiment"] for r in rows] == ["workspace", "main", "  big-run"]
    wide = experiment_table(rows, 200).splitlines()
    assert wide[0].split() == ["experiment", "created", "acc", "f1", "ece", "data", "augment", "lr", "champion"]
    assert not wide[-1].startswith("also differ"), "everything fits in 200 columns"
    narrow = experiment_table(rows, 60).splitlines()
    assert max(map(len, narrow)) <= 60 and narrow[0].split()[:5] == ["experiment", "created", "acc", "f1", "ece"]
    assert narrow[-1].startswith("also differ: ")
