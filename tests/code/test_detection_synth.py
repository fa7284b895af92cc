"""The bundled detection dataset: deterministic, boxes tight and inside, masks readable by COCO
tools, and not solvable without learning (the non-learned baseline scores low)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import run_cli
from train.tasks.detection.masks import rle_area, rle_decode, rle_encode
from train.tasks.detection.synth import SynthConfig, generate, render


@pytest.fixture(scope="module")
def rendered() -> list[tuple[bytes, str, list[dict]]]:
    return [render(i, seed=11) for i in range(150)]


def test_same_seed_same_bytes_and_annotations(tmp_path):
    a, b, c = generate(tmp_path / "a", n=8, seed=5), generate(tmp_path / "b", n=8, seed=5), generate(tmp_path / "c", n=8, seed=6)
    assert (tmp_path / "a" / "annotations.json").read_bytes() == (tmp_path / "b" / "annotations.json").read_bytes()
    for im in a["images"]:
        assert (tmp_path / "a" / im["file_name"]).read_bytes() == (tmp_path / "b" / im["file_name"]).read_bytes()
    assert a["annotations"] == b["annotations"] and a["annotations"] != c["annotations"]
    assert render(3, seed=5) == render(3, seed=5)  # an image depends on (seed, index) alone


def test_images_vary_in_size_format_and_colour(rendered):
    decoded = [Image.open(io.BytesIO(data)) for data, _, _ in rendered]
    sides = [s for im in decoded for s in im.size]
    assert 192 <= min(sides) and max(sides) <= 320 and len(set(sides)) > 50
    assert {ext for _, ext, _ in rendered} == {"jpg", "png"}
    assert {im.mode for im in decoded} == {"RGB", "L"}


def test_one_to_six_objects_and_a_few_negatives(rendered):
    counts = [len(objs) for _, _, objs in rendered]
    assert max(counts) == 6 and set(range(1, 7)) <= set(counts)
    assert 0 < counts.count(0) < 0.15 * len(counts)


def test_boxes_are_inside_and_tight_around_the_mask(rendered):
    for data, _, objects in rendered:
        w, h = Image.open(io.BytesIO(data)).size
        for obj in objects:
            x, y, bw, bh = obj["bbox"]
            assert 0 <= x and 0 <= y and bw > 0 and bh > 0 and x + bw <= w and y + bh <= h
            assert obj["category_id"] in range(10) and obj["iscrowd"] == 0
            mask = rle_decode(obj["segmentation"])
            assert mask.shape == (h, w) and mask.sum() == obj["area"] == rle_area(obj["segmentation"])
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert [cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]] == obj["bbox"]


def test_objects_span_coco_size_buckets(rendered):
    areas = [o["bbox"][2] * o["bbox"][3] for _, _, objs in rendered for o in objs]
    assert min(areas) < 32 * 32 and any(32 * 32 <= a < 96 * 96 for a in areas) and max(areas) >= 96 * 96


def test_the_digits_are_visible_ink():
    """Inside each box the image differs from its surroundings: the ink is drawn, not only labelled."""
    data, _, objects = render(0, seed=1, cfg=SynthConfig(blur_p=0, noise_p=0, jpeg_p=0, gray_p=0))
    arr = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32)
    for obj in objects:
        mask = rle_decode(obj["segmentation"])
        x, y, w, h = obj["bbox"]
        around = np.zeros_like(mask)
        around[y:y + h, x:x + w] = True
        ground = around & ~mask
        if ground.sum() > 20:
            assert np.abs(arr[mask].mean(0) - arr[ground].mean(0)).max() > 20


def test_rle_round_trips_and_matches_faster_coco_eval():
    rng = np.random.default_rng(0)
    masks = [rng.random((int(h), int(w))) < p for h, w, p in zip(rng.integers(1, 40, 30), rng.integers(1, 40, 30),
                                                                  rng.random(30), strict=True)]
    masks += [np.ones((5, 7), bool), np.zeros((5, 7), bool)]
    for m in masks:
        rle = rle_encode(m)
        assert (rle_decode(rle) == m).all() and rle_area(rle) == m.sum()
    fce = pytest.importorskip("faster_coco_eval.core.mask", reason="faster-coco-eval is not installed in this venv")
    for m in masks:
        ref = fce.encode(np.asfortranarray(m.astype(np.uint8)))
        counts = ref["counts"].decode() if isinstance(ref["counts"], bytes) else ref["counts"]
        assert counts == rle_encode(m)["counts"]


def test_the_non_learned_baseline_scores_low(tmp_path):
    pytest.importorskip("faster_coco_eval", reason="faster-coco-eval is not installed in this venv")
    from train.tasks.detection.baseline import evaluate
    from train.tasks.detection.coco import validate_and_split

    generate(tmp_path / "d", n=120, seed=2)
    splits = validate_and_split(tmp_path / "d", val=0.1, test=0.3, min_per_class=1).splits
    metrics = evaluate(splits["train"], splits["test"])
    assert metrics["map_50"] < 0.5
    assert 0.05 < metrics["agnostic_map_50"] < 0.7  # it finds some digits, so the score is meaningful


def test_the_raw_stage_command_writes_coco(tmp_path):
    r = run_cli(["-m", "train.tasks.detection.synth", str(tmp_path / "out"), "n=6", "seed=1"])
    assert r.returncode == 0, r.stderr
    assert "Wrote 6 images" in r.stdout and "ms per image" in r.stdout
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert len(coco["images"]) == 6 and [c["name"] for c in coco["categories"]] == [str(d) for d in range(10)]
    assert all((tmp_path / "out" / im["file_name"]).is_file() for im in coco["images"])
    bad = run_cli(["-m", "train.tasks.detection.synth", str(tmp_path / "x"), "count=3"])
    assert bad.returncode != 0 and "unknown argument 'count=3'" in bad.stderr


def test_written_sizes_match_the_files(tmp_path):
    coco = generate(tmp_path, n=5, seed=0)
    for im in coco["images"]:
        assert Image.open(Path(tmp_path) / im["file_name"]).size == (im["width"], im["height"])
