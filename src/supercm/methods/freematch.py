"""FreeMatch (Wang et al., ICLR 2023): FixMatch with self-adaptive thresholds and a fairness term."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..losses import fairness_loss, masked_cross_entropy, self_adaptive_thresholds, update_confidence_state
from .base import Batch, register
from .fixmatch import FixMatch, StrongViewOptions


@register("freematch")
class FreeMatch(FixMatch):
    """``L = (1/μB) Σ_i 1[max p_i ≥ τ_t(argmax p_i)] · CE(f(A(u_i)), argmax p_i) + w_f · L_f``.

    As :class:`~supercm.methods.fixmatch.FixMatch` (weak view = the training pass's unlabeled rows,
    strong view = RandAugment + Cutout, one extra pass), with the fixed τ replaced by FreeMatch's
    self-adaptive thresholds: each step, **before** the mask, the EMAs (momentum ``ema``, 0.999)
    of the mean max-confidence τ_t, the mean probability p̃_t(c) and the pseudo-label histogram h_t
    take in the weak-view probabilities (:func:`update_confidence_state`; τ_t, p̃_t, h_t start at
    1/K), then ``τ_t(c) = p̃_t(c)/max p̃_t · τ_t`` (:func:`self_adaptive_thresholds`). ``L_f`` is
    the self-adaptive fairness term (:func:`fairness_loss`), weight ``fairness_weight`` relative
    to λ_u = ``method.delta`` (USB's ``ent_loss_ratio``: 0.001 in its CIFAR/SVHN configs, 0.01 its
    default; with δ = 1 the objective is USB's ``sup + λ_u unsup + λ_e ent``).

    The EMAs are buffers of this term: saved in checkpoints and restored on resume. In a
    data-parallel run they take in the *global* batch's probabilities (``batch.gather``) and
    ``L_f``, a function of the whole batch, is computed on the gathered strong logits and mask, so
    every rank holds the state and the loss of a one-process run.

    :meth:`pseudo_labels` gives ``(argmax p_i, mask_i)``: with ``cm.centroid_source=labeled+pseudo``
    the rows above their class's threshold join SuperCM's centroids with weight 1.
    """

    @dataclass
    class Options(StrongViewOptions):
        ema: float = field(default=0.999, metadata={"range": "[0, 1)"})
        fairness_weight: float = field(default=0.001, metadata={"range": "[0, inf)"})

    def setup(self, model: nn.Module) -> None:
        k = model.head.num_classes
        self.register_buffer("time_p", torch.full((), 1.0 / k))
        self.register_buffer("p_model", torch.full((k,), 1.0 / k))
        self.register_buffer("label_hist", torch.full((k,), 1.0 / k))

    def thresholds(self, batch: Batch, probs: Tensor) -> Tensor:
        """Update the EMAs with the global batch's weak-view probabilities; each row's threshold."""
        update_confidence_state(batch.gather(probs.detach()), self.time_p, self.p_model, self.label_hist,
                                self.options.ema)
        return self_adaptive_thresholds(self.time_p, self.p_model)[probs.argmax(dim=1)]

    def loss(self, batch: Batch) -> Tensor:
        labels, mask = self.pseudo_labels(batch)
        logits = self.strong_logits(batch)
        loss = masked_cross_entropy(logits, labels, mask)
        if self.options.fairness_weight:
            fair = fairness_loss(batch.gather(logits), batch.gather(mask), self.p_model, self.label_hist)
            loss = loss + self.options.fairness_weight * fair
        return loss

    @torch.no_grad()
    def log_terms(self, batch: Batch) -> dict[str, Tensor]:
        return {**super().log_terms(batch), "tau": self.time_p.clone()}
