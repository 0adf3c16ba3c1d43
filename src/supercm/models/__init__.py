"""A classifier = backbone + Clustering Module (the CM encoder is the classifier)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from ..cm import ClusteringModule, CMOutput
from .backbones import BACKBONES, MLP, SmallCNN, WideResNet, build_backbone


class ModelOutput(NamedTuple):
    features: Tensor  # (n, d) backbone features, the input of the CM
    logits: Tensor  # (n, K)
    responsibilities: Tensor  # (n, K)
    reconstruction: Tensor  # (n, d)


class CMClassifier(nn.Module):
    """``backbone`` followed by a :class:`ClusteringModule` head.

    With β = 0 in the trainer this is an ordinary linear-softmax classifier; the
    head's centroids only matter for the CM loss.
    """

    def __init__(self, backbone: nn.Module, head: ClusteringModule):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> ModelOutput:
        features = self.backbone(x)
        out: CMOutput = self.head(features)
        return ModelOutput(features, *out)


__all__ = ["BACKBONES", "CMClassifier", "MLP", "ModelOutput", "SmallCNN", "WideResNet", "build_backbone"]
