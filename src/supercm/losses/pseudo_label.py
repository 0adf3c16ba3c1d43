"""Pseudo-label targets (Lee 2013), in the form the SuperCM authors' code trains against.

    target_i = weight · onehot(argmax p_i)   where max_k p_ik > threshold
             = p_i                            elsewhere

The loss is then the cross-entropy −Σ_k target_ik log softmax(z_i)_k of another view's logits z.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pseudo_label_target(p: Tensor, threshold: float, weight: float) -> Tensor:
    """``weight · onehot(argmax p)`` where ``max p > threshold``, else ``p`` (the authors' target)."""
    confidence, label = p.max(dim=1)
    onehot = torch.zeros_like(p).scatter_(1, label[:, None], weight)
    return torch.where((confidence > threshold)[:, None], onehot, p)
