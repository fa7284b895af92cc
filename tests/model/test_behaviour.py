"""Behaviour of a registered model, as production will run it (its serving format, the shared
preprocessing): invariance to a JPEG re-encode and a one-pixel shift, a minimum-functionality
set, and train/serve preprocessing parity.

    pytest tests/model --model-uri models:/visionops-digits@champion
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from visionops.images import decode_image
from visionops.manifest import read_manifest
from visionops.preprocess import batch, normalize, to_uint8


def _predict(model, arrays_u8) -> np.ndarray:
    spec = model.bundle.preprocess
    return model.load().predict_proba(batch([normalize(a, spec) for a in arrays_u8])).argmax(1)


def _resized(model, records):
    spec = model.bundle.preprocess
    return [to_uint8(decode_image(r.path, channels=spec.channels), spec) for r in records]


def test_label_survives_jpeg_reencode(model_under_test, fixed_set):
    model, _ = model_under_test
    spec = model.bundle.preprocess
    clean = _predict(model, _resized(model, fixed_set))
    reencoded = []
    for r in fixed_set:
        buf = io.BytesIO()
        decode_image(r.path).save(buf, "JPEG", quality=90)
        reencoded.append(to_uint8(decode_image(buf.getvalue(), channels=spec.channels), spec))
    agreement = float((clean == _predict(model, reencoded)).mean())
    assert agreement >= 0.95, f"only {agreement:.0%} of labels survive a JPEG re-encode"


@pytest.mark.parametrize("dy, dx", [(0, 1), (1, 0), (0, -1), (-1, 0)])
def test_label_survives_one_pixel_shift(model_under_test, fixed_set, dy, dx):
    model, _ = model_under_test
    arrays = _resized(model, fixed_set)
    shifted = []
    for a in arrays:
        s = np.roll(a, (dy, dx), axis=(0, 1))
        # fill the wrapped row/column with the edge it left, not with the opposite edge
        if dy:
            s[0 if dy > 0 else -1] = a[0 if dy > 0 else -1]
        if dx:
            s[:, 0 if dx > 0 else -1] = a[:, 0 if dx > 0 else -1]
        shifted.append(s)
    agreement = float((_predict(model, arrays) == _predict(model, shifted)).mean())
    assert agreement >= 0.95, f"only {agreement:.0%} of labels survive a one-pixel shift ({dy}, {dx})"


def test_minimum_functionality_class_prototypes(model_under_test):
    """The average training image of each class is the clearest example there is: all must be right."""
    model, prepared = model_under_test
    spec = model.bundle.preprocess
    train = read_manifest(prepared / "train.csv")
    prototypes, expected = [], []
    for i, label in enumerate(model.bundle.labels):
        arrays = [to_uint8(decode_image(r.path, channels=spec.channels), spec).astype(np.float64)
                  for r in train if r.label == label][:60]
        prototypes.append(np.clip(np.mean(arrays, axis=0) + 0.5, 0, 255).astype(np.uint8))
        expected.append(i)
    predicted = _predict(model, prototypes)
    wrong = [model.bundle.labels[i] for i, p in zip(expected, predicted) if i != p]
    assert not wrong, f"class prototypes misclassified: {wrong}"


def test_shared_preprocessing_equals_training_eval_transform(model_under_test, fixed_set):
    """Serving's preprocessing (visionops.preprocess) gives exactly training's evaluation tensor."""
    from train.datamodule import ManifestDataset

    model, _ = model_under_test
    spec = model.bundle.preprocess
    ds = ManifestDataset(fixed_set[:20], {label: i for i, label in enumerate(model.bundle.labels)}, spec)
    for i, r in enumerate(fixed_set[:20]):
        served = normalize(to_uint8(decode_image(r.path, channels=spec.channels), spec), spec)
        assert np.array_equal(ds[i][0].numpy(), served)


def test_pyfunc_flavour_matches_the_onnx_runtime_path(model_under_test, fixed_set):
    """`mlflow models serve` (pyfunc) and our server (ONNX Runtime) give the same probabilities."""
    import mlflow.pyfunc

    model, _ = model_under_test
    spec = model.bundle.preprocess
    x = batch([normalize(a, spec) for a in _resized(model, fixed_set[:16])])
    pyfunc = mlflow.pyfunc.load_model(str(model.directory))
    assert np.allclose(pyfunc.predict(x), model.load().predict_proba(x), atol=1e-6)


def test_decoding_a_png_of_the_image_changes_nothing(model_under_test, fixed_set):
    _model, _ = model_under_test
    img = decode_image(fixed_set[0].path)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert np.array_equal(np.asarray(decode_image(buf.getvalue())), np.asarray(Image.open(fixed_set[0].path).convert("RGB")))
