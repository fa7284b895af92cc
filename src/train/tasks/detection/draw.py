"""Pictures a person looks at: images with their true boxes (green) and predicted boxes (red,
with label and score), side by side in a grid. Training logs one of the validation images each
epoch; the evaluate stage writes one of the test images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

TRUE, PREDICTED = (40, 220, 60), (255, 40, 40)


def to_uint8(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised (C, H, W) input tensor back to a uint8 (H, W, 3) picture."""
    x = image.detach().float().cpu().numpy()
    x = x * np.asarray(std, dtype=np.float32)[:, None, None] + np.asarray(mean, dtype=np.float32)[:, None, None]
    x = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x


def draw(picture: np.ndarray, labels: Sequence[str], truth: dict[str, torch.Tensor] | None,
         prediction: dict[str, torch.Tensor] | None, score_threshold: float = 0.3) -> Image.Image:
    """One picture with its true boxes and the predicted boxes scoring at least `score_threshold`."""
    img = Image.fromarray(picture).convert("RGB")
    d = ImageDraw.Draw(img)
    if truth is not None:
        for box in truth["boxes"].reshape(-1, 4).tolist():
            d.rectangle(box, outline=TRUE, width=2)
    if prediction is not None:
        keep = prediction["scores"] >= score_threshold
        for box, s, lab in zip(prediction["boxes"][keep].tolist(), prediction["scores"][keep].tolist(),
                               prediction["labels"][keep].tolist()):
            d.rectangle(box, outline=PREDICTED, width=1)
            name = labels[int(lab)] if 0 <= int(lab) < len(labels) else str(int(lab))
            d.text((box[0] + 2, max(box[1] - 11, 0)), f"{name} {s:.2f}", fill=PREDICTED)
    return img


def grid(pictures: Sequence[Image.Image], columns: int = 4) -> Image.Image:
    """Pictures of one size in rows of `columns`, 4 px apart."""
    w, h = pictures[0].size
    rows = (len(pictures) + columns - 1) // columns
    cols = min(columns, len(pictures))
    out = Image.new("RGB", (cols * w + (cols - 1) * 4, rows * h + (rows - 1) * 4), (255, 255, 255))
    for i, p in enumerate(pictures):
        out.paste(p, ((i % columns) * (w + 4), (i // columns) * (h + 4)))
    return out


def save_grid(images: torch.Tensor, truths: Sequence[dict[str, torch.Tensor]],
              predictions: Sequence[dict[str, torch.Tensor]], labels: Sequence[str], mean: Sequence[float],
              std: Sequence[float], path: Path, score_threshold: float = 0.3, columns: int = 4) -> Path:
    """A grid of input images (normalised tensors) with true and predicted boxes, as a JPEG."""
    pics = [draw(to_uint8(x, mean, std), labels, t, p, score_threshold)
            for x, t, p in zip(images, truths, predictions)]
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(pics, columns).save(path, quality=90)
    return path
