"""Helpers shared by the tests: tiny configs, a real pipeline run, subprocess calls, and builds
started in the background."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from train.build import build_version, pipeline_cfg  # shared with the benchmarks

__all__ = ["DETECTOR", "REPO", "Background", "bin_path", "build_version", "make_cfg", "pipeline_cfg", "run_cli",
           "tiny_overrides", "write_easy_detection"]
REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(tmp: Path, data_root: Path, extra: list[str] | None = None) -> list[str]:
    return [
        "trainer=cpu",
        f"paths.prepared={tmp / 'prepared'}",
        f"paths.models={tmp / 'models'}",
        f"paths.reports={tmp / 'reports'}",
        f"data.root={data_root}",
        "data.validation.min_per_class=3",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "model.net.width=8",
        f"logger.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
        "logger.log_system_metrics=false",
        *(extra or []),
    ]


def make_cfg(tmp: Path, data_root: Path, extra: list[str] | None = None) -> DictConfig:
    from visionops.config import compose

    return compose(tiny_overrides(tmp, data_root, extra))


def run_cli(args: list[str], cwd: Path = REPO, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
                          check=False)


def bin_path(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else (shutil.which(name) or name)


class Background:
    """A command started now, in a process group of its own, its output kept in files under `logs`;
    `wait()` returns what subprocess.run would have. `path` is the folder it builds in. The tests
    start their slowest self-contained builds this way as the session begins (tests/conftest.py,
    `_head_starts`), to run on the core that the quick tests leave idle."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], logs: Path, path: Path):
        self.args, self.path = args, path
        self._out, self._err = logs / "stdout.txt", logs / "stderr.txt"
        self._started = time.monotonic()
        with open(self._out, "wb") as out, open(self._err, "wb") as err:
            self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True)

    def wait(self, timeout: float = 600) -> subprocess.CompletedProcess:
        """Its result, once it has finished; killed and TimeoutExpired `timeout` s after it started."""
        try:
            self.proc.wait(timeout=max(0.0, self._started + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        return subprocess.CompletedProcess(self.args, self.proc.returncode, self._out.read_text(errors="replace"),
                                           self._err.read_text(errors="replace"))

    def stop(self) -> None:
        """Kill it and everything it started, if it is still running."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# A detection project small enough to train in seconds: a narrow CenterNet at 128 px, a quick export.
DETECTOR = [
    "task=detection", "data=coco", "data.name=digits_easy", "data.image_size=[128,128]", "data.batch_size=16",
    "data.num_workers=0", "data.validation.min_per_class=1", "model=centernet", "model.net.widths=[8,16,32,64]",
    "model.net.neck=16", "model.optimizer.lr=0.005", "task.log_images=0", "export.latency.runs=20",
    "export.latency.batches=[1,8]", "export.latency.seconds=0.2", "export.int8.calibration_images=32",
]


def write_easy_detection(root: Path, n: int = 300, seed: int = 0, size: int = 128, digits: tuple[int, ...] = (0, 1),
                         max_objects: int = 2) -> Path:
    """A COCO folder a tiny detector learns in a minute: `n` images of `size` px, each with up to
    `max_objects` big, bright scans of the `digits` (real sklearn scans, a quarter to half the image
    tall, not overlapping) on a dark, slightly noisy, tinted ground; every tenth image has none.
    0 and 1 look alike in a mirror, so a horizontal flip keeps the labels."""
    import json

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    scans = {k: d.images[d.target == k] / 16.0 for k in digits}
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img = np.full((size, size), rng.uniform(0.0, 0.35)) + rng.normal(0, 0.03, (size, size))
        placed: list[tuple[int, int, int]] = []
        want = 0 if i % 10 == 0 else int(rng.integers(1, max_objects + 1))
        for _ in range(20 * want):
            if len(placed) == want:
                break
            s = int(rng.integers(size // 4, size // 2))
            x, y = (int(v) for v in rng.integers(0, size - s, 2))
            if any(x < px + ps and px < x + s and y < py + ps and py < y + s for px, py, ps in placed):
                continue
            label = int(rng.integers(len(digits)))
            scan = scans[digits[label]][rng.integers(len(scans[digits[label]]))]
            ink = np.asarray(Image.fromarray((scan * 255).astype(np.uint8)).resize((s, s), Image.Resampling.BICUBIC),
                             np.float64) / 255
            ys, xs = np.nonzero(ink > 0.25)
            img[y : y + s, x : x + s] = img[y : y + s, x : x + s] * (1 - ink) + ink * rng.uniform(0.8, 1.0)
            placed.append((x, y, s))
            w, h = int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": label + 1, "iscrowd": 0,
                         "bbox": [x + int(xs.min()), y + int(ys.min()), w, h], "area": float(w * h)})
        rgb = (np.clip(img, 0, 1)[:, :, None] * rng.uniform(0.7, 1.0, 3) * 255).astype(np.uint8)
        name = f"images/{i:04d}.png"
        Image.fromarray(rgb).save(root / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
    categories = [{"id": j + 1, "name": str(digit), "supercategory": "digit"} for j, digit in enumerate(digits)]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return root


if __name__ == "__main__":  # python tests/helpers.py STORE WORK DATA [OVERRIDE ...]: build_version; its verdict as JSON
    import json

    store, work, data, *extra = sys.argv[1:]
    print(json.dumps(build_version(Path(store), Path(work), Path(data), extra), default=str))
