"""Per-object masks as COCO run-length encoding: the compressed string form pycocotools and
faster-coco-eval read (`{"size": [h, w], "counts": "..."}`), written without depending on either.

Runs go down the columns (Fortran order) and start with the count of 0s, as COCO defines them.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _runs(mask: np.ndarray) -> list[int]:
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    if flat.size and flat[0]:
        runs.insert(0, 0)  # COCO's runs start with a (possibly empty) run of 0s
    return runs


def _compress(counts: list[int]) -> str:
    """pycocotools' rleToString: each count (minus the one two before it, from the third on)
    as 5-bit groups with a continuation bit, offset into printable ASCII by 48."""
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def _decompress(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """A 2-D boolean mask -> COCO compressed RLE {"size": [h, w], "counts": str}."""
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": _compress(_runs(mask))}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed string or uncompressed list of counts) -> a (h, w) boolean mask."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    counts = _decompress(counts) if isinstance(counts, str) else [int(c) for c in counts]
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE covers {flat.size} pixels, its size says {h}x{w} = {h * w}")
    return flat.reshape((w, h)).T


def rle_area(rle: dict[str, Any]) -> int:
    """Pixels inside the mask (the sum of the runs of 1s)."""
    counts = rle["counts"]
    counts = _decompress(counts) if isinstance(counts, str) else list(counts)
    return int(sum(counts[1::2]))
