"""A COCO detection dataset in, validated and split deterministically by image.

`DIR/annotations.json` (or one COCO file per split) with `file_name`s relative to DIR, as CVAT,
Label Studio and Roboflow export it. Every problem found names its image file and annotation id.
Policy `fail` (default) raises `CocoValidationError` listing them; `skip` drops each affected
image whole (an annotation dropped alone would leave its object in the picture unlabelled,
teaching the model to miss it), plus annotations pointing at no image, and returns what was
dropped. A class below the minimum count fails under either policy: no skip can fix it.
Images without objects are valid negatives.

The split COCO dicts keep image and annotation ids, carry each image's `sha256`, and hold
`file_name`s the stage can open: relative to the working directory (the repository) when the
image is under it, else absolute, as classification's manifests do.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from train.prepare import DataValidationError
from visionops.images import ImageDecodeError, decode_image

SPLITS = ("train", "val", "test")
POLICIES = ("fail", "skip")
BOX_TOLERANCE = 1.0  # px: a box this close outside the image is clipped into it, not reported

# What each problem means for the user, and what to do about it.
FIXES = {
    "missing_image": "the file does not exist under the dataset root: restore it or remove its entry",
    "corrupt_image": "the file does not decode as an image: re-export it or remove its entry",
    "size_mismatch": "width/height in the annotations differ from the decoded image (EXIF rotation?): "
                     "re-export the annotations for the image as stored",
    "duplicate_entry": "the same image id or file is listed twice: keep one entry",
    "duplicate_image": "byte-identical copy of another image: remove the copy",
    "image_in_two_splits": "the same image (same file or same bytes) is in two split files: keep it in one",
    "unknown_image": "the annotation's image_id is not in `images`: fix the id or delete the annotation",
    "unknown_category": "the annotation's category_id is not in `categories`: add the category or fix the id",
    "bad_box": "bbox must be four finite numbers [x, y, width, height]",
    "zero_area_box": "the box has zero or negative width or height: redraw or delete it",
    "box_outside_image": "the box reaches outside the image: redraw it inside the image",
    "class_below_minimum": "too few objects of the class: label more, merge classes, or lower the minimum",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the dataset: its kind (a key of FIXES), the image file and the
    annotation id it concerns (None when it concerns no single one), and the detail."""

    kind: str
    file_name: str | None
    annotation_id: int | None
    detail: str

    def __str__(self) -> str:
        where = self.file_name or "(dataset)"
        ann = f" (annotation {self.annotation_id})" if self.annotation_id is not None else ""
        return f"{where}{ann}: {self.kind}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "file_name": self.file_name, "annotation_id": self.annotation_id,
                "detail": self.detail}


class CocoValidationError(DataValidationError):
    """The COCO dataset cannot be used as it is; `problems` lists every finding."""

    def __init__(self, problems: list[Problem], root: Path, skippable: bool = True, limit: int = 20):
        self.problems = problems
        lines = [f"  {p}" for p in problems[:limit]]
        if len(problems) > limit:
            lines.append(f"  ... and {len(problems) - limit} more")
        kinds = sorted({p.kind for p in problems})
        fixes = [f"  {k}: {FIXES[k]}" for k in kinds]
        tail = ("Fix them, or set data.on_invalid=skip to drop the affected images and count them."
                if skippable else "These cannot be skipped.")
        super().__init__(f"{len(problems)} problem(s) in the COCO dataset at {root}:\n" + "\n".join(lines)
                         + "\nWhat to do:\n" + "\n".join(fixes) + "\n" + tail)


@dataclass
class PreparedCoco:
    """The outcome: per-split COCO dicts, the categories in label order (label index = position),
    and what `skip` dropped (empty under `fail`)."""

    splits: dict[str, dict[str, Any]]
    categories: list[dict[str, Any]]
    problems: list[Problem] = field(default_factory=list)
    dropped_images: int = 0
    dropped_annotations: int = 0
    clipped_boxes: int = 0
    unused_categories: list[str] = field(default_factory=list)


def display_path(p: Path) -> str:
    """Relative to the working directory when under it (the repository), else absolute."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p.resolve())


def read_coco(path: Path) -> dict[str, Any]:
    """A COCO file as a dict with `images`, `annotations` and `categories` lists."""
    try:
        coco = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise DataValidationError(
            f"{path} not found: a COCO dataset is DIR/annotations.json with file_names relative to DIR"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataValidationError(f"{path} is not valid JSON: {exc}") from exc
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(coco.get(k), list)]
    if not isinstance(coco, dict) or missing:
        raise DataValidationError(f"{path} is not a COCO detection file: it lacks the list(s) {', '.join(missing)}")
    return coco


def _id_key(value: Any) -> tuple[int, Any]:
    """Sort key for COCO ids: numbers in numeric order, anything else after them as text."""
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def _check_image(root: Path, image: dict[str, Any]) -> tuple[list[Problem], str | None, tuple[int, int] | None]:
    """Decode one image: (problems, sha256, (width, height))."""
    name = str(image.get("file_name"))
    path = root / name
    try:
        data = path.read_bytes()
    except OSError:
        return [Problem("missing_image", name, None, f"{path} cannot be read")], None, None
    try:
        w, h = decode_image(data).size
    except ImageDecodeError as exc:
        return [Problem("corrupt_image", name, None, str(exc))], None, None
    problems = []
    declared = (image.get("width"), image.get("height"))
    if declared != (None, None) and tuple(declared) != (w, h):
        problems.append(Problem("size_mismatch", name, None,
                                f"annotations say {declared[0]}x{declared[1]}, the image is {w}x{h}"))
    return problems, hashlib.sha256(data).hexdigest(), (w, h)


def _check_box(ann: dict[str, Any], name: str, size: tuple[int, int]) -> tuple[Problem | None, list[float] | None]:
    """(problem, None) for a bad box; (None, box) otherwise, clipped into the image within BOX_TOLERANCE."""
    aid, bbox = ann.get("id"), ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                              for v in bbox)):
        return Problem("bad_box", name, aid, f"bbox is {bbox!r}"), None
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return Problem("zero_area_box", name, aid, f"bbox {bbox} has width {w:g} and height {h:g}"), None
    iw, ih = size
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > iw + t or y + h > ih + t:
        return Problem("box_outside_image", name, aid, f"bbox {bbox} (x, y, width, height) in a {iw}x{ih} image"), None
    if x >= 0 and y >= 0 and x + w <= iw and y + h <= ih:
        return None, bbox
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(iw)), min(y + h, float(ih))
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return Problem("zero_area_box", name, aid, f"bbox {bbox} has no area inside the {iw}x{ih} image"), None
    return None, [x1, y1, x2 - x1, y2 - y1]


def _scan(root: Path, coco: dict[str, Any], split: str | None, cat_ids: set[int]) -> tuple[list[dict], list[Problem], int]:
    """Every image of one COCO file decoded and its annotations checked. Returns the image entries
    (each with `_split`, `_anns`, `_problems`, `sha256`), problems that belong to no image, and
    how many boxes were clipped."""
    images: list[dict] = []
    by_id: dict[Any, dict] = {}
    loose: list[Problem] = []
    seen_names: set[str] = set()
    for image in sorted(coco["images"], key=lambda im: (str(im.get("file_name")), _id_key(im.get("id")))):
        name = str(image.get("file_name"))
        entry = {**image, "_split": split, "_anns": [], "_problems": []}
        if image.get("id") in by_id or name in seen_names:
            loose.append(Problem("duplicate_entry", name, None, f"image id {image.get('id')} / file listed again"))
            continue
        seen_names.add(name)
        problems, digest, size = _check_image(root, image)
        entry["_problems"] += problems
        entry["sha256"], entry["_size"] = digest, size
        if size is not None:
            entry["width"], entry["height"] = size
        by_id[image.get("id")] = entry
        images.append(entry)
    clipped = 0
    for ann in sorted(coco["annotations"], key=lambda a: _id_key(a.get("id"))):
        entry = by_id.get(ann.get("image_id"))
        if entry is None:
            loose.append(Problem("unknown_image", None, ann.get("id"), f"image_id {ann.get('image_id')!r} is not in images"))
            continue
        name = str(entry.get("file_name"))
        if ann.get("category_id") not in cat_ids:
            entry["_problems"].append(Problem("unknown_category", name, ann.get("id"),
                                              f"category_id {ann.get('category_id')!r}"))
            continue
        if entry["_size"] is None:
            entry["_anns"].append(ann)  # the image itself is already reported
            continue
        problem, box = _check_box(ann, name, entry["_size"])
        if problem is not None:
            entry["_problems"].append(problem)
            continue
        clipped += box is not ann["bbox"]
        entry["_anns"].append({**ann, "bbox": box})
    return images, loose, clipped


def _duplicates(images: list[dict], from_split_files: bool) -> None:
    """Mark byte-identical images: the first (split order, then file name) stays clean."""
    order = {s: i for i, s in enumerate(SPLITS)}
    groups: dict[str, list[dict]] = defaultdict(list)
    for entry in images:
        if entry["sha256"] is not None:
            groups[entry["sha256"]].append(entry)
    for group in groups.values():
        group.sort(key=lambda e: (order.get(e["_split"], -1), str(e["file_name"])))
        first = group[0]
        for other in group[1:]:
            kind = "image_in_two_splits" if from_split_files and other["_split"] != first["_split"] else "duplicate_image"
            where = f" ({first['_split']} and {other['_split']})" if kind == "image_in_two_splits" else ""
            other["_problems"].append(Problem(kind, str(other["file_name"]), None,
                                              f"same bytes as {first['file_name']}{where}"))


def _split_names(images: list[dict], counts: Counter, val: float, test: float, seed: int) -> None:
    """Assign `_split` by image, stratified by each image's rarest class (negatives are their own
    stratum), so a class with a handful of images still reaches every split. Deterministic:
    strata in sorted order, members by file name, one seeded generator."""
    strata: dict[Any, list[dict]] = defaultdict(list)
    for entry in images:
        present = {a["category_id"] for a in entry["_anns"]}
        strata[min(present, key=lambda c: (counts[c], _id_key(c))) if present else None].append(entry)
    rng = np.random.default_rng(seed)
    for key in sorted(strata, key=lambda k: (k is not None, _id_key(k))):
        members = sorted(strata[key], key=lambda e: str(e["file_name"]))
        order = rng.permutation(len(members))
        n_test, n_val = round(len(members) * test), round(len(members) * val)
        for rank, i in enumerate(order):
            members[i]["_split"] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"


def validate_and_split(
    root: str | Path,
    *,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 42,
    min_per_class: int = 1,
    on_invalid: str = "fail",
    annotations: str = "annotations.json",
    split_files: Mapping[str, str] | None = None,
) -> PreparedCoco:
    """Load the COCO dataset at `root`, validate every image and annotation, and split it.

    Without `split_files`, `root/annotations` is split by image: `val` and `test` are fractions,
    `seed` makes it deterministic. With `split_files` ({"train": "train.json", "val": ..., "test":
    ...}, paths relative to root) the user's splits are kept, categories come from the train file,
    and an image in two of them is a problem. Raises CocoValidationError (policy `fail`) or drops
    and counts (policy `skip`); classes below `min_per_class` objects always raise.
    """
    root = Path(root)
    if on_invalid not in POLICIES:
        raise DataValidationError(f"data.on_invalid must be one of {', '.join(POLICIES)}, got {on_invalid!r}")
    if not root.is_dir():
        raise DataValidationError(f"data root {root} is not a folder: point data.root at a COCO folder "
                                  "(DIR/annotations.json with file_names relative to DIR)")
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise DataValidationError(f"split fractions val={val}, test={test} must be >= 0 and leave some for train")
    sources = {s: root / f for s, f in split_files.items()} if split_files else {None: root / annotations}
    unknown_splits = sorted(set(sources) - set(SPLITS) - {None})
    if unknown_splits:
        raise DataValidationError(f"split files for unknown split(s) {unknown_splits}: use {', '.join(SPLITS)}")
    cocos = {s: read_coco(p) for s, p in sources.items()}
    first = cocos.get("train", next(iter(cocos.values())))
    categories = sorted(first["categories"], key=lambda c: c["id"])
    cat_ids = {c["id"] for c in categories}

    images: list[dict] = []
    loose: list[Problem] = []
    clipped = 0
    for split, coco in cocos.items():
        found, problems, n_clipped = _scan(root, coco, split, cat_ids)
        images += found
        loose += problems
        clipped += n_clipped
    _duplicates(images, from_split_files=bool(split_files))

    problems = loose + [p for e in images for p in e["_problems"]]
    if problems and on_invalid == "fail":
        raise CocoValidationError(problems, root)
    kept = [e for e in images if not e["_problems"]]

    counts = Counter(a["category_id"] for e in kept for a in e["_anns"])
    parents = {c.get("supercategory") for c in categories}
    unused = [c for c in categories if counts[c["id"]] == 0 and c["name"] in parents]
    categories = [c for c in categories if c not in unused]
    small = [Problem("class_below_minimum", None, None,
                     f"class {c['name']!r} (id {c['id']}) has {counts[c['id']]} object(s), the minimum is {min_per_class}")
             for c in categories if counts[c["id"]] < min_per_class]
    if small:
        raise CocoValidationError(small, root, skippable=False)

    if not split_files:
        _split_names(kept, counts, val, test, seed)
    splits = {s: _coco_dict(first, categories, [e for e in kept if e["_split"] == s], root) for s in SPLITS}
    return PreparedCoco(
        splits=splits,
        categories=categories,
        problems=problems,
        dropped_images=len(images) - len(kept),
        dropped_annotations=sum(len(e["_anns"]) + sum(p.annotation_id is not None for p in e["_problems"])
                                for e in images if e["_problems"]) + sum(p.kind == "unknown_image" for p in loose),
        clipped_boxes=clipped,
        unused_categories=[str(c["name"]) for c in unused],
    )


def _coco_dict(source: dict[str, Any], categories: list[dict], entries: list[dict], root: Path) -> dict[str, Any]:
    images, annotations = [], []
    for e in sorted(entries, key=lambda e: str(e["file_name"])):
        images.append({k: v for k, v in e.items() if not k.startswith("_")} | {"file_name": display_path(root / e["file_name"])})
        annotations += [{k: v for k, v in a.items() if not k.startswith("_")} for a in e["_anns"]]
    return {"info": source.get("info", {}), "licenses": source.get("licenses", []), "categories": categories,
            "images": images, "annotations": annotations}
