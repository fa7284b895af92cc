"""Batch inference for real, against the tests' shared champion (tests/conftest.py): a folder of
images to Parquet (same predictions as the model in-process), a corrupt file that does not stop the
run, a video's every 5th frame to CSV, and bad input that fails with one clear line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import run_cli

pytestmark = pytest.mark.integration
CHAMPION = "models:/visionops-digits@champion"
COLUMNS = ["source", "label", "score", "top_k", "model_version", "error"]


@pytest.fixture(scope="module")
def registered(champion) -> str:
    """The tracking URI of a store holding version 1 of visionops-digits (@champion)."""
    return champion.tracking_uri


@pytest.fixture(scope="module")
def model(registered, tmp_path_factory):
    from visionops.model_store import fetch

    return fetch(CHAMPION, dst=tmp_path_factory.mktemp("fetched"), tracking_uri=registered)


def _copy_digits(digits: Path, dst: Path, per_class: int) -> Path:
    """`per_class` digit PNGs per class, kept in their class subfolders (so the listing must recurse)."""
    for cls in sorted(digits.iterdir()):
        for png in sorted(cls.glob("*.png"))[:per_class]:
            (dst / cls.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(png, dst / cls.name / png.name)
    return dst


def _in_process_probs(model, images: list[np.ndarray]) -> np.ndarray:
    from visionops.preprocess import batch, preprocess

    spec = model.bundle.preprocess
    return model.load().predict_proba(batch([preprocess(img, spec) for img in images]))


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-2000:]
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_folder_to_parquet_matches_the_model_in_process(registered, model, digits_small, tmp_path):
    from serve.batch import run
    from visionops.images import decode_image

    folder = _copy_digits(digits_small, tmp_path / "images", per_class=2)
    out = tmp_path / "new" / "dir" / "preds.parquet"
    result = run(folder, out, tracking_uri=registered, batch_size=8, progress=False)  # 20 images: 8 + 8 + 4

    df = pd.read_parquet(out)
    assert list(df.columns) == COLUMNS
    assert df["source"].tolist() == sorted(str(p) for p in folder.rglob("*.png"))
    labels = model.bundle.labels
    assert df["error"].isna().all() and set(df["label"]) <= set(labels)
    assert ((df["score"] > 0) & (df["score"] <= 1)).all()
    assert (df["model_version"] == "1").all()

    spec = model.bundle.preprocess
    probs = _in_process_probs(model, [decode_image(s, channels=spec.channels) for s in df["source"]])
    assert df["label"].tolist() == [labels[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(df["score"], probs.max(1), rtol=1e-5)

    top = json.loads(df["top_k"][0])
    assert len(top) == 5 and top[0] == {"label": df["label"][0], "score": pytest.approx(df["score"][0], abs=1e-6)}
    assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    assert result.summary() == (f"Predicted 20 images (0 failed to decode) with visionops-digits v1; "
                                f"results saved to {out}")


def test_a_corrupt_image_gets_an_error_row_and_the_run_goes_on(registered, digits_small, tmp_path):
    folder = _copy_digits(digits_small, tmp_path / "images", per_class=1)
    (folder / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    (folder / "notes.txt").write_text("not an image: skipped by suffix")
    out = tmp_path / "preds.parquet"

    r = run_cli(["-m", "serve.batch", f"input={folder}", f"output={out}", "batch_size=4"],
                env={"MLFLOW_TRACKING_URI": registered})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == (
        f"Predicted 11 images (1 failed to decode) with visionops-digits v1; results saved to {out}")

    df = pd.read_parquet(out).set_index("source")
    broken = df.loc[str(folder / "3" / "broken.png")]
    assert "corrupt or truncated" in broken["error"]
    assert broken["label"] is None and np.isnan(broken["score"]) and broken["top_k"] is None
    assert df.drop(index=str(folder / "3" / "broken.png"))["error"].isna().all() and len(df) == 11


def test_every_fifth_frame_of_a_video_to_csv(registered, model, digits_small, tmp_path, capsys):
    import cv2
    from PIL import Image

    from serve.batch import main
    from visionops.images import normalize_mode

    pngs = sorted(digits_small.rglob("*.png"))[::6][:30]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 32))
    assert writer.isOpened()
    for png in pngs:
        rgb = np.asarray(Image.open(png).convert("RGB").resize((32, 32), Image.Resampling.NEAREST))
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()

    out = tmp_path / "frames.csv"
    assert main([f"input={video}", f"output={out}", "every=5", f"tracking_uri={registered}"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"with visionops-digits v1; results saved to {out}")

    df = pd.read_csv(out)
    assert list(df.columns) == ["source", "frame", "time_s", *COLUMNS[1:]]
    assert df["frame"].tolist() == [0, 5, 10, 15, 20, 25]
    assert df["source"].tolist() == [f"{video}#frame={i}" for i in range(0, 30, 5)]
    np.testing.assert_allclose(df["time_s"], df["frame"] / 10.0)
    assert df["error"].isna().all() and set(df["label"].astype(str)) <= set(model.bundle.labels)

    # the frames the CLI saw, decoded here and preprocessed like images: the same predictions
    cap, frames = cv2.VideoCapture(str(video)), []
    while (got := cap.read())[0]:
        frames.append(normalize_mode(Image.fromarray(cv2.cvtColor(got[1], cv2.COLOR_BGR2RGB)), 3))
    cap.release()
    probs = _in_process_probs(model, [normalize_mode(f, model.bundle.preprocess.channels) for f in frames[::5]])
    np.testing.assert_allclose(df["score"], probs.max(1), rtol=1e-4)


@pytest.mark.parametrize("args, message", [
    (["batchsize=8"], "error: unknown argument 'batchsize'; expected one of: input, output,"),
    (["input={tmp}/nope"], "does not exist"),
    (["output={tmp}/preds.json"], "must end with .parquet or .csv"),
    (["input={tmp}/broken.mp4"], "cannot read video"),
    (["tracking_uri=sqlite:///{tmp}/none.db"], "no MLflow store at"),
])
def test_bad_input_fails_with_one_clear_line(tmp_path, args, message):
    (tmp_path / "broken.mp4").write_bytes(b"this is not a video")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"listed by its suffix; never decoded here")
    base = {"input": f"{tmp_path}/images", "output": f"{tmp_path}/preds.csv"}
    extra = [a.format(tmp=tmp_path) for a in args]
    for a in extra:
        base.pop(a.split("=", 1)[0], None)
    (tmp_path / "store.db").touch()  # every case fails before the store is opened: it only has to exist
    r = run_cli(["-m", "serve.batch", *(f"{k}={v}" for k, v in base.items()), *extra],
                env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'store.db'}"})
    assert r.returncode == 2
    errors = _error_lines(r.stderr)
    assert len(errors) == 1 and message in errors[0], r.stderr[-2000:]
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "preds.csv").exists()
    if "unknown" in message:
        assert "did you mean 'batch_size'?" in errors[0]


def test_a_missing_alias_fails_with_one_clear_line(registered, digits_small, tmp_path):
    folder = _copy_digits(digits_small, tmp_path / "images", per_class=1)
    r = run_cli(["-m", "serve.batch", f"input={folder}", f"output={tmp_path / 'p.csv'}",
                 "model=models:/visionops-digits@nope"], env={"MLFLOW_TRACKING_URI": registered})
    assert r.returncode == 2
    errors = _error_lines(r.stderr)
    assert len(errors) == 1 and "has no alias @nope (versions: 1)" in errors[0], r.stderr[-2000:]
    assert not (tmp_path / "p.csv").exists()
