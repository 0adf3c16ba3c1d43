"""Π-Model (Laine & Aila, 2017; Sajjadi et al., 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Batch, Term, frozen_batchnorm_stats, register


@register("pi_model")
class PiModel(Term):
    """``L = mean_ik (softmax(f(a(x)))_ik − softmax(f(a'(x)))_ik)²`` over two stochastic views.

    The first view is the training pass (with gradient); the second, a fresh
    augmentation with fresh dropout, is the target (no gradient). Its pass
    leaves BatchNorm running statistics alone.
    """

    def loss(self, batch: Batch) -> Tensor:
        with torch.no_grad(), frozen_batchnorm_stats(batch.model):
            target = batch.model(batch.augmented("unlabeled")).logits.softmax(dim=1)
        return F.mse_loss(batch.logits_unlabeled.softmax(dim=1), target)
