"""Data checks: the validation catches what would silently poison training."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_cfg
from train.prepare import DataValidationError, check_disjoint, prepare
from visionops.images import decode_image
from visionops.manifest import SPLITS, Record, read_labels, read_manifest


@pytest.fixture
def tree(tmp_path, digits_small) -> Path:
    root = tmp_path / "tree"
    shutil.copytree(digits_small, root)
    return root


def test_corrupt_image_is_named_by_path(tmp_path, tree):
    bad = tree / "3" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataValidationError, match=r"3/broken\.png"):
        prepare(make_cfg(tmp_path, tree))


def test_corrupt_images_can_be_skipped_with_a_count(tmp_path, tree):
    (tree / "3" / "broken.jpg").write_bytes(b"garbage")
    (tree / "4" / "empty.png").write_bytes(b"")
    summary = prepare(make_cfg(tmp_path, tree, ["data.validation.on_corrupt=skip"]))
    assert summary["corrupt_skipped"] == 2
    assert summary["images"] == 200


def test_empty_class_is_refused(tmp_path, tree):
    (tree / "empty_class").mkdir()
    with pytest.raises(DataValidationError, match="empty_class"):
        prepare(make_cfg(tmp_path, tree))


def test_class_below_minimum_is_refused(tmp_path, tree):
    for p in sorted((tree / "7").glob("*.png"))[2:]:
        p.unlink()
    with pytest.raises(DataValidationError, match=r"7 \(2\)"):
        prepare(make_cfg(tmp_path, tree))


def test_duplicates_are_dropped_so_no_image_is_in_two_splits(tmp_path, tree):
    src = sorted((tree / "5").glob("*.png"))
    for i, p in enumerate(src[:6]):
        shutil.copy(p, tree / "5" / f"copy_{i}.png")
    summary = prepare(make_cfg(tmp_path, tree))
    assert summary["duplicates_removed"] == 6 and summary["images"] == 200
    hashes = [r.sha256 for s in SPLITS for r in read_manifest(tmp_path / "prepared" / f"{s}.csv")]
    assert len(hashes) == len(set(hashes))


def test_duplicates_can_fail_the_stage(tmp_path, tree):
    shutil.copy(min((tree / "1").glob("*.png")), tree / "1" / "dup.png")
    with pytest.raises(DataValidationError, match="byte-identical"):
        prepare(make_cfg(tmp_path, tree, ["data.validation.on_duplicate=fail"]))


def test_image_in_two_splits_is_caught():
    a = Record("a.png", "0", "h1")
    with pytest.raises(DataValidationError, match="both the train and test"):
        check_disjoint({"train": [a], "val": [], "test": [Record("b.png", "0", "h1")]})


def test_mixed_formats_modes_and_sizes_are_accepted(tmp_path):
    root = tmp_path / "mixed"
    rng = np.random.default_rng(0)
    for c, (fmt, mode) in enumerate([("JPEG", "RGB"), ("PNG", "RGBA"), ("WEBP", "L"), ("BMP", "RGB")]):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(12):
            size = (20 + 7 * i, 30 + 3 * i)
            arr = rng.integers(0, 255, (size[1], size[0], {"RGB": 3, "RGBA": 4, "L": 1}[mode]), dtype=np.uint8)
            img = Image.fromarray(arr.squeeze())
            img.save(root / f"class{c}" / f"{i}.{fmt.lower()}", fmt)
    summary = prepare(make_cfg(tmp_path, root, ["data=imagefolder", f"data.root={root}", "data.validation.min_per_class=3"]))
    assert summary["classes"] == 4 and summary["images"] == 48


def test_the_real_digits_dataset(tmp_path):
    """Data test on the real default dataset: every image decodes, labels in range, split disjoint."""
    cfg = make_cfg(tmp_path, tmp_path / "digits", ["data.root=" + str(tmp_path / "digits")])
    cfg.data.name = "digits"
    summary = prepare(cfg)  # writes the 1,797 digits, then validates them
    assert summary["images"] == 1797 and summary["corrupt_skipped"] == 0
    labels = read_labels(tmp_path / "prepared")
    assert labels == [str(i) for i in range(10)]
    seen = set()
    for s in SPLITS:
        recs = read_manifest(tmp_path / "prepared" / f"{s}.csv")
        assert {r.label for r in recs} == set(labels), f"every class is in {s}"
        for r in recs[:50]:
            assert decode_image(r.path).size == (8, 8)
        seen |= {r.sha256 for r in recs}
    assert sum(summary["split_sizes"].values()) == len(seen)
