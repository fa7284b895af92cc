"""The bundled detection dataset: scikit-learn's handwritten digit scans drawn as ink onto crops of
the real photographs that ship inside scikit-image and scikit-learn, written as COCO. No download.

Each image is a crop of one photograph (zoomed, mirrored, brightness and contrast jittered) at a
size between 192 and 320 px a side, with 1-6 digits (a few images have none: negatives) at
varied scales and aspect ratios, each an 8x8 scan upscaled bicubically and blended like ink
(dark on light or light on dark, tinted, partly transparent; now and then against the local
contrast), overlapping others by a bounded amount. Then blur, noise, grayscale and JPEG
re-encoding, each for some of the images. Boxes are tight around the visible ink (a digit drawn
later hides the ink under it); each object also has its visible-ink mask as COCO RLE.

Deterministic: image i depends only on (seed, i), so the same seed gives the same bytes.

    python -m train.tasks.detection.synth data/raw/digits_det [n=3000] [seed=0] [min_digit=16 ...]

writes data/raw/digits_det/annotations.json and data/raw/digits_det/images/<i>.jpg|png.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from train.tasks.detection.masks import rle_encode

DEFAULT_N = 3000
DEFAULT_SEED = 0
CATEGORIES = [{"id": d, "name": str(d), "supercategory": "digit"} for d in range(10)]

# Real photographs shipped inside scikit-image's wheel (the synthetic test patterns, and the
# images it would have to download, are left out) and scikit-learn's two sample photos.
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
                  "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket",
                  "stereo_motorcycle", "text")
ATTRIBUTION = ("Backgrounds: scikit-image's sample images (skimage.data; see its README for each image's licence) "
               "and scikit-learn's sample photos china.jpg and flower.jpg (CC BY 2.0, by danielbuechele and "
               "vultilion on Flickr). Digits: scikit-learn's load_digits (UCI optical recognition of handwritten "
               "digits, CC BY 4.0).")


@dataclass(frozen=True)
class SynthConfig:
    """The generator's knobs; the defaults are the bundled dataset."""

    min_side: int = 192
    max_side: int = 320
    max_objects: int = 6
    negative_fraction: float = 0.05
    min_digit: int = 16          # digit height in px (before the ink's own margin)
    max_digit_fraction: float = 0.45  # of the image's shorter side, for most digits
    large_p: float = 0.06        # digits 0.6-0.85 of the shorter side (COCO's "large" objects)
    max_overlap: float = 0.25    # intersection / the smaller box's area, between any two objects
    blur_p: float = 0.4
    noise_p: float = 0.5
    gray_p: float = 0.15
    jpeg_p: float = 0.9
    reversed_ink_p: float = 0.1  # ink lighter than a light ground, or darker than a dark one


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """Every background photograph as uint8 RGB, in a fixed order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = []
    for name in SKIMAGE_PHOTOS:
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: (left, right, disparity)
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out.append(np.ascontiguousarray(img[:, :, :3], dtype=np.uint8))
    out.extend(np.asarray(p, dtype=np.uint8) for p in load_sample_images().images)
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digit scans scaled to 0..1 (float32, (n, 8, 8)) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    photos = _photos()
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    zoom = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))  # output px per photo px
    cw, ch = min(pw, w / zoom), min(ph, h / zoom)
    x0, y0 = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    img = Image.fromarray(photo).resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    contrast, brightness = rng.uniform(0.6, 1.2), rng.uniform(-0.15, 0.15)
    return np.clip((arr - 0.5) * contrast + 0.5 + brightness, 0.0, 1.0)


def _ink_alpha(rng: np.random.Generator, scan: np.ndarray, w: int, h: int) -> np.ndarray:
    """The scan, with a blank 1-pixel margin so strokes end round, upscaled bicubically to (h, w),
    then a soft threshold: smooth strokes whose thickness varies with the threshold."""
    padded = np.pad(scan, 1)
    big = np.asarray(Image.fromarray(padded).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    t, soft = rng.uniform(0.4, 0.6), rng.uniform(0.08, 0.15)
    return np.clip((big - t) / soft + 0.5, 0.0, 1.0)


def _ink_colour(rng: np.random.Generator, local: float, cfg: SynthConfig) -> np.ndarray:
    """Ink darker than a light ground or lighter than a dark one, by 0.25-0.85 in grey level;
    for `reversed_ink_p` of the digits the other way round where the ground leaves room for it."""
    delta = rng.uniform(0.25, 0.85)
    dark = local > 0.5
    if rng.random() < cfg.reversed_ink_p and (local - 0.2 if not dark else 0.8 - local) > 0:
        dark = not dark
    grey = local - delta if dark else local + delta
    tint = rng.uniform(-1.0, 1.0, 3) * rng.uniform(0.0, 0.25)
    return np.clip(grey + tint, 0.0, 1.0).astype(np.float32)


def _overlap_ok(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]], limit: float) -> bool:
    x1, y1, x2, y2 = box
    for a1, b1, a2, b2 in placed:
        iw, ih = min(x2, a2) - max(x1, a1), min(y2, b2) - max(y1, b1)
        if iw > 0 and ih > 0:
            smaller = min((x2 - x1) * (y2 - y1), (a2 - a1) * (b2 - b1))
            if iw * ih > limit * smaller:
                return False
    return True


def render(index: int, seed: int = DEFAULT_SEED, cfg: SynthConfig = SynthConfig()) -> tuple[bytes, str, list[dict[str, Any]]]:
    """Image `index` of the dataset with `seed`: (encoded bytes, "jpg" or "png", objects), where
    each object is {"category_id", "bbox" [x, y, w, h] (ints, tight around the visible ink),
    "area" (visible ink pixels), "segmentation" (COCO RLE)}."""
    rng = np.random.default_rng([seed, index])
    w, h = (int(v) for v in rng.integers(cfg.min_side, cfg.max_side + 1, size=2))
    canvas = _background(rng, w, h)
    scans, labels = _digits()
    n = 0 if rng.random() < cfg.negative_fraction else int(rng.integers(1, cfg.max_objects + 1))
    placed: list[tuple[int, int, int, int]] = []
    objects: list[tuple[int, np.ndarray]] = []  # (label, full-frame ink mask), in drawing order
    max_h = max(cfg.min_digit + 1, int(cfg.max_digit_fraction * min(w, h)))
    for _ in range(n):
        if rng.random() < cfg.large_p:
            dh = int(rng.uniform(0.6, 0.85) * min(w, h))
        else:
            dh = int(np.exp(rng.uniform(np.log(cfg.min_digit), np.log(max_h))))
        dw = max(8, int(dh * rng.uniform(0.75, 1.15)))
        for _attempt in range(20):
            x, y = int(rng.integers(0, w - dw + 1)), int(rng.integers(0, h - dh + 1))
            if _overlap_ok((x, y, x + dw, y + dh), placed, cfg.max_overlap):
                break
        else:
            continue
        j = int(rng.integers(len(scans)))
        alpha = _ink_alpha(rng, scans[j], dw, dh) * rng.uniform(0.6, 1.0)
        patch = canvas[y:y + dh, x:x + dw]
        colour = _ink_colour(rng, float(patch.mean()), cfg)
        patch[:] = patch * (1.0 - alpha[:, :, None]) + colour * alpha[:, :, None]
        mask = np.zeros((h, w), dtype=bool)
        mask[y:y + dh, x:x + dw] = alpha > 0.5 * alpha.max()
        placed.append((x, y, x + dw, y + dh))
        objects.append((int(labels[j]), mask))

    if rng.random() < cfg.noise_p:
        canvas = canvas + rng.normal(0.0, rng.uniform(0.01, 0.05), canvas.shape).astype(np.float32)
    img = Image.fromarray(np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < cfg.blur_p:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.4, 1.4))))
    if rng.random() < cfg.gray_p:
        img = img.convert("L")
    buf = io.BytesIO()
    if rng.random() < cfg.jpeg_p:
        img.save(buf, format="JPEG", quality=int(rng.integers(35, 96)))
        ext = "jpg"
    else:
        img.save(buf, format="PNG")
        ext = "png"

    annotations = []
    hidden = np.zeros((h, w), dtype=bool)
    for label, mask in reversed(objects):  # the last drawn is on top: it hides what is under it
        visible = mask & ~hidden
        hidden |= mask
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        if rows.size == 0:
            continue
        x1, y1, x2, y2 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
        annotations.append({"category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(visible.sum()),
                            "segmentation": rle_encode(visible), "iscrowd": 0})
    annotations.reverse()
    return buf.getvalue(), ext, annotations


def generate(root: Path, n: int = DEFAULT_N, seed: int = DEFAULT_SEED, cfg: SynthConfig = SynthConfig()) -> dict[str, Any]:
    """Write n images under root/images/ and root/annotations.json (replacing any earlier ones);
    return the COCO dict."""
    root = Path(root)
    images_dir = root / "images"
    if images_dir.exists():
        shutil.rmtree(images_dir)
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        data, ext, objects = render(i, seed, cfg)
        name = f"images/{i:05d}.{ext}"
        (root / name).write_bytes(data)
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **obj})
    coco = {
        "info": {"description": "digits_det: scikit-learn digit scans drawn on real photographs (visionops)",
                 "version": "1", "n": n, "seed": seed, "config": asdict(cfg), "attribution": ATTRIBUTION},
        "licenses": [],
        "categories": CATEGORIES,
        "images": images,
        "annotations": annotations,
    }
    (root / "annotations.json").write_text(json.dumps(coco, separators=(",", ":")) + "\n")
    return coco


def _parse(argv: list[str]) -> tuple[Path, int, int, SynthConfig]:
    """DIR, n=, seed= and any SynthConfig field as key=value (min_digit=20 negative_fraction=0.1)."""
    root, n, seed, knobs = Path("data/raw/digits_det"), DEFAULT_N, DEFAULT_SEED, {}
    types = {f.name: f.type for f in fields(SynthConfig)}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq:
            root = Path(arg)
        elif key == "n":
            n = int(value)
        elif key == "seed":
            seed = int(value)
        elif key in types:
            knobs[key] = int(value) if types[key] in (int, "int") else float(value)
        else:
            raise SystemExit(f"unknown argument {arg!r}: usage: python -m train.tasks.detection.synth DIR [n=N] "
                             f"[seed=S] [{'|'.join(types)}=VALUE]")
    return root, n, seed, SynthConfig(**knobs)


def main(argv: list[str] | None = None) -> None:
    root, n, seed, cfg = _parse(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    coco = generate(root, n, seed, cfg)
    took = time.perf_counter() - start
    negatives = n - len({a["image_id"] for a in coco["annotations"]})
    print(f"Wrote {n} images ({len(coco['annotations'])} objects, {negatives} without any) to {root}/ "
          f"in {took:.1f} s ({1000 * took / max(n, 1):.1f} ms per image)")


if __name__ == "__main__":
    main()
