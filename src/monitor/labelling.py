"""After a drift: the window's kept production images copied out for labelling, thumbnails of the
most atypical ones for the email, and the next step (label, merge, retrain)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from monitor.drift import atypicality


def resolve_image(path: Any, log_dir: Path) -> Path | None:
    if path is None or (isinstance(path, float) and np.isnan(path)) or not str(path):
        return None
    p = Path(str(path))
    if p.exists():
        return p
    alt = Path(log_dir) / "images" / p.name  # the service ran from another working directory
    return alt if alt.exists() else None


def copy_kept_images(df: Any, log_dir: Path, dest: Path) -> int:
    """Kept images of the window -> dest/<predicted class>/<file>: ready for labelling."""
    n = 0
    for path, label in zip(df["image_path"], df["predicted_label"]):
        src = resolve_image(path, log_dir)
        if src is None:
            continue
        target = dest / re.sub(r"[^\w.-]", "_", str(label)) / src.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        n += 1
    return n


def next_step(cfg: Any, window: str, incoming: Path, copied: int) -> str:
    curated = str(cfg.monitor.get("curated_root") or "data/curated")
    root = str(cfg.data.get("root", "data/raw/digits")) if "data" in cfg else "data/raw/digits"
    if copied:
        label = (f"  1. label: {copied} kept production images are in {incoming}/, sorted into folders by the "
                 "model's prediction; move each wrong one into its true class folder")
    else:
        label = (f"  1. label: no production images were kept in this window (start the service with "
                 f"VISIONOPS_KEEP_IMAGES=0.05 to keep 5%); put new labelled images in {curated}/<class>/")
    return "\n".join([
        "Next step: retrain on the drifted data (the registry gate decides whether it replaces the champion)",
        label,
        f"  2. merge: mkdir -p {curated} && cp -rn {root}/. {curated}/" + (f" && cp -rn {incoming}/. {curated}/" if copied else ""),
        f"  3. retrain: dvc exp run -n retrain-{window} -S data.root={curated}",
        "     (then `dvc exp show`, and `dvc exp apply` + commit the experiment that the register stage promoted)",
    ])


def atypical_thumbnails(df: Any, ref: Any, cur: Any, gamma: float, log_dir: Path, k: int) -> list[tuple[bytes, str, float]]:
    """The k most atypical kept images: (PNG thumbnail, predicted label, top-1 probability)."""
    from monitor.emailer import thumbnail

    if k <= 0 or "image_path" not in df.columns:
        return []
    score = atypicality(ref, cur, gamma)
    out = []
    for i in np.argsort(-score, kind="stable"):
        src = resolve_image(df["image_path"].iloc[i], log_dir)
        png = thumbnail(src) if src is not None else None
        if png:
            out.append((png, str(df["predicted_label"].iloc[i]), float(df["top_score"].iloc[i])))
        if len(out) >= k:
            break
    return out
