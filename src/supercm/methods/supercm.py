"""SuperCM as a regulariser: supervised centroids, then the Clustering Module's loss."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import Batch, Term, register

FEATURE_MODES = ("reuse", "eval_pass")


@register("supercm")
class SuperCM(Term):
    """``L_CM`` of the whole joined batch (labeled + unlabeled, or source + target), SPEC §2–3.

    Each step, **before** the loss, the head's centroids take in the labeled (source) features
    of the batch, detached, by the head's centroid rule; then
    ``L_CM = Σ_i Σ_k γ_ik ‖x_i − μ_k‖² / (n·d) + E4`` with the responsibilities γ of the training
    pass. Its weight is ``cm.beta``; it composes onto any base method and stack.

    ``features``: ``"reuse"`` folds in the detached features of the training pass (no extra
    cost); ``"eval_pass"`` is the authors' extra pass: eval mode (BatchNorm running statistics),
    the un-augmented labeled batch, under ``no_grad``, taken before the training pass moves
    those statistics.

    The model must be a :class:`supercm.models.CMClassifier` (a backbone and a
    :class:`supercm.cm.ClusteringModule` head): the CM encoder is the classifier.
    """

    needs_unlabeled = False

    @dataclass
    class Options:
        features: str = field(default="reuse", metadata={"choices": FEATURE_MODES})

    def before_forward(self, batch: Batch) -> None:
        if self.options.features == "eval_pass":
            model = batch.model
            with torch.no_grad():
                model.eval()
                # Through the whole model: its input stage (uint8 images: crop, normalise) comes first.
                model.head.update_centroids(model(batch.x_labeled_raw).features, batch.y_labeled)
                model.train()

    def loss(self, batch: Batch) -> Tensor:
        head = batch.model.head
        if self.options.features == "reuse":
            head.update_centroids(batch.features_labeled.detach(), batch.y_labeled)
        # The forward pass's γμ used the centroids before this update: the loss recomputes it.
        return head.loss(batch.features, batch.output._replace(reconstruction=None))

    @torch.no_grad()
    def log_terms(self, batch: Batch) -> dict[str, Tensor]:
        head = batch.model.head
        terms = head.loss_terms(batch.features.detach(), batch.output._replace(reconstruction=None))
        return dict(zip(("e1", "e2", "e3", "e4"), terms))
