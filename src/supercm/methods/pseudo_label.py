"""Pseudo-Label (Lee, 2013): the SuperCM authors' form and the textbook form (Oliver et al., 2018)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from ..losses import pseudo_label_target
from .base import Batch, Term, frozen_batchnorm_stats, register

VARIANTS = ("authors", "textbook")


@register("pseudo_label")
class PseudoLabel(Term):
    """Cross-entropy of the unlabeled batch against targets made from the model's own predictions.

    p = softmax(training-pass logits), detached.

    - ``variant="authors"`` (the SuperCM authors' code): a second pass over the whole joined
      batch, freshly augmented, with BatchNorm running-statistic updates frozen, gives logits
      z; the target is ``t_i = 10 · onehot(argmax p_i)`` where ``max p_i > threshold`` and
      ``t_i = p_i`` (the soft prediction) elsewhere;
      ``L = (1/n_u) Σ_i −Σ_k t_ik log softmax(z_i)_k``.
    - ``variant="textbook"``: ``L = (1/n_u) Σ_i 1[max_k p_ik ≥ threshold] · CE(logits_i, argmax_k p_ik)``
      on the training pass; unconfident samples count as zero in the mean.
    """

    @dataclass
    class Options:
        threshold: float = field(default=0.95, metadata={"range": "[0, 1]"})
        variant: str = field(default="authors", metadata={"choices": VARIANTS})


    #: Weight of a confident sample's one-hot target in the authors' form.
    CONFIDENT_WEIGHT = 10.0

    def pseudo_labels(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``(argmax p_i, 1[max p_i > threshold])`` (``≥`` for the textbook form): the rows whose
        one-hot target counts (for SuperCM's ``cm.centroid_source=labeled+pseudo``: the authors'
        pseudo-labeled centroids, ``max γ > 0.95``)."""
        confidence, labels = batch.logits_unlabeled.detach().float().softmax(dim=1).max(dim=1)
        if self.options.variant == "textbook":
            return labels, (confidence >= self.options.threshold).float()
        return labels, (confidence > self.options.threshold).float()

    def loss(self, batch: Batch) -> Tensor:
        if self.options.variant == "textbook":
            logits = batch.logits_unlabeled
            confidence, target = logits.detach().softmax(dim=1).max(dim=1)
            mask = (confidence >= self.options.threshold).to(logits.dtype)
            return (F.cross_entropy(logits, target, reduction="none") * mask).mean()
        p = batch.logits_unlabeled.detach().softmax(dim=1)
        target = pseudo_label_target(p, self.options.threshold, self.CONFIDENT_WEIGHT)
        with frozen_batchnorm_stats(batch.model):
            logits = batch.model(batch.augmented()).logits[batch.num_labeled :]
        return -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
