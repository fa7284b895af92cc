"""Model zoo: a small CNN and torchvision backbones, each with a head sized to the dataset.

Every model exposes `forward_features(x) -> embedding` (the vector monitoring watches) and
`forward(x) -> logits`.
"""

from __future__ import annotations

import urllib.error

import torch
from torch import nn

from visionops.errors import VisionopsError

BACKBONES = ("resnet18", "mobilenet_v3_small", "efficientnet_b0")
ARCHS = ("small_cnn", *BACKBONES)


class PretrainedWeightsUnavailable(VisionopsError):
    """Asked-for weights that cannot be had (unknown name, or no network and no local copy)."""


class Classifier(nn.Module):
    """features -> pooled embedding -> dropout -> linear head."""

    def __init__(self, features: nn.Module, embedding_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.features = features
        self.embedding_dim = embedding_dim
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(embedding_dim, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def small_cnn(in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.2) -> Classifier:
    features = nn.Sequential(
        _conv_block(in_channels, width),
        nn.MaxPool2d(2),
        _conv_block(width, width * 2),
        nn.MaxPool2d(2),
        _conv_block(width * 2, width * 4),
        nn.AdaptiveAvgPool2d(1),
    )
    return Classifier(features, width * 4, num_classes, dropout)


def _load_weights(arch: str, weights: str | None):
    """Resolve a torchvision weights enum and fetch its state dict, failing clearly offline."""
    if weights is None:
        return None
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(arch)
        w = enum.DEFAULT if str(weights).upper() == "DEFAULT" else enum[str(weights)]
    except KeyError as exc:
        options = ", ".join(["DEFAULT", *(m.name for m in get_model_weights(arch))])
        raise PretrainedWeightsUnavailable(
            f"unknown weights {weights!r} for {arch}; choose one of: {options}"
        ) from exc
    try:
        return w.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise PretrainedWeightsUnavailable(
            f"could not load pretrained weights {w} for {arch} ({exc.__class__.__name__}: {exc}). "
            "This machine looks offline: set model.net.weights=null to train from scratch, or put "
            f"the file {w.url.rsplit('/', 1)[-1]} in $TORCH_HOME/hub/checkpoints/ "
            "(default ~/.cache/torch/hub/checkpoints/)."
        ) from exc


def torchvision_backbone(
    arch: str, in_channels: int, num_classes: int, weights: str | None = None, dropout: float = 0.2
) -> Classifier:
    from torchvision import models as tvm

    state = _load_weights(arch, weights)
    net = tvm.get_model(arch, weights=None)
    if state is not None:
        net.load_state_dict(state)
    if arch == "resnet18":
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        dim = net.fc.in_features
        features = nn.Sequential(*(list(net.children())[:-1]))  # up to avgpool
    elif arch == "mobilenet_v3_small":
        if in_channels != 3:
            old = net.features[0][0]
            net.features[0][0] = nn.Conv2d(in_channels, old.out_channels, 3, 2, 1, bias=False)
        # The 576 -> 1024 hardswish layer of the original head is kept as part of the embedding.
        dim = net.classifier[0].out_features
        features = nn.Sequential(net.features, net.avgpool, nn.Flatten(1), net.classifier[0], net.classifier[1])
    elif arch == "efficientnet_b0":
        if in_channels != 3:
            old = net.features[0][0]
            net.features[0][0] = nn.Conv2d(in_channels, old.out_channels, 3, 2, 1, bias=False)
        dim = net.classifier[1].in_features
        features = nn.Sequential(net.features, net.avgpool)
    else:  # pragma: no cover - guarded by build_model
        raise ValueError(arch)
    return Classifier(features, dim, num_classes, dropout)


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    weights: str | None = None,
    width: int = 32,
    dropout: float = 0.2,
) -> Classifier:
    if arch not in ARCHS:
        raise ValueError(f"unknown model arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if arch == "small_cnn":
        if weights is not None:
            raise PretrainedWeightsUnavailable("small_cnn has no pretrained weights: set model.net.weights=null")
        return small_cnn(in_channels, num_classes, width=width, dropout=dropout)
    return torchvision_backbone(arch, in_channels, num_classes, weights=weights, dropout=dropout)
