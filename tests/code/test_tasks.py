"""The task seam: `task=` picks the data, model, augmentation and monitored metric of a task, the
command line still wins, classification stays the default exactly as it was, and every task
implements every step the shared stages ask for."""

from __future__ import annotations

import inspect

import pytest
import torch
from hydra.utils import instantiate

from train.tasks import TASKS, Task, UnknownTaskError, get_task, task_name, task_of
from train.tasks.base import Task as BaseTask
from train.tasks.detection.augment import from_config
from visionops.config import compose


def test_classification_is_the_default_and_unchanged():
    cfg = compose([])
    assert cfg.task.name == "classification" and task_of(cfg).name == "classification"
    assert (cfg.data.name, cfg.model.arch, cfg.augment.name) == ("digits", "small_cnn", "light")
    assert cfg.callbacks.checkpoint.monitor == "val/acc" and cfg.callbacks.early_stopping.monitor == "val/acc"
    assert cfg.trainer.channels_last == "auto"


def test_detection_picks_its_data_model_augmentation_and_metric():
    cfg = compose(["task=detection"])
    assert task_of(cfg).name == "detection"
    assert (cfg.data.name, cfg.model.arch, cfg.augment.name) == ("digits_det", "centernet", "det_light")
    assert cfg.callbacks.checkpoint.monitor == "val/map_50" and cfg.callbacks.early_stopping.monitor == "val/map_50"
    assert cfg.callbacks.checkpoint.mode == "max"


@pytest.mark.parametrize(("override", "key", "value"), [
    ("data=coco", "data.name", "coco"),
    ("model=fasterrcnn_mobilenet_v3_large_320_fpn", "model.arch", "fasterrcnn_mobilenet_v3_large_320_fpn"),
    ("augment=det_strong", "augment.name", "det_strong"),
    ("callbacks.checkpoint.monitor=val/map", "callbacks.checkpoint.monitor", "val/map"),
    ("trainer=cpu", "trainer.accelerator", "cpu"),
])
def test_the_command_line_wins_over_the_task(override, key, value, tmp_path):
    cfg = compose(["task=detection", override, f"data.root={tmp_path}"])
    node = cfg
    for part in key.split("."):
        node = node[part]
    assert node == value and cfg.task.name == "detection"


def test_an_unknown_task_names_the_known_ones():
    with pytest.raises(UnknownTaskError, match="choose one of classification, detection. Did you mean 'detection'"):
        get_task("detetcion")


def test_configs_from_before_tasks_are_classification():
    from omegaconf import OmegaConf

    assert task_name(OmegaConf.create({"data": {"name": "digits"}})) == "classification"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_implements_every_step(name):
    task = get_task(name)
    assert isinstance(task, Task) and task.name == name
    abstract = {n for n, f in inspect.getmembers(BaseTask) if getattr(f, "__isabstractmethod__", False)}
    assert abstract == {"prepare", "datamodule", "module", "load", "evaluate"}
    assert not getattr(type(task), "__abstractmethods__", None)
    assert task.history and task.last_epoch and task.headline and task.gate_metric in task.headline


@pytest.mark.parametrize("model", ["centernet", "fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large",
                                   "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn"])
def test_every_detector_config_builds_and_detects(model, tmp_path):
    cfg = compose(["task=detection", f"model={model}", f"data.root={tmp_path}"])
    net = instantiate(cfg.model.net, num_classes=3, in_channels=3, image_size=(128, 128)).eval()
    out = net.predict(torch.rand(2, 3, 128, 128))
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"} and out[0]["boxes"].shape[-1] == 4
    opt = instantiate(cfg.model.optimizer)(params=net.parameters())
    instantiate(cfg.model.scheduler)(optimizer=opt)


@pytest.mark.parametrize("preset", ["det_none", "det_light", "det_strong"])
def test_detection_presets_compose(preset, tmp_path):
    cfg = compose(["task=detection", f"augment={preset}", f"data.root={tmp_path}"])
    from_config(cfg.augment, seed=0)


def test_a_classifier_is_refused_for_detection_in_one_line(tmp_path):
    from visionops.errors import VisionopsError

    cfg = compose(["task=detection", "model=small_cnn", f"data.root={tmp_path}"])
    with pytest.raises(VisionopsError, match="model=small_cnn is not a detector: task=detection trains one of centernet"):
        get_task("detection").module(cfg, datamodule=None)
