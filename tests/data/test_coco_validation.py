"""Detection data checks: a COCO folder is validated and split, and every problem a user can make
is named by its image file and annotation id (fail), or dropped and counted (skip)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.prepare import DataValidationError
from train.tasks.detection.coco import SPLITS, CocoValidationError, validate_and_split
from train.tasks.detection.prepare import prepare_coco
from train.tasks.detection.synth import generate
from visionops.errors import VisionopsError

N = 40


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco") / "digits_det"
    generate(root, n=N, seed=7)
    return root


@pytest.fixture
def root(tmp_path, generated) -> Path:
    """A private copy of the generated dataset, for a test to break."""
    return Path(shutil.copytree(generated, tmp_path / "coco"))


def edit(root: Path, change: Callable[[dict], None], name: str = "annotations.json") -> None:
    coco = json.loads((root / name).read_text())
    change(coco)
    (root / name).write_text(json.dumps(coco))


def first_annotated(coco: dict) -> tuple[dict, dict]:
    """The first image with an annotation, and that annotation."""
    ann = coco["annotations"][0]
    return next(im for im in coco["images"] if im["id"] == ann["image_id"]), ann


def image_and_ann(root: Path) -> tuple[str, int]:
    im, ann = first_annotated(json.loads((root / "annotations.json").read_text()))
    return im["file_name"], ann["id"]


def test_a_clean_dataset_splits_deterministically_by_image(root):
    a = validate_and_split(root, seed=3, min_per_class=3)
    b = validate_and_split(root, seed=3, min_per_class=3)
    c = validate_and_split(root, seed=4, min_per_class=3)
    assert a.splits == b.splits and a.problems == []
    assert [im["id"] for im in a.splits["test"]["images"]] != [im["id"] for im in c.splits["test"]["images"]]
    per_split = {s: {im["sha256"] for im in a.splits[s]["images"]} for s in SPLITS}
    assert sum(len(v) for v in per_split.values()) == N
    assert not (per_split["train"] & per_split["val"] or per_split["train"] & per_split["test"]
                or per_split["val"] & per_split["test"])
    sizes = {s: len(a.splits[s]["images"]) for s in SPLITS}
    assert sizes["train"] > sizes["val"] > 0 and sizes["test"] > 0
    for s in SPLITS:  # each split's annotations belong to its own images, ids kept
        ids = {im["id"] for im in a.splits[s]["images"]}
        assert all(ann["image_id"] in ids for ann in a.splits[s]["annotations"])
        assert [c["name"] for c in a.splits[s]["categories"]] == [str(d) for d in range(10)]
        assert all(Path(im["file_name"]).is_file() for im in a.splits[s]["images"])


def test_images_without_objects_are_valid_negatives(root):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(root / "blank.png")
    edit(root, lambda c: c["images"].append({"id": 9999, "file_name": "blank.png", "width": 80, "height": 64}))
    prepared = validate_and_split(root, min_per_class=1)
    kept = [im for s in SPLITS for im in prepared.splits[s]["images"] if im["id"] == 9999]
    assert len(kept) == 1 and prepared.problems == []


def break_missing(root):
    name, _ = image_and_ann(root)
    (root / name).unlink()
    return name, None


def break_corrupt(root):
    name, _ = image_and_ann(root)
    (root / name).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return name, None


def break_size(root):
    name, _ = image_and_ann(root)
    edit(root, lambda c: next(im for im in c["images"] if im["file_name"] == name).update(width=999))
    return name, None


def break_duplicate_bytes(root):
    name, _ = image_and_ann(root)
    shutil.copy(root / name, root / "images" / "zz_copy.jpg")
    edit(root, lambda c: c["images"].append({"id": 5000, "file_name": "images/zz_copy.jpg"}))
    return "images/zz_copy.jpg", None


def break_duplicate_entry(root):
    name, _ = image_and_ann(root)
    edit(root, lambda c: c["images"].append({**next(im for im in c["images"] if im["file_name"] == name)}))
    return name, None


def _set_box(bbox):
    def change(root):
        name, aid = image_and_ann(root)
        edit(root, lambda c: next(a for a in c["annotations"] if a["id"] == aid).update(bbox=bbox))
        return name, aid
    return change


def break_category(root):
    name, aid = image_and_ann(root)
    edit(root, lambda c: next(a for a in c["annotations"] if a["id"] == aid).update(category_id=42))
    return name, aid


def break_orphan(root):
    edit(root, lambda c: c["annotations"].append({"id": 7777, "image_id": 123456, "category_id": 1,
                                                  "bbox": [1, 1, 5, 5], "iscrowd": 0, "area": 25}))
    return None, 7777


CASES = {
    "missing_image": break_missing,
    "corrupt_image": break_corrupt,
    "size_mismatch": break_size,
    "duplicate_image": break_duplicate_bytes,
    "duplicate_entry": break_duplicate_entry,
    "box_outside_image": _set_box([150, 150, 400, 40]),
    "zero_area_box": _set_box([10, 10, 0, 12]),
    "bad_box": _set_box([10, 10, 12]),
    "unknown_category": break_category,
    "unknown_image": break_orphan,
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_problem_is_named_by_file_and_annotation_and_fails(root, kind):
    file_name, annotation_id = CASES[kind](root)
    with pytest.raises(CocoValidationError) as info:
        validate_and_split(root)
    problems = [p for p in info.value.problems if p.kind == kind]
    assert len(problems) == 1, info.value.problems
    assert (problems[0].file_name, problems[0].annotation_id) == (file_name, annotation_id)
    message = str(info.value)
    assert kind in message and "What to do" in message and "data.on_invalid=skip" in message
    if file_name is not None:
        assert file_name in message
    if annotation_id is not None:
        assert f"(annotation {annotation_id})" in message
    assert isinstance(info.value, DataValidationError) and isinstance(info.value, VisionopsError)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_skip_drops_the_affected_image_and_counts_it(root, kind):
    file_name, annotation_id = CASES[kind](root)
    prepared = validate_and_split(root, on_invalid="skip")
    assert [p.kind for p in prepared.problems] == [kind]
    kept = [im for s in SPLITS for im in prepared.splits[s]["images"]]
    kept_anns = {a["id"] for s in SPLITS for a in prepared.splits[s]["annotations"]}
    assert annotation_id is None or annotation_id not in kept_anns
    if kind in ("duplicate_image", "duplicate_entry"):
        assert len(kept) == N  # the copy goes, the original stays
    elif kind != "unknown_image":
        assert len(kept) == N - 1 and prepared.dropped_images == 1
        assert not any(im["file_name"].endswith(file_name) for im in kept)
    else:
        assert len(kept) == N and prepared.dropped_annotations == 1


def test_a_class_below_the_minimum_fails_even_with_skip(root):
    with pytest.raises(CocoValidationError, match=r"class_below_minimum") as info:
        validate_and_split(root, min_per_class=1000, on_invalid="skip")
    assert "'7' (id 7)" in str(info.value) and "cannot be skipped" in str(info.value)


def test_an_image_in_two_split_files_is_named(root):
    coco = json.loads((root / "annotations.json").read_text())
    ids = [im["id"] for im in coco["images"]]
    parts = {"train": ids[:28], "val": ids[28:34], "test": ids[34:]}
    for split, keep in parts.items():
        sub = {**coco, "images": [im for im in coco["images"] if im["id"] in keep],
               "annotations": [a for a in coco["annotations"] if a["image_id"] in keep]}
        if split == "test":  # the first training image, again, under the test file
            sub["images"].append({**coco["images"][0]})
        (root / f"{split}.json").write_text(json.dumps(sub))
    files = {s: f"{s}.json" for s in SPLITS}
    with pytest.raises(CocoValidationError, match=r"image_in_two_splits") as info:
        validate_and_split(root, split_files=files)
    [problem] = info.value.problems
    assert problem.file_name == coco["images"][0]["file_name"] and "train and test" in problem.detail
    prepared = validate_and_split(root, split_files=files, on_invalid="skip")
    assert {s: len(prepared.splits[s]["images"]) for s in SPLITS} == {"train": 28, "val": 6, "test": 6}


def test_boxes_a_hair_outside_are_clipped_not_reported(root):
    name, aid = image_and_ann(root)
    coco = json.loads((root / "annotations.json").read_text())
    width = next(im for im in coco["images"] if im["file_name"] == name)["width"]
    _set_box([width - 10.5, 3, 11.0, 5])(root)
    prepared = validate_and_split(root)
    [ann] = [a for s in SPLITS for a in prepared.splits[s]["annotations"] if a["id"] == aid]
    assert ann["bbox"] == [width - 10.5, 3.0, 10.5, 5.0] and prepared.clipped_boxes == 1


def test_an_unused_supercategory_is_dropped(root):
    """Roboflow exports a parent category (id 0 here renamed) that no annotation uses."""
    edit(root, lambda c: [c["categories"].append({"id": 99, "name": "digit", "supercategory": "none"}),
                          [cat.update(supercategory="digit") for cat in c["categories"] if cat["id"] != 99]])
    prepared = validate_and_split(root)
    assert prepared.unused_categories == ["digit"] and len(prepared.categories) == 10


def test_not_a_coco_folder_says_what_is_expected(tmp_path):
    with pytest.raises(DataValidationError, match="annotations.json"):
        validate_and_split(tmp_path)
    (tmp_path / "annotations.json").write_text("{not json")
    with pytest.raises(DataValidationError, match="not valid JSON"):
        validate_and_split(tmp_path)
    (tmp_path / "annotations.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataValidationError, match="annotations, categories"):
        validate_and_split(tmp_path)
    with pytest.raises(DataValidationError, match="on_invalid"):
        validate_and_split(tmp_path, on_invalid="ignore")


def test_prepare_writes_coco_splits_and_plottable_statistics(tmp_path, generated):
    summary = prepare_coco(generated, tmp_path / "prepared", tmp_path / "reports", min_per_class=3)
    assert summary["images"] == N and summary["classes"] == 10
    for split in SPLITS:
        coco = json.loads((tmp_path / "prepared" / f"{split}.json").read_text())
        assert {"images", "annotations", "categories"} <= coco.keys()
    labels = json.loads((tmp_path / "prepared" / "labels.json").read_text())
    assert labels["labels"] == [str(d) for d in range(10)] and labels["category_ids"] == list(range(10))
    reports = tmp_path / "reports"
    assert json.loads((reports / "stats.json").read_text()).keys() == {"images", "objects", "classes"}
    detail = json.loads((reports / "dataset.json").read_text())
    assert sum(detail["per_split"][s]["objects"] for s in SPLITS) == summary["objects"]
    headers = {name: (reports / name).read_text().splitlines()[0]
               for name in ("class_counts.csv", "objects_per_image.csv", "box_sizes.csv")}
    assert headers == {"class_counts.csv": "class,split,count", "objects_per_image.csv": "objects,split,images",
                       "box_sizes.csv": "size,split,boxes"}
    rows = (reports / "box_sizes.csv").read_text().splitlines()[1:]
    assert sum(int(r.split(",")[2]) for r in rows) == summary["objects"]


def test_the_data_configs_drive_prepare(tmp_path, generated, root):
    from train.tasks.detection.prepare import prepare
    from visionops.config import compose

    def cfg(*overrides):
        return compose([*overrides, f"paths.prepared={tmp_path / 'prepared'}", f"paths.reports={tmp_path / 'reports'}",
                        "data.validation.min_per_class=3"])

    assert prepare(cfg("data=digits_det", f"data.root={generated}"))["images"] == N
    assert json.loads((tmp_path / "reports" / "prepare" / "stats.json").read_text())["images"] == N
    break_corrupt(root)
    with pytest.raises(CocoValidationError, match="corrupt_image"):
        prepare(cfg("data=coco", f"data.root={root}"))
    summary = prepare(cfg("data=coco", f"data.root={root}", "data.on_invalid=skip"))
    assert summary["images"] == N - 1 and summary["dropped_images"] == 1
