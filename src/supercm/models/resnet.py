"""torchvision ResNets with the domain-adaptation bottleneck (SPEC §6), registered as backbones.

``resnet18``/``resnet34``/``resnet50``/``resnet101``: the torchvision network up to global average
pooling (its ``fc`` removed), then a ``Linear(d → bottleneck) → BatchNorm1d → ReLU`` bottleneck
(``bottleneck=0``: none) whose output feeds the CM head. The pretrained network is
``backbone.pretrained``: the trainer gives it ``optim.backbone_lr_mult`` × lr (0.1 in the field's
protocol) and the bottleneck, like the head, the full lr — as Transfer-Learning-Library does.

``weights`` (``model.options.weights``):

* ``imagenet1k_v1`` (default): the ImageNet weights every published UDA number uses, read from
  torchvision's cache (``$TORCH_HOME/hub/checkpoints/resnet50-0676ba61.pth`` …); downloaded only
  when ``model.options.download=true``. torchvision's newer default (``IMAGENET1K_V2``) is a
  different network and gives different numbers: it is not used.
* a path to a local file holding a torchvision ResNet state dict (``fc.*`` keys are ignored);
* ``none``: random initialisation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..fileio import load_failure_reason  # torch's own text would advise loading unsafely
from .backbones import BACKBONES

#: torchvision's weight enums for IMAGENET1K_V1, by architecture.
_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
            "resnet101": "ResNet101_Weights"}


class WeightsMissingError(ValueError):
    """Pretrained weights are not on this machine (and downloading was not allowed); says how to get them."""


def imagenet_v1(arch: str):
    """torchvision's ``IMAGENET1K_V1`` weights entry for ``arch``."""
    import torchvision.models as tvm

    return getattr(tvm, _WEIGHTS[arch]).IMAGENET1K_V1


def cached_weights_path(arch: str) -> Path:
    """Where torchvision keeps ``arch``'s IMAGENET1K_V1 file once downloaded."""
    url = imagenet_v1(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _read_state_dict(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a text file, a truncated or crafted one: the reason in words, never torch's advice
        raise WeightsMissingError(f"cannot read weights from {path}: {load_failure_reason(exc)}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsMissingError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(arch: str, weights: str, download: bool) -> dict | None:
    """The state dict named by ``weights`` (None for ``none``), or a one-line :class:`WeightsMissingError`."""
    if weights.lower() == "none":
        return None
    if weights.lower() == "imagenet1k_v1":
        path = cached_weights_path(arch)
        if path.is_file():
            return _read_state_dict(path)
        if download:
            return imagenet_v1(arch).get_state_dict(progress=True, check_hash=True)
        url = imagenet_v1(arch).url
        raise WeightsMissingError(
            f"{arch} IMAGENET1K_V1 weights are not in torchvision's cache ({path}); download {url} to that path, "
            f"or set model.options.download=true, or model.options.weights=PATH to a local copy "
            f"(torchvision's newer default weights, IMAGENET1K_V2, give different numbers than the published ones)"
        )
    if weights.lower().startswith("imagenet"):
        raise ValueError(f"model.options.weights={weights!r}: only imagenet1k_v1 (the field's weights), a file path "
                         f"or none are accepted")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsMissingError(f"model.options.weights={weights!r}: no such file ({path})")
    return _read_state_dict(path)


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without ``fc`` (``pretrained``), then the bottleneck; ``out_features`` wide."""

    option_ranges = {"bottleneck": "[0, inf)"}

    def __init__(self, arch: str, input_shape: tuple[int, ...], weights: str = "imagenet1k_v1", bottleneck: int = 256,
                 download: bool = False):
        super().__init__()
        import torchvision.models as tvm

        if len(input_shape) != 3 or input_shape[0] != 3:
            raise ValueError(f"{arch} needs RGB images (3, H, W), got inputs of shape {input_shape}")
        net = getattr(tvm, arch)(weights=None)
        state = load_weights(arch, weights, download)
        if state is not None:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            result = net.load_state_dict(state, strict=False)
            missing = [k for k in result.missing_keys if not k.startswith("fc.")]
            if missing or result.unexpected_keys:
                bad = (missing or result.unexpected_keys)[:3]
                raise WeightsMissingError(
                    f"the weights ({weights}) do not fit {arch}: {'missing' if missing else 'unexpected'} keys {bad}")
        width = net.fc.in_features
        net.fc = nn.Identity()
        self.pretrained = net
        if bottleneck:
            self.bottleneck = nn.Sequential(nn.Linear(width, bottleneck), nn.BatchNorm1d(bottleneck), nn.ReLU())
        else:
            self.bottleneck = nn.Identity()
        self.out_features = bottleneck or width

    def forward(self, x: Tensor) -> Tensor:
        return self.bottleneck(self.pretrained(x))


def _factory(arch: str):
    def build(input_shape: tuple[int, ...], weights: str = "imagenet1k_v1", bottleneck: int = 256,
              download: bool = False) -> ResNetBackbone:
        return ResNetBackbone(arch, input_shape, weights=weights, bottleneck=bottleneck, download=download)

    build.__name__ = arch
    build.__doc__ = f"torchvision {arch} + bottleneck (see :mod:`supercm.models.resnet`)."
    build.option_ranges = ResNetBackbone.option_ranges  # type: ignore[attr-defined]
    return build


for _arch in _WEIGHTS:
    BACKBONES.register(_arch, _factory(_arch))
