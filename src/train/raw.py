"""The `raw` stage: write scikit-learn's bundled handwritten digits as an ImageFolder of PNGs.

Real 8x8 scans (16 grey levels), shipped inside scikit-learn: no download. Output:
data/raw/digits/<0..9>/<index>.png
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(root: Path, per_class: int | None = None) -> int:
    """Write the digits (all 1,797, or the first `per_class` of each class) under root/<label>/."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    for label in sorted({int(t) for t in digits.target}):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
    written: dict[int, int] = {}
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        if per_class is not None and written.get(int(label), 0) >= per_class:
            continue
        written[int(label)] = written.get(int(label), 0) + 1
        # 0..16 grey levels -> 0..255, written losslessly.
        arr = np.round(img * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(arr).save(root / str(int(label)) / f"{i:04d}.png", optimize=False)
    return sum(written.values())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path("data/raw/digits")
    n = write_digits(root)
    print(f"Wrote {n} digit images to {root}/")


if __name__ == "__main__":
    main()
