"""Pseudo-Label (Lee, 2013), as in Oliver et al. (2018)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from .base import SSLMethod, StepInputs, register


@register("pseudo_label")
class PseudoLabel(SSLMethod):
    """``L = (1/n_u) Σ_i 1[max_k p_ik ≥ threshold] · CE(logits_i, argmax_k p_ik)``, p = softmax(logits).detach().

    Unconfident samples count as zero in the mean over the unlabeled batch.
    """

    @dataclass
    class Options:
        threshold: float = field(default=0.95, metadata={"range": "[0, 1]"})

    def unlabeled_loss(self, step: StepInputs) -> Tensor:
        logits = step.logits_unlabeled
        confidence, target = logits.detach().softmax(dim=1).max(dim=1)
        mask = (confidence >= self.options.threshold).to(logits.dtype)
        return (F.cross_entropy(logits, target, reduction="none") * mask).mean()
