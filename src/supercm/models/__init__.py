"""A classifier = backbone + Clustering Module (the CM encoder is the classifier)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn

from ..cm import ClusteringModule, CMOutput
from .backbones import BACKBONES, DTN, MLP, GaninMNIST, SmallCNN, WideResNet, build_backbone
from .resnet import ResNetBackbone
from .timm_models import TimmBackbone  # registers backbone 'timm' (the timm package is imported only when used)


class ModelOutput(NamedTuple):
    features: Tensor  # (n, d) backbone features, the input of the CM
    logits: Tensor  # (n, K)
    responsibilities: Tensor  # (n, K)
    reconstruction: Tensor  # (n, d)


class ImageInput(nn.Module):
    """The input stage of image datasets kept as uint8 (:mod:`supercm.data.images`).

    uint8 (N, C, H, W) images are scaled to [0, 1]; images larger than ``crop`` are centre-cropped
    to ``crop × crop`` (the test transform: resize 256 → centre crop 224); then
    ``(x − mean) / std`` per channel. Float images are taken as already in [0, 1] (what
    :class:`~supercm.data.augment.Augment` returns for uint8 batches) and only cropped if larger
    and normalised. No parameters and no persistent buffers: state dicts are unchanged.
    """

    def __init__(self, crop: int | None = None, mean=None, std=None):
        super().__init__()
        self.crop = crop
        self.register_buffer("mean", None if mean is None else torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", None if std is None else torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if self.crop is not None and x.dim() == 4:
            h, w = x.shape[-2:]
            if h > self.crop or w > self.crop:
                top, left = int(round((h - self.crop) / 2)), int(round((w - self.crop) / 2))
                x = x[..., top : top + self.crop, left : left + self.crop]
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x


class CMClassifier(nn.Module):
    """``backbone`` followed by a :class:`ClusteringModule` head (after ``preprocess``, the
    input stage of uint8 image datasets, when given).

    With β = 0 in the trainer this is an ordinary linear-softmax classifier; the
    head's centroids only matter for the CM loss.
    """

    def __init__(self, backbone: nn.Module, head: ClusteringModule, preprocess: nn.Module | None = None):
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.head = head

    def embed(self, x: Tensor) -> Tensor:
        """The features: the input stage (if any), then the backbone."""
        if self.preprocess is not None:
            x = self.preprocess(x)
        return self.backbone(x)

    def forward(self, x: Tensor) -> ModelOutput:
        features = self.embed(x)
        out: CMOutput = self.head(features)
        return ModelOutput(features, *out)

    def compiled(self, **options: Any) -> Callable[[Tensor], ModelOutput]:
        """This model's forward with :meth:`embed` (input stage + backbone: all of the work)
        through ``torch.compile(**options)`` and the head eager. The head is a K×d product and a
        softmax (compiling it gained 1.02×, BENCHMARKS.md) and its centroids change in place
        between the forward and the backward pass (the centroid update comes before the loss),
        which a compiled graph that saved them for its backward refuses. Same weights, no copy."""
        embed = torch.compile(self.embed, **options)

        def call(x: Tensor) -> ModelOutput:
            features = embed(x)
            return ModelOutput(features, *self.head(features))

        return call


__all__ = ["BACKBONES", "DTN", "GaninMNIST", "MLP", "CMClassifier", "ImageInput", "ModelOutput", "ResNetBackbone", "SmallCNN", "TimmBackbone",
           "WideResNet", "build_backbone"]
