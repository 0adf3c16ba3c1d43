"""Any timm model as a backbone (optional extra: ``pip install 'supercm[timm]'``), registered as ``timm``.

``model.backbone: timm`` with ``model.options.name`` a timm model name (``resnet50``,
``convnext_tiny.fb_in1k``, … — ``timm.list_models()``): the network built by
``timm.create_model(name, num_classes=0)`` (pooled features, no classifier) is ``backbone.pretrained``,
then the same ``Linear(d → bottleneck) → BatchNorm1d → ReLU`` bottleneck as the torchvision ResNets
(:mod:`supercm.models.resnet`; ``bottleneck=0``: none). The trainer gives ``backbone.pretrained``
``optim.backbone_lr_mult`` × lr, the bottleneck and the head the full lr, as for the ResNets.

``weights`` (``model.options.weights``):

* ``imagenet`` (default): the model's pretrained weights as timm publishes them (the tag in ``name``,
  or timm's default tag), read from the Hugging Face cache (``~/.cache/huggingface/hub``) or torch
  hub's; downloaded only when ``model.options.download=true``;
* a path to a local file holding the model's state dict (read with ``torch.load(weights_only=True)``;
  classifier keys are ignored; timm's own checkpoint filters apply);
* ``none``: random initialisation.

Input normalisation. Image datasets are normalised with the ImageNet mean and std
(:mod:`supercm.data.images`). A timm model pretrained with another normalisation (many ViTs and
test models use mean = std = 0.5) gets the fixed per-channel affine map from the one to the other in
front of it, so its pretrained weights see the inputs they were trained on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from .backbones import BACKBONES
from .resnet import WeightsMissingError, _read_state_dict

#: The ImageNet normalisation the image datasets apply (supercm.data.images.IMAGENET_MEAN / _STD).
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _timm():
    try:
        import timm
    except ImportError:
        raise ValueError("model.backbone=timm needs the timm package: pip install 'supercm[timm]'") from None
    return timm


def _cached_file(cfg: dict) -> Path | None:
    """The model's pretrained file if timm's sources (Hugging Face hub, a URL) already put it in a cache here."""
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            for filename in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
                if filename:
                    found = try_to_load_from_cache(hub_id, filename)
                    if isinstance(found, str) and os.path.isfile(found):
                        return Path(found)
    url = cfg.get("url")
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if path.is_file():
            return path
    return None


def _read_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001  (a damaged file, whatever the reason)
            raise WeightsMissingError(f"cannot read weights from {path}: it is truncated or not a safetensors file "
                                     f"({type(exc).__name__})") from None
    return _read_state_dict(path)


def _load(timm, net: nn.Module, name: str, state: dict, chans: int, weights: str) -> nn.Module:
    """``net`` with ``state`` loaded strictly (classifier keys ignored); a checkpoint in another format goes
    through timm's own loader (its checkpoint filters, input-channel adaptation), strictly too."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    own = {k: v for k, v in state.items() if not any(k.startswith(h + ".") for h in heads)}
    try:
        result = net.load_state_dict(own, strict=False)
        if not result.missing_keys and not result.unexpected_keys:
            return net
        kind, keys = ("missing", result.missing_keys) if result.missing_keys else ("unexpected", result.unexpected_keys)
        problem = f"{kind} keys {keys[:3]}"
    except RuntimeError as exc:  # shapes differ
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln] or [str(exc).splitlines()[0]]
        problem = lines[0][:200]
    try:  # num_classes as in the checkpoint: timm's loader stays strict; the classifier is removed after
        full = timm.create_model(name, pretrained=True, in_chans=chans, pretrained_cfg_overlay={"state_dict": state})
        full.reset_classifier(0)
        return full
    except (RuntimeError, KeyError, ValueError, TypeError):
        raise WeightsMissingError(f"the weights ({weights}) do not fit timm model {name}: {problem}") from None


class TimmBackbone(nn.Module):
    """``timm.create_model(name, num_classes=0)`` (``pretrained``), then the bottleneck; ``out_features`` wide."""

    option_ranges: ClassVar[dict[str, str]] = {"bottleneck": "[0, inf)"}

    def __init__(self, input_shape: tuple[int, ...], name: str = "", weights: str = "imagenet", bottleneck: int = 256,
                 download: bool = False):
        super().__init__()
        timm = _timm()
        if not name:
            raise ValueError("model.options.name must name a timm model (e.g. resnet50.a1_in1k; timm.list_models())")
        if not timm.is_model(name):
            raise ValueError(f"model.options.name={name!r} is not a timm model (timm {timm.__version__}); "
                             f"list them with timm.list_models('pattern*')")
        if len(input_shape) != 3:
            raise ValueError(f"timm model {name} needs images (C, H, W), got inputs of shape {input_shape}")
        chans = input_shape[0]
        net = self._build(timm, name, weights, download, chans)
        self.pretrained = net
        width = net.num_features
        cfg = getattr(net, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean"), cfg.get("std")
        # Inputs arrive ImageNet-normalised; map them to the model's own normalisation when it differs.
        self.register_buffer("scale", None, persistent=False)
        self.register_buffer("shift", None, persistent=False)
        if chans == 3 and mean is not None and std is not None and (tuple(mean), tuple(std)) != _IMAGENET:
            m0, s0 = torch.tensor(_IMAGENET[0]), torch.tensor(_IMAGENET[1])
            m1, s1 = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
            self.scale = (s0 / s1).view(1, 3, 1, 1)
            self.shift = ((m0 - m1) / s1).view(1, 3, 1, 1)
        if bottleneck:
            self.bottleneck = nn.Sequential(nn.Linear(width, bottleneck), nn.BatchNorm1d(bottleneck), nn.ReLU())
        else:
            self.bottleneck = nn.Identity()
        self.out_features = bottleneck or width

    @staticmethod
    def _build(timm, name: str, weights: str, download: bool, chans: int) -> nn.Module:
        net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=chans)
        if weights.lower() == "none":
            return net
        if weights.lower() == "imagenet":
            cfg = dict(getattr(net, "pretrained_cfg", None) or {})
            if not (cfg.get("hf_hub_id") or cfg.get("url")):
                raise WeightsMissingError(f"timm publishes no pretrained weights for {name}; set model.options.weights "
                                          f"to a local state dict, or none")
            cached = _cached_file(cfg)
            if cached is None and download:
                return timm.create_model(name, pretrained=True, num_classes=0, in_chans=chans)
            if cached is None:
                where = cfg.get("hf_hub_id") or cfg.get("url")
                raise WeightsMissingError(
                    f"timm model {name}: its pretrained weights ({where}) are not in the Hugging Face or torch hub "
                    f"cache here; set model.options.download=true to download them (once: later runs read the "
                    f"cache), or model.options.weights=PATH to a local state dict of {name}")
            return _load(timm, net, name, _read_file(cached), chans, weights)
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsMissingError(f"model.options.weights={weights!r}: no such file ({path})")
        return _load(timm, net, name, _read_file(path), chans, weights)

    def forward(self, x: Tensor) -> Tensor:
        if self.scale is not None:
            x = x * self.scale + self.shift
        return self.bottleneck(self.pretrained(x))


def timm_backbone(input_shape: tuple[int, ...], name: str = "", weights: str = "imagenet", bottleneck: int = 256,
                  download: bool = False) -> TimmBackbone:
    """A timm model by name + bottleneck (see :mod:`supercm.models.timm_models`)."""
    return TimmBackbone(input_shape, name=name, weights=weights, bottleneck=bottleneck, download=download)


timm_backbone.option_ranges = TimmBackbone.option_ranges  # type: ignore[attr-defined]
BACKBONES.register("timm", timm_backbone)
