"""Serving runtime units: GPU selection (CUDA patched: no GPU here), image statistics, the log."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from serve.settings import Settings
from train.export import export_onnx
from train.models import build_model
from visionops.bundle import ModelBundle
from visionops.imagestats import STAT_COLUMNS, image_stats
from visionops.prediction_log import PredictionLog, read_log
from visionops.preprocess import PreprocessSpec


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("m")
    spec = PreprocessSpec()
    export_onnx(build_model("small_cnn", 3, width=8).eval(), spec, d / "artifacts" / "model.onnx", 18)
    ModelBundle(labels=["a", "b", "c"], preprocess=spec, arch="small_cnn", embedding_dim=32,
                files={"onnx_fp32": "model.onnx", "onnx_int8": None}).save(d / "artifacts")
    (d / "VERSION").write_text("7")
    (d / "NAME").write_text("toy")
    return d


def test_cpu_runtime_predicts_and_describes_itself(model_dir):
    from serve.runtime import ModelRuntime

    rt = ModelRuntime.load(Settings(log_dir=None), model_dir=model_dir)
    preds, recs = rt.run([_png()], ["r1"])
    assert preds[0]["label"] in ("a", "b", "c") and len(recs[0]["probabilities"]) == 3 and preds[0]["model_version"] == "7"
    assert rt.device == "cpu" and rt.metadata()["model_name"] == "toy"


def test_cuda_provider_is_chosen_when_present(model_dir):
    # No GPU here: the provider list is patched to what onnxruntime-gpu reports on a CUDA machine.
    from serve import runtime

    with mock.patch.object(runtime, "available_providers", return_value=["CUDAExecutionProvider", "CPUExecutionProvider"]), \
         mock.patch.object(runtime, "OnnxModel") as onnx:
        onnx.return_value.session.get_providers.return_value = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        rt = runtime.ModelRuntime(model_dir, "toy", "7", Settings(log_dir=None))
    path, = onnx.call_args.args
    assert path.name == "model.onnx" and onnx.call_args.kwargs["providers"][0] == "CUDAExecutionProvider"
    assert rt.device == "cuda"


def _png(colour: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (20, 10), colour).save(buf, "PNG")
    return buf.getvalue()


def test_image_stats_mean_what_they_say():
    black, white = image_stats(Image.new("L", (40, 30), 0)), image_stats(Image.new("L", (40, 30), 255))
    assert set(STAT_COLUMNS) <= set(black)
    assert black["brightness"] == 0 and white["brightness"] == pytest.approx(1.0)
    assert black["width"] == 40 and black["height"] == 30 and black["channels"] == 1
    red = image_stats(Image.new("RGB", (8, 8), (255, 0, 0)))
    assert red["saturation"] == pytest.approx(1.0) and red["mean_r"] == pytest.approx(1.0) and red["mean_g"] == 0
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    assert image_stats(noise)["sharpness"] > 10 * image_stats(noise.resize((8, 8)).resize((64, 64)))["sharpness"]


def test_prediction_log_keeps_every_record_under_concurrency(tmp_path):
    log = PredictionLog(tmp_path)
    threads = [threading.Thread(target=lambda i=i: log.write(
        [{"timestamp": "2026-01-01T00:00:00+00:00", "request_id": f"{i}-{j}", "x": [0.1] * 200} for j in range(25)]))
        for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    df = read_log(tmp_path)
    assert len(df) == 200 and df["request_id"].nunique() == 200
    assert all(json.loads(line) for f in tmp_path.glob("*.jsonl") for line in f.read_text().splitlines())


def test_grey_image_statistics_are_the_same_read_as_grey_or_as_rgb():
    """Serving decodes to the model's channels (RGB here); a grey upload keeps grey statistics."""
    grey = Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 32), dtype=np.uint8))
    as_grey, as_rgb = image_stats(grey), image_stats(grey.convert("RGB"), original_channels=1)
    assert as_rgb["channels"] == 1 and as_rgb["saturation"] == 0
    for key in STAT_COLUMNS:
        assert as_rgb[key] == pytest.approx(as_grey[key], abs=1e-9), key
    assert as_grey["contrast"] == pytest.approx(float((np.asarray(grey) / 255).std()), rel=1e-6)


def test_kept_images_stay_in_their_folder_whatever_the_client_sends(model_dir, tmp_path):
    """The request id (x-request-id) and the file suffix come from the client."""
    from serve.runtime import ModelRuntime

    rt = ModelRuntime.load(Settings(log_dir=str(tmp_path / "log"), keep_images=1.0), model_dir=model_dir)
    for rid, suffix in [("../../escape", ".png"), ("/etc/passwd", "/x"), ("ok-id_1", ".png/../..")]:
        upload = rt.prepare(_png(), rid, suffix)
        _, (rec,) = rt.finish([upload], *rt.infer(upload.x))
        kept = Path(rec["image_path"])
        assert kept.parent == tmp_path / "log" / "images" and kept.read_bytes() == _png()
        assert rec["request_id"] == rid  # the record keeps the client's id as sent
    assert not (tmp_path / "escape.png").exists() and not list(tmp_path.glob("*.png"))


_FULL_DISK = """
import resource, sys
from visionops.prediction_log import PredictionLog, PredictionLogError
log = PredictionLog(sys.argv[1])
rec = lambda i: {"timestamp": "2026-01-01T00:00:00+00:00", "request_id": f"r{i}", "x": [0.5] * 300}
log.write([rec(0)])
size = next(log.directory.glob("*.jsonl")).stat().st_size
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))  # the next record fits only partly
failed = 0
for i in (1, 2):
    try:
        log.write([rec(i)])
    except PredictionLogError as exc:
        failed += 1
        print(exc)
print("ready while full:", log.ready())
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space returns
print("ready after:", log.ready())
log.write([rec(3), rec(4)])
print("failed:", failed)
"""


def test_a_full_disk_leaves_no_torn_line(tmp_path):
    """A real file-size limit (RLIMIT_FSIZE, in a child process: Python ignores SIGXFSZ, so the
    write fails with EFBIG after writing what fits, as on a disk that fills mid-write)."""
    out = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path)], capture_output=True, text=True, check=True)
    assert "cannot write the prediction log" in out.stdout and "File too large" in out.stdout, out.stdout
    assert "failed: 2" in out.stdout and "ready while full: False" in out.stdout and "ready after: True" in out.stdout
    lines = next(tmp_path.glob("*.jsonl")).read_bytes().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["r0", "r3", "r4"], "whole records, none glued"
    assert not list(tmp_path.glob(".probe-*")), "the readiness probe leaves nothing behind"


def test_kept_images_are_never_overwritten(model_dir, tmp_path):
    """A repeated x-request-id, or ids a file name makes alike, each keep their own image."""
    from serve.runtime import ModelRuntime

    rt = ModelRuntime.load(Settings(log_dir=str(tmp_path / "log"), keep_images=1.0), model_dir=model_dir)
    ids = ["same", "same", "a.b", "a_b", "a/b"]
    pngs = [_png((i, 0, 0)) for i in range(5)]
    uploads = [rt.prepare(png, rid, ".png") for png, rid in zip(pngs, ids)]
    _, recs = rt.finish(uploads, *rt.infer(np.concatenate([u.x for u in uploads])))
    assert [Path(r["image_path"]).read_bytes() for r in recs] == pngs
    assert len(read_log(tmp_path / "log")) == 5


def test_request_ids_keep_to_their_rule():
    from serve.inputs import request_id

    assert request_id("req-1.a_B") == "req-1.a_B" and request_id("x" * 128) == "x" * 128
    assert len(request_id(None)) == 32 and request_id("") != request_id("")
    for bad in ["a/b", "x" * 129, "a b", "ü", "a\nb"]:
        with pytest.raises(ValueError, match="1 to 128 characters"):
            request_id(bad)


def test_one_call_is_the_services_three_steps(model_dir, tmp_path):
    """`run` (the reference, the benchmarks) and prepare -> infer -> finish (the service) give the
    same predictions and records, records in the schema's order, each in the log once."""
    from serve.runtime import ModelRuntime
    from visionops.records import CLASSIFICATION

    pngs = [_png((i * 40, 255 - i * 40, 7)) for i in range(5)]
    ids = [f"r{i}" for i in range(5)]
    rt = ModelRuntime.load(Settings(log_dir=str(tmp_path / "log"), max_batch_size=2), model_dir=model_dir)
    preds, recs = rt.run(pngs, ids)  # batches of 2, 2, 1
    steps = [rt.prepare(png, rid) for png, rid in zip(pngs, ids)]
    step_preds, step_recs = rt.finish(steps, *rt.infer(np.concatenate([s.x for s in steps])))
    assert preds == step_preds
    drop = ("timestamp",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in recs] == \
           [{k: v for k, v in r.items() if k not in drop} for r in step_recs]
    assert all(tuple(r) == CLASSIFICATION.columns for r in recs)
    logged = read_log(tmp_path / "log")
    assert sorted(logged["request_id"]) == sorted(ids * 2)


def test_a_bad_upload_among_several_is_named(model_dir, tmp_path):
    from serve.runtime import ModelRuntime, UploadError

    rt = ModelRuntime.load(Settings(log_dir=None), model_dir=model_dir)
    with pytest.raises(UploadError, match="image 2 of 3: not a recognised image") as err:
        rt.run([_png(), b"no image", _png()], ["a", "b", "c"])
    assert err.value.index == 1 and "image 2" not in str(err.value.reason)


_FULL_LOG = """
import resource, sys
from pathlib import Path
import numpy as np
from serve.runtime import ModelRuntime, PredictionLogError
from serve.settings import Settings
rt = ModelRuntime.load(Settings(log_dir=sys.argv[2], keep_images=1.0), model_dir=Path(sys.argv[1]))
uploads = [rt.prepare(Path(sys.argv[3]).read_bytes(), f"r{i}", ".png") for i in range(3)]
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))  # each kept image fits, the three records do not
try:
    rt.finish(uploads, *rt.infer(np.concatenate([u.x for u in uploads])))
except PredictionLogError as exc:
    print("refused:", exc)
"""


def test_records_that_cannot_be_logged_leave_no_kept_image(model_dir, tmp_path):
    """finish writes a batch's records whole or not at all, its kept images with them (a real
    file-size limit in a child process, as in test_a_full_disk_leaves_no_torn_line)."""
    (tmp_path / "up.png").write_bytes(_png())
    out = subprocess.run([sys.executable, "-c", _FULL_LOG, str(model_dir), str(tmp_path / "log"), str(tmp_path / "up.png")],
                         capture_output=True, text=True, check=True)
    assert "refused: cannot write the prediction log" in out.stdout, out.stdout + out.stderr
    assert not list((tmp_path / "log" / "images").glob("*")), "the kept images went with their records"
    assert all(f.stat().st_size == 0 for f in (tmp_path / "log").glob("*.jsonl")), "no record, not even part of one"
