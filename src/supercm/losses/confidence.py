"""Confidence-thresholded pseudo-labels (FixMatch, Sohn et al. 2020) and the masked cross-entropy.

    ŷ_i = argmax_k p_ik,  mask_i = 1[max_k p_ik ≥ τ]     p = softmax(weak-view logits), no gradient
    L_u = (1/n) Σ_i mask_i · CE(strong-view logits_i, ŷ_i)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def confident_labels(logits_weak: Tensor, threshold: float | Tensor) -> tuple[Tensor, Tensor]:
    """``(argmax_k p_ik, 1[max_k p_ik ≥ threshold])`` with ``p = softmax(logits_weak)`` (no gradient);
    ``threshold`` a scalar or one per row."""
    confidence, labels = logits_weak.detach().float().softmax(dim=1).max(dim=1)
    return labels, (confidence >= threshold).float()


def masked_cross_entropy(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """``(1/n) Σ_i mask_i · CE(logits_i, labels_i)``: rows below the threshold count as zero in the mean."""
    return (F.cross_entropy(logits.float(), labels, reduction="none") * mask).mean()
