"""Backbones: each maps inputs to a flat feature vector and exposes ``out_features``."""

from __future__ import annotations

import math
from typing import Callable

from torch import Tensor, nn

from ..registry import Registry


class MLP(nn.Module):
    """Fully connected backbone for vector data: [Linear → BatchNorm → LeakyReLU] × depth."""

    #: Checked by the config (``model.options``) before anything runs.
    option_ranges = {"width": "[1, inf)", "depth": "[1, inf)", "dropout": "[0, 1)"}

    def __init__(self, input_shape: tuple[int, ...], width: int = 128, depth: int = 2, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.BatchNorm1d(width), nn.LeakyReLU(0.1)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            d = width
        self.net = nn.Sequential(*layers)
        self.out_features = d

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """A small CNN for 28×28 digits (or any small image): 3 conv blocks, global average pool.

    Block i has ``width·2^i`` channels and ``convs_per_block`` [3×3 conv → BN → LeakyReLU(0.1)]
    layers; the first two blocks end with 2×2 max-pooling. ``width=16, convs_per_block=1``
    costs about 2 M multiply-adds per 28×28 image (the CPU-scale configs);
    ``width=32, convs_per_block=2`` about 30 M.
    """

    #: Checked by the config (``model.options``) before anything runs.
    option_ranges = {"width": "[1, inf)", "convs_per_block": "[1, inf)", "dropout": "[0, 1)"}

    def __init__(
        self, input_shape: tuple[int, ...], width: int = 32, convs_per_block: int = 2, dropout: float = 0.0
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"SmallCNN needs image input (C, H, W), got shape {input_shape}; use backbone 'mlp'")
        if convs_per_block < 1:
            raise ValueError(f"convs_per_block must be ≥ 1, got {convs_per_block}")
        c = input_shape[0]
        blocks: list[nn.Module] = []
        for i, w in enumerate((width, 2 * width, 4 * width)):
            for _ in range(convs_per_block):
                blocks += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.LeakyReLU(0.1)]
                c = w
            if i < 2:
                blocks.append(nn.MaxPool2d(2))
                if dropout:
                    blocks.append(nn.Dropout(dropout))
        blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*blocks)
        self.out_features = c

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class GaninMNIST(nn.Module):
    """The MNIST feature extractor of DANN (Ganin & Lempitsky, ICML 2015; Ganin et al., JMLR 2016,
    §5.2 and its MNIST → MNIST-M experiment): conv 5×5 (32) → ReLU → max-pool 2 → conv 5×5 (48) →
    ReLU → max-pool 2 → flatten. No padding and no BatchNorm, as published: a 28×28 input gives
    48·4·4 = 768 features (an H×W input 48·⌊(⌊(H−4)/2⌋−4)/2⌋·… in general).

    The paper's label predictor (fully connected 100 → 100 → 10) is not part of it: here the CM
    head classifies the 768 features directly, and DANN's discriminator reads the same features.
    ``dropout`` (0: as published) drops whole channels after each pooling.
    """

    #: Checked by the config (``model.options``) before anything runs.
    option_ranges = {"dropout": "[0, 1)"}

    def __init__(self, input_shape: tuple[int, ...], dropout: float = 0.0):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"GaninMNIST needs image input (C, H, W), got shape {input_shape}")
        c, h, w = input_shape
        if min(h, w) < 16:
            raise ValueError(f"GaninMNIST needs images of at least 16×16 (two 5×5 convolutions, two poolings), got {h}×{w}")
        layers: list[nn.Module] = [nn.Conv2d(c, 32, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        layers += [nn.Dropout2d(dropout)] if dropout else []
        layers += [nn.Conv2d(32, 48, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        layers += [nn.Dropout2d(dropout)] if dropout else []
        self.net = nn.Sequential(*layers, nn.Flatten())
        side = lambda n: ((n - 4) // 2 - 4) // 2  # noqa: E731  (5×5 valid conv, pool 2, twice)
        self.out_features = 48 * side(h) * side(w)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class DTN(nn.Module):
    """The "DTN" digit network of the SVHN → MNIST experiments (Taigman et al.'s domain transfer
    network encoder as used by ADDA, CyCADA and tllib's ``tllib/vision/models/digits.py``):
    three [conv 5×5, stride 2, padding 2 → BatchNorm → Dropout2d → ReLU] blocks of 64, 128 and 256
    channels (channel dropout 0.1, 0.3, 0.5), flatten, Linear → 512 → BatchNorm1d → ReLU → Dropout(0.5).

    Each convolution halves the side, rounding up: 28×28 and 32×32 inputs both end at 4×4
    (256·16 = 4,096 values before the linear layer); 512 features. This is the "larger network"
    class the DANN paper uses for SVHN; its own SVHN network is not reproduced here.
    """

    def __init__(self, input_shape: tuple[int, ...]):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"DTN needs image input (C, H, W), got shape {input_shape}")
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for width, p in ((64, 0.1), (128, 0.3), (256, 0.5)):
            layers += [nn.Conv2d(c, width, 5, stride=2, padding=2), nn.BatchNorm2d(width), nn.Dropout2d(p), nn.ReLU(inplace=True)]
            c, h, w = width, (h + 1) // 2, (w + 1) // 2
        layers += [nn.Flatten(), nn.Linear(c * h * w, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Dropout(0.5)]
        self.net = nn.Sequential(*layers)
        self.out_features = 512

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _WideBlock(nn.Module):
    """Pre-activation residual block of a Wide ResNet (BN → LReLU → conv, twice).

    As in Oliver et al.'s code, except that a change of width or stride uses a
    1×1 convolution on the shortcut (their code average-pools and zero-pads).
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int, activate_before_residual: bool = False, bn_momentum: float = 0.1
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.act = nn.LeakyReLU(0.1)
        self.shortcut = None if c_in == c_out and stride == 1 else nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)
        self.activate_before_residual = activate_before_residual

    def forward(self, x: Tensor) -> Tensor:
        o = self.act(self.bn1(x))
        if self.activate_before_residual:
            x = o  # the network's first block feeds the activated input to its shortcut too
        y = self.conv2(self.act(self.bn2(self.conv1(o))))
        return y + (x if self.shortcut is None else self.shortcut(x))


class WideResNet(nn.Module):
    """WRN-depth-k with LeakyReLU(0.1), as in Oliver et al. (2018) and the SuperCM paper.

    WRN-28-2: ``depth=28, widen=2`` (1.5 M parameters, 128-d features);
    WRN-28-8 for CIFAR-100: ``widen=8`` (512-d features).

    BatchNorm momentum defaults to PyTorch's 0.1, which is what the SuperCM authors' WRN
    runs with: its BatchNorm subclass takes ``momentum=1e-3`` but never passes it on.
    Oliver et al.'s 0.001 (TensorFlow's 0.999 decay) lets the running statistics lag the
    weights for thousands of iterations, so every evaluation in eval mode (validation-based
    selection, the weight-EMA model, any short run) judges a stale model. As reported in
    issue 8 (WRN-28-2, MNIST, 100 labels, CE + SuperCM, 1,000 iterations): eval-mode test
    accuracy 36.7 % with 0.001, 96.3 % once the statistics were re-estimated, 93.8 % for
    the authors' model trained side by side.
    """

    def __init__(self, input_shape: tuple[int, ...], depth: int = 28, widen: int = 2, bn_momentum: float = 0.1):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        if len(input_shape) != 3:
            raise ValueError(f"WideResNet needs image input (C, H, W), got shape {input_shape}")
        if not 0 < bn_momentum <= 1:
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False)
        stages = []
        for s in range(3):
            stride = 1 if s == 0 else 2
            blocks = [_WideBlock(widths[s], widths[s + 1], stride, activate_before_residual=(s == 0), bn_momentum=bn_momentum)]
            blocks += [_WideBlock(widths[s + 1], widths[s + 1], 1, bn_momentum=bn_momentum) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(widths[3], momentum=bn_momentum)
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = widths[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.bn(self.stages(self.stem(x)))))


def wrn28_2(input_shape: tuple[int, ...], bn_momentum: float = 0.1) -> WideResNet:
    return WideResNet(input_shape, 28, 2, bn_momentum=bn_momentum)


def wrn28_8(input_shape: tuple[int, ...], bn_momentum: float = 0.1) -> WideResNet:
    return WideResNet(input_shape, 28, 8, bn_momentum=bn_momentum)


BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone", "model.backbone")
for _name, _factory in {"mlp": MLP, "cnn": SmallCNN, "ganin_mnist": GaninMNIST, "dtn": DTN, "wrn28_2": wrn28_2,
                        "wrn28_8": wrn28_8}.items():
    BACKBONES.register(_name, _factory)


def build_backbone(name: str, input_shape: tuple[int, ...], /, **kwargs) -> nn.Module:
    return BACKBONES.get(name)(tuple(input_shape), **kwargs)
