"""Every registered backbone: forward, backward, finite outputs, the advertised feature size."""

from __future__ import annotations

import pytest
import torch

from supercm import ClusteringModule
from supercm.models import BACKBONES, CMClassifier, build_backbone

SHAPES = {"mlp": (64,), "cnn": (3, 28, 28), "wrn28_2": (3, 32, 32), "wrn28_8": (3, 32, 32),
          "ganin_mnist": (3, 28, 28), "dtn": (3, 32, 32)}
FEATURES = {"mlp": 128, "cnn": 128, "wrn28_2": 128, "wrn28_8": 512, "ganin_mnist": 768, "dtn": 512}
# The ResNets: random weights (no ImageNet weights on test machines), small images, the 256-d bottleneck.
for _r in ("resnet18", "resnet34", "resnet50", "resnet101"):
    SHAPES[_r], FEATURES[_r] = (3, 32, 32), 256
OPTIONS = {r: {"weights": "none"} for r in ("resnet18", "resnet34", "resnet50", "resnet101")}
# Any timm model by name (optional extra): timm's tiny test network.
SHAPES["timm"], FEATURES["timm"], OPTIONS["timm"] = (3, 32, 32), 256, {"name": "test_resnet", "weights": "none"}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_forward_backward(name):
    if name == "timm":
        pytest.importorskip("timm")
    torch.manual_seed(0)
    shape = SHAPES[name]
    net = build_backbone(name, shape, **OPTIONS.get(name, {}))
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


def test_wrn_batchnorm_statistics_keep_up_with_the_weights():
    """The authors' WRN runs with PyTorch's BatchNorm momentum 0.1 (their 1e-3 is never passed on).
    With 0.001 the running statistics lag for thousands of iterations and eval mode judges a stale
    model; with 0.1, 30 training passes bring them to within a few percent of the data's."""
    torch.manual_seed(0)
    net = build_backbone("wrn28_2", (3, 8, 8))
    assert {m.momentum for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}
    x = torch.randn(16, 16, 8, 8) * 2 + 3  # the first block sees the 16-channel stem output
    with torch.no_grad():
        for _ in range(30):
            net.stages[0][0].bn1(x)
    bn = net.stages[0][0].bn1
    torch.testing.assert_close(bn.running_mean, x.mean((0, 2, 3)), rtol=0.1, atol=0.0)
    slow = build_backbone("wrn28_2", (3, 8, 8), bn_momentum=0.001).stages[0][0].bn1
    with torch.no_grad():
        for _ in range(30):
            slow(x)
    assert (slow.running_mean < 0.1 * x.mean((0, 2, 3))).all()  # Oliver et al.'s value: still near 0
    with pytest.raises(ValueError, match="bn_momentum"):
        build_backbone("wrn28_2", (3, 8, 8), bn_momentum=0.0)
