"""Batch inference: run a registered model over a folder of images or a video's frames into Parquet/CSV.

    python -m serve.batch input=<folder|image|video> output=<file.parquet|file.csv>
        [model=models:/<name>@<alias>] [every=N] [batch_size=64] [tracking_uri=...] [recursive=true]

model= and tracking_uri= default to $VISIONOPS_MODEL_URI and $MLFLOW_TRACKING_URI, else to the
project's champion and store (`visionops.project`). Images and video frames go through the
bundle's own preprocessing (the one serving uses). A corrupt image gets a row with `error` set
instead of stopping the run. Imports only `visionops`, never `train`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionops import project
from visionops.cli import parse_key_values
from visionops.errors import VisionopsError
from visionops.images import IMAGE_SUFFIXES, ImageDecodeError, is_image_file, list_images, normalize_mode
from visionops.model_store import ModelStoreError, fetch
from visionops.onnx_runtime import top_k
from visionops.preprocess import PreprocessSpec, batch, load_and_preprocess, preprocess

DEFAULTS: dict[str, str | None] = {"input": None, "output": None, "model": None,
                                   "every": "1", "batch_size": "64", "tracking_uri": None, "recursive": "true"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
OUTPUT_SUFFIXES = (".parquet", ".csv")
TOP_K = 5
USAGE = ("usage: python -m serve.batch input=<folder|image|video> output=<file.parquet|file.csv> "
         "[model=models:/<name>@<alias>] [every=N] [batch_size=64] [tracking_uri=...] [recursive=true]")

Item = tuple[dict[str, Any], "np.ndarray | None"]  # row fields so far, model input (None when it failed)


class BatchError(ValueError):
    """Bad input a user can fix: the message says how."""


@dataclass
class BatchResult:
    table: Any  # pandas.DataFrame, one row per image or sampled frame
    model: str
    version: str
    output: Path

    @property
    def failed(self) -> int:
        return int(self.table["error"].notna().sum())

    def summary(self) -> str:
        what = "frames" if "frame" in self.table.columns else "images"
        return (f"Predicted {len(self.table)} {what} ({self.failed} failed to decode) with {self.model} "
                f"v{self.version}; results saved to {self.output}")


def image_items(paths: Iterable[Path], spec: PreprocessSpec) -> Iterator[Item]:
    for path in paths:
        try:
            yield {"source": str(path), "error": None}, load_and_preprocess(path, spec)
        except ImageDecodeError as exc:
            yield {"source": str(path), "error": str(exc)}, None


def open_video(path: Path) -> Any:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise BatchError(f"cannot read video {path}: OpenCV could not open it (use a folder of images or a "
                         f"{'/'.join(sorted(VIDEO_SUFFIXES))} file)")
    return cap


def video_items(cap: Any, path: Path, spec: PreprocessSpec, every: int = 1) -> Iterator[Item]:
    """Every `every`-th frame, BGR -> RGB -> PIL -> the same preprocessing as images."""
    import cv2
    from PIL import Image

    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    for index in itertools.count():
        if not cap.grab():
            return
        if index % every:
            continue
        row = {"source": f"{path}#frame={index}", "frame": index,
               "time_s": round(index / fps, 6) if fps > 0 else float("nan"), "error": None}
        ok, bgr = cap.retrieve()
        if not ok or bgr is None:
            yield {**row, "error": f"frame {index} could not be decoded"}, None
            continue
        img = normalize_mode(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), spec.channels)
        yield row, preprocess(img, spec)


def predict_items(onnx: Any, items: Iterable[Item], labels: list[str], version: str, batch_size: int = 64,
                  bar: Any = None) -> list[dict[str, Any]]:
    """Run the model over `items` in batches; one output row per item, in input order."""
    rows: list[dict[str, Any]] = []
    it = iter(items)
    while chunk := list(itertools.islice(it, batch_size)):
        good = [x for _, x in chunk if x is not None]
        probs = iter(onnx.predict_proba(batch(good), batch_size=batch_size) if good else [])
        for fields, x in chunk:
            row = {**fields, "label": None, "score": float("nan"), "top_k": None, "model_version": version}
            if x is not None:
                best = top_k(next(probs), labels, TOP_K)
                row.update(label=best[0]["label"], score=best[0]["score"],
                           top_k=json.dumps([{**t, "score": round(t["score"], 6)} for t in best]))
            rows.append(row)
        if bar is not None:
            bar.update(len(chunk))
    return rows


def run(input: str | os.PathLike, output: str | os.PathLike, model: str | None = None, every: int = 1,
        batch_size: int = 64, tracking_uri: str | None = None, recursive: bool = True,
        progress: bool = True) -> BatchResult:
    """Predict every image under `input` (or every `every`-th frame of a video) and save the table."""
    import pandas as pd
    from tqdm import tqdm

    src, out = Path(input), Path(output)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise BatchError(f"output {out} must end with {' or '.join(OUTPUT_SUFFIXES)} "
                         f"(got {out.suffix or 'no suffix'!r})")
    if every < 1 or batch_size < 1:
        raise BatchError("every= and batch_size= must be positive integers")
    if not src.exists():
        raise BatchError(f"input {src} does not exist: give a folder of images or a video file")
    paths = list_images(src, recursive) if src.is_dir() else [src] if is_image_file(src) else None
    if paths == []:
        raise BatchError(f"no image files under {src} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    model, tracking_uri = project.model_uri(model), project.tracking_uri(tracking_uri)
    db = project.sqlite_file(tracking_uri)
    if db is not None and not db.is_file():
        raise BatchError(f"no MLflow store at {tracking_uri} (MLflow would create an empty one): set "
                         "MLFLOW_TRACKING_URI or tracking_uri= to the store the model is registered in")
    cap = open_video(src) if paths is None else None
    try:
        with tempfile.TemporaryDirectory(prefix="visionops-batch-") as tmp:
            local = fetch(model, dst=tmp, tracking_uri=tracking_uri)
            onnx = local.load()  # the session holds the model; the downloaded files can go
        spec, labels = local.bundle.preprocess, local.bundle.labels
        if cap is None:
            items, total, unit = image_items(paths or [], spec), len(paths or []), "img"
        else:
            import cv2

            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            items, total, unit = video_items(cap, src, spec, every), (math.ceil(n / every) if n > 0 else None), "frame"
        with tqdm(total=total, unit=unit, desc=f"{local.name} v{local.version}", disable=not progress) as bar:
            rows = predict_items(onnx, items, labels, local.version, batch_size, bar)
    finally:
        if cap is not None:
            cap.release()
    if not rows:
        raise BatchError(f"no frames could be read from {src}: is it a video OpenCV can decode?")
    columns = ["source", *(["frame", "time_s"] if cap is not None else []), "label", "score", "top_k",
               "model_version", "error"]
    table = pd.DataFrame(rows, columns=columns)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(out, index=False) if out.suffix.lower() == ".parquet" else table.to_csv(out, index=False)
    except OSError as exc:
        raise BatchError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return BatchResult(table, local.name, local.version, out)


def parse_args(argv: list[str]) -> dict[str, Any]:
    opts = parse_key_values(argv, DEFAULTS, USAGE, BatchError)
    if not opts["input"] or not opts["output"]:
        raise BatchError(f"input= and output= are required; {USAGE}")
    try:
        every, batch_size = int(str(opts["every"])), int(str(opts["batch_size"]))
    except ValueError:
        raise BatchError(f"every= and batch_size= must be integers, got {opts['every']!r} and "
                         f"{opts['batch_size']!r}") from None
    flag = str(opts["recursive"]).lower()
    if flag not in ("true", "false", "1", "0", "yes", "no"):
        raise BatchError(f"recursive= must be true or false, got {opts['recursive']!r}")
    return {**opts, "every": every, "batch_size": batch_size, "recursive": flag in ("true", "1", "yes")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    try:
        result = run(**parse_args(argv))
    except (BatchError, ModelStoreError, VisionopsError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
