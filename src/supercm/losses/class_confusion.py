"""Minimum class confusion (Jin et al., ECCV 2020), as in the authors' and tllib's code.

On a target batch of logits z (B, K), with temperature T:

    p     = softmax(z / T)                              (B, K)
    H_i   = −Σ_k p_ik log p_ik                          entropy of sample i
    w_i   = B · (1 + e^{−H_i}) / Σ_j (1 + e^{−H_j})     confident samples weigh more; Σ w = B
    C     = (p ∘ w)ᵀ p                                  (K, K) class-correlation matrix
    C̃_kl  = C_kl / Σ_m C_km                             category normalisation (rows sum to 1)
    L_mcc = (Σ_kl C̃_kl − tr C̃) / K                      mean between-class confusion

The rows of C̃ sum to 1, so L_mcc = 1 − tr C̃ / K ∈ [0, 1): 0 when no two classes are ever
predicted together for the same sample. It needs no labels, so it serves as a base UDA method or as a regulariser stacked on another.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mcc_loss(logits_target: Tensor, temperature: float = 2.5) -> Tensor:
    """L_mcc of target logits (B, K) at temperature ``temperature`` (2.5 in the paper); a scalar.

    The entropy weights are *not* detached (as in the authors' code): the gradient also flows
    through them.

    Example::

        >>> logits = torch.randn(32, 10, requires_grad=True)
        >>> loss = mcc_loss(logits)
        >>> loss.backward()
        >>> bool(0 <= loss <= 1)
        True
    """
    if logits_target.dim() != 2:
        raise ValueError(f"logits_target must be (B, K), got shape {tuple(logits_target.shape)}")
    batch, classes = logits_target.shape
    probs = torch.softmax(logits_target / temperature, dim=1)
    log_probs = torch.log_softmax(logits_target / temperature, dim=1)
    entropy = -(probs * log_probs).sum(dim=1)  # (B,)
    weight = 1.0 + torch.exp(-entropy)
    weight = batch * weight / weight.sum()  # (B,), sums to B
    confusion = (probs * weight.unsqueeze(1)).t() @ probs  # (K, K)
    confusion = confusion / confusion.sum(dim=1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / classes
