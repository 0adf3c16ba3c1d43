"""Every registered backbone: forward, backward, finite outputs, the advertised feature size."""

from __future__ import annotations

import pytest
import torch

from supercm import ClusteringModule
from supercm.models import BACKBONES, CMClassifier, build_backbone

SHAPES = {"mlp": (64,), "cnn": (3, 28, 28), "wrn28_2": (3, 32, 32), "wrn28_8": (3, 32, 32)}
FEATURES = {"mlp": 128, "cnn": 128, "wrn28_2": 128, "wrn28_8": 512}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_forward_backward(name):
    torch.manual_seed(0)
    shape = SHAPES[name]
    net = build_backbone(name, shape)
    assert net.out_features == FEATURES[name]
    model = CMClassifier(net, ClusteringModule(net.out_features, 10))
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.features.shape == (2, FEATURES[name]) and out.logits.shape == (2, 10)
    out.logits.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_wrn28_2_has_the_usual_size():
    n = sum(p.numel() for p in build_backbone("wrn28_2", (3, 32, 32)).parameters())
    assert 1.4e6 < n < 1.5e6  # WRN-28-2: ~1.47 M parameters


def test_backbone_errors():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'"):
        build_backbone("resnet9", (3, 32, 32))
    with pytest.raises(ValueError, match="needs image input"):
        build_backbone("cnn", (64,))
