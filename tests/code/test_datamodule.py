"""The datamodule and the augmentation presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.datamodule import ManifestDataModule, build_augment
from visionops.config import compose
from visionops.images import decode_image
from visionops.manifest import read_manifest
from visionops.preprocess import PreprocessSpec, preprocess


def test_batches_have_the_configured_shape(prepared_cfg):
    dm = ManifestDataModule.from_config(prepared_cfg)
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.labels == [str(i) for i in range(10)]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (min(64, len(dm.datasets["train"])), 3, 32, 32) and x.dtype == torch.float32
    assert y.min() >= 0 and y.max() < 10


def test_eval_transform_is_the_shared_preprocessing(prepared_cfg):
    """What serving will compute for an image equals what training validated on."""
    dm = ManifestDataModule.from_config(prepared_cfg)
    dm.setup("fit")
    spec = PreprocessSpec.from_data_config(prepared_cfg.data)
    rec = dm.datasets["val"].records[0]
    served = preprocess(decode_image(rec.path, channels=spec.channels), spec)
    assert np.array_equal(dm.datasets["val"][0][0].numpy(), served)


@pytest.mark.parametrize("preset", ["none", "light", "strong"])
def test_augment_presets_keep_shape_and_dtype(preset):
    aug = build_augment(compose([f"augment={preset}"]).augment.transforms)
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    if preset == "none":
        assert aug is None
        return
    out = aug(image=img)["image"]
    assert out.shape == img.shape and out.dtype == np.uint8


def test_strong_augmentation_changes_images():
    aug = build_augment(compose(["augment=strong"]).augment.transforms)
    img = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert any(not np.array_equal(aug(image=img)["image"], img) for _ in range(5))


def test_manifests_are_deterministic(prepared_cfg, tmp_path):
    from pathlib import Path

    from train.prepare import prepare

    first = {s: read_manifest(Path(prepared_cfg.paths.prepared) / f"{s}.csv") for s in ("train", "val", "test")}
    prepare(prepared_cfg)
    again = {s: read_manifest(Path(prepared_cfg.paths.prepared) / f"{s}.csv") for s in ("train", "val", "test")}
    assert first == again
