"""Every model in conf/model/ gives logits of the right shape and the embedding monitoring uses."""

from __future__ import annotations

import pytest
import torch

from train.models import ARCHS, PretrainedWeightsUnavailable, build_model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("in_channels", [3, 1])
def test_output_and_embedding_shapes(arch, in_channels):
    model = build_model(arch, num_classes=7, in_channels=in_channels).eval()
    x = torch.randn(2, in_channels, 32, 32)
    with torch.no_grad():
        logits = model(x)
        emb = model.forward_features(x)
    assert logits.shape == (2, 7)
    assert emb.shape == (2, model.embedding_dim)


def test_unknown_arch_names_the_choices():
    with pytest.raises(ValueError, match="resnet18"):
        build_model("resnet19", num_classes=3)


def test_unknown_weights_name_lists_options():
    with pytest.raises(PretrainedWeightsUnavailable, match="IMAGENET1K_V1"):
        build_model("resnet18", num_classes=3, weights="IMAGENET_BOGUS")
