"""Config: every experiment composes and instantiates, typos fail with Hydra's message,
params.yaml matches conf/, and the trainer preset picks the GPU path when CUDA is present."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import REPO, run_cli
from train.datamodule import build_augment
from train.trainer_setup import resolve_trainer_config
from visionops.config import compose

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def test_there_are_experiments():
    assert "digits_small_cnn" in EXPERIMENTS and len(EXPERIMENTS) >= 3


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_instantiates(name, tmp_path):
    cfg = compose([f"experiment={name}", f"data.root={tmp_path}"])
    assert cfg.task_name == name
    net = instantiate(cfg.model.net, num_classes=4, in_channels=int(cfg.data.channels))
    h, w = cfg.data.image_size
    assert net(torch.randn(2, int(cfg.data.channels), h, w)).shape == (2, 4)
    opt = instantiate(cfg.model.optimizer)(params=net.parameters())
    instantiate(cfg.model.scheduler)(optimizer=opt)
    build_augment(cfg.augment.transforms)
    resolve_trainer_config(cfg.trainer)


@pytest.mark.parametrize("group", ["trainer=cpu", "trainer=gpu", "trainer=ddp", "augment=none", "augment=strong",
                                   "debug=fast_dev_run", "debug=overfit_batches", "debug=limit_batches",
                                   "model=mobilenet_v3_small", "model=efficientnet_b0", "data=imagefolder"])
def test_presets_compose(group):
    cfg = compose([group])
    OmegaConf.to_container(cfg.trainer, resolve=True)


def test_mistyped_key_fails_naming_it():
    r = run_cli(["-m", "train", "trainer.max_epoch=1"])
    assert r.returncode != 0
    assert "max_epoch" in r.stderr and "Could not override" in r.stderr


def test_params_yaml_matches_conf():
    """params.yaml is what `dvc repro` trains with; it must be conf/ composed (make params)."""
    import tempfile

    from train.params import write_params

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "params.yaml"
        write_params(out)
        assert out.read_text() == (REPO / "params.yaml").read_text(), "params.yaml is stale: run `make params`"


def test_auto_trainer_uses_cpu_fp32_without_cuda():
    with mock.patch("train.trainer_setup.cuda_available", return_value=False):
        kw, channels_last = resolve_trainer_config(compose([]).trainer)
    assert kw["precision"] == "32-true" and channels_last is False


def test_auto_trainer_selects_bf16_and_channels_last_when_cuda_present():
    # No GPU on this machine: the CUDA check is patched to say there is one.
    with mock.patch("train.trainer_setup.cuda_available", return_value=True), \
         mock.patch("torch.cuda.is_bf16_supported", return_value=True):
        kw, channels_last = resolve_trainer_config(compose([]).trainer)
        gpu, cl = resolve_trainer_config(compose(["trainer=gpu"]).trainer)
        ddp, _ = resolve_trainer_config(compose(["trainer=ddp"]).trainer)
    assert kw["precision"] == "bf16-mixed" and channels_last is True
    assert gpu["accelerator"] == "gpu" and gpu["precision"] == "bf16-mixed" and cl is True
    assert ddp["strategy"] == "ddp" and ddp["sync_batchnorm"] is True
