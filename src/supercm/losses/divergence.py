"""KL divergences between class distributions, as the consistency methods use them (VAT).

    kl(p, z)          = mean_i Σ_k p_ik (log p_ik − log softmax(z_i)_k)     p fixed (a target)
    kl_logits(z_p, z) = kl(softmax(z_p), z), with gradient into both sets of logits

and :func:`unit_rows`, each sample scaled to unit L2 norm over all its dimensions (VAT's
normalised perturbation direction).
"""

from __future__ import annotations

from torch import Tensor


def unit_rows(d: Tensor) -> Tensor:
    """Each sample scaled to unit L2 norm over all its dimensions."""
    norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)
    return d / norm.view(-1, *([1] * (d.dim() - 1)))


def kl(p: Tensor, logits_q: Tensor) -> Tensor:
    """Mean over samples of KL(p ‖ softmax(logits_q))."""
    return (p * (p.clamp_min(1e-12).log() - logits_q.log_softmax(dim=1))).sum(dim=1).mean()


def kl_logits(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Mean over samples of KL(softmax(logits_p) ‖ softmax(logits_q)); gradient flows into both."""
    log_p = logits_p.log_softmax(dim=1)
    return (log_p.exp() * (log_p - logits_q.log_softmax(dim=1))).sum(dim=1).mean()
