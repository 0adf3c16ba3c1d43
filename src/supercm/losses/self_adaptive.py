"""FreeMatch's self-adaptive thresholds and fairness term (Wang et al. 2023), as pure tensor functions.

The EMAs of the model's confidence (global τ_t, class-wise p̃_t, the pseudo-label histogram h_t) are
updated in place by :func:`update_confidence_state`; :func:`self_adaptive_thresholds` turns them into
one threshold per class and :func:`fairness_loss` is the self-adaptive fairness term.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def update_confidence_state(probs: Tensor, time_p: Tensor, p_model: Tensor, label_hist: Tensor,
                            momentum: float) -> None:
    """FreeMatch's EMAs (in place) from the weak-view probabilities ``probs`` (n, K) of a batch:

    - ``τ_t  ← m τ_t + (1 − m) mean_i max_k p_ik``  (global confidence),
    - ``p̃_t ← m p̃_t + (1 − m) mean_i p_i``          (class-wise confidence),
    - ``h_t  ← m h_t + (1 − m) hist(argmax_k p_ik) / n``  (pseudo-label histogram, for the fairness term).
    """
    probs = probs.float()
    confidence, labels = probs.max(dim=1)
    hist = torch.zeros_like(label_hist).index_add_(0, labels, torch.ones_like(confidence))
    time_p.mul_(momentum).add_((1 - momentum) * confidence.mean())
    p_model.mul_(momentum).add_((1 - momentum) * probs.mean(dim=0))
    label_hist.mul_(momentum).add_((1 - momentum) * hist / hist.sum())


def self_adaptive_thresholds(time_p: Tensor, p_model: Tensor) -> Tensor:
    """``τ_t(c) = MaxNorm(p̃_t)(c) · τ_t = p̃_t(c) / max_c' p̃_t(c') · τ_t``, one per class (K,)."""
    return p_model / p_model.max() * time_p


def _inverse_or_zero(h: Tensor) -> Tensor:
    return torch.where(h > 0, 1 / h.clamp_min(torch.finfo(h.dtype).tiny), torch.zeros_like(h))


def fairness_loss(logits_strong: Tensor, mask: Tensor, p_model: Tensor, label_hist: Tensor) -> Tensor:
    """FreeMatch's self-adaptive fairness ``L_f = −H(SumNorm(p̃_t / h_t), SumNorm(p̄ / h̄))``,
    ``H(a, b) = −Σ_c a_c log b_c``.

    Over the strong-view predictions of the rows that pass the threshold (``mask`` = 1):
    ``p̄`` their mean probability, ``h̄`` the histogram of their argmax (normalised); classes with
    ``h = 0`` get weight 0 (USB's ``1/h`` with inf replaced by 0). Minimising it *raises* the
    cross-entropy: the confident predictions are pushed toward the model's expected class
    distribution, not collapsed onto a few classes. 0 (with zero gradient) when no row passes, as USB.
    Weighted mean form, so it needs no host sync; equal to USB's selection of the masked rows.
    """
    p = logits_strong.float().softmax(dim=1)
    m = mask.to(p.dtype)
    n = m.sum()
    hist = torch.zeros(p.shape[1], dtype=p.dtype, device=p.device).index_add_(0, p.detach().argmax(dim=1), m)
    hist = hist / n.clamp_min(1)
    mean_p = (m[:, None] * p).sum(dim=0) / n.clamp_min(1)
    target = p_model * _inverse_or_zero(label_hist)
    target = target / target.sum()
    modulated = mean_p * _inverse_or_zero(hist)
    modulated = modulated / modulated.sum().clamp_min(1e-12)
    loss = (target * torch.log(modulated + 1e-12)).sum()
    return loss * (n > 0).to(loss.dtype)
