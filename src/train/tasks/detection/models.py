"""Detectors by name: the compact CenterNet (the default) and torchvision's detectors.

Every detector here has the same three entry points, so the LightningModule never asks which:

    loss(images, targets) -> {"loss": total, "<part>": ...}   (train mode)
    predict(images)       -> per image {"boxes" (k, 4) [x1, y1, x2, y2] in input pixels,
                             "scores" (k,), "labels" (k,)}, labels 0..classes-1
    has_eval_loss         whether `loss` also works in eval mode (a validation loss)

Images come in normalised by the data's preprocessing (visionops.preprocess) at the data's
input size; torchvision's own transform is set to change neither (mean 0, std 1, min/max size
the input's), so every detector sees the same tensor that serving will give it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from train.models import PretrainedWeightsUnavailable, load_pretrained
from train.tasks.detection.centernet import CenterNet

# torchvision detector -> whether it reserves label 0 for the background (its classes are then 1..C).
TORCHVISION: dict[str, bool] = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": True,
    "ssdlite320_mobilenet_v3_large": True,
    "retinanet_resnet50_fpn_v2": False,
    "fcos_resnet50_fpn": False,
}
DETECTORS = ("centernet", *TORCHVISION)
FIXED_SIZE = {"ssdlite320_mobilenet_v3_large"}  # resizes to 320x320 inside, whatever the input


class TorchvisionDetector(nn.Module):
    """A torchvision detector behind the common interface (see the module docstring)."""

    has_eval_loss = False

    def __init__(self, arch: str, num_classes: int, image_size: Sequence[int], weights: str | None = None,
                 weights_backbone: str | None = None, **kwargs: Any):
        super().__init__()
        from torchvision.models import get_model

        self.arch = arch
        self.background = TORCHVISION[arch]
        kw: dict[str, Any] = {"image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0], **kwargs}
        if arch not in FIXED_SIZE:
            kw.setdefault("min_size", int(min(image_size)))
            kw.setdefault("max_size", int(max(image_size)))
        n = num_classes + 1 if self.background else num_classes
        try:
            self.net = get_model(arch, weights=None, weights_backbone=weights_backbone, num_classes=n, **kw)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError: no network for the backbone
            raise PretrainedWeightsUnavailable(
                f"could not load backbone weights {weights_backbone} for {arch} ({exc.__class__.__name__}: {exc}). "
                "This machine looks offline: set model.net.weights_backbone=null to train from scratch, or put "
                "the file in $TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch/hub/checkpoints/)."
            ) from exc
        state = load_pretrained(arch, weights)
        if state is not None:
            # COCO's heads have 91 classes: keep every pretrained tensor whose shape fits ours.
            own = self.net.state_dict()
            self.net.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape},
                                     strict=False)

    def _rgb(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return list(images)

    def loss(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        shift = 1 if self.background else 0
        tv_targets = [{"boxes": t["boxes"].float().reshape(-1, 4), "labels": t["labels"].long() + shift}
                      for t in targets]
        parts = self.net(self._rgb(images), tv_targets)
        return {"loss": sum(parts.values()), **{k: v.detach() for k, v in parts.items()}}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        shift = 1 if self.background else 0
        out = self.net(self._rgb(images))
        return [{"boxes": o["boxes"], "scores": o["scores"], "labels": o["labels"] - shift} for o in out]


def build_detector(arch: str, num_classes: int, in_channels: int = 3, image_size: Sequence[int] = (256, 256),
                   weights: str | None = None, weights_backbone: str | None = None, **kwargs: Any) -> nn.Module:
    """The detector `arch` for `num_classes` classes; `kwargs` go to its constructor (CenterNet's
    widths, torchvision's score and NMS thresholds...)."""
    if arch not in DETECTORS:
        raise ValueError(f"unknown detector {arch!r}; choose one of {', '.join(DETECTORS)}")
    if arch == "centernet":
        if weights is not None or weights_backbone is not None:
            raise PretrainedWeightsUnavailable("centernet has no pretrained weights: set model.net.weights=null")
        return CenterNet(num_classes, in_channels=in_channels, **kwargs)
    return TorchvisionDetector(arch, num_classes, image_size, weights=weights, weights_backbone=weights_backbone,
                               **kwargs)
