"""SuperCM as a regulariser: supervised centroids, then the Clustering Module's loss."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import Batch, Term, register

FEATURE_MODES = ("reuse", "eval_pass")
#: Values of ``cm.centroid_source``: what the centroids are computed from.
CENTROID_SOURCES = ("labeled", "labeled+pseudo")
#: Values of ``cm.rows``: the rows whose features ``L_CM`` pulls toward the centroids.
LOSS_ROWS = ("all", "labeled")


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

    ``centroid_source`` (``cm.centroid_source``): ``"labeled"`` (the paper) folds in the labeled
    features alone. ``"labeled+pseudo"`` (a variant of the authors' code) also folds in the
    unlabeled rows the base method pseudo-labels (``batch.pseudo_labels``: FixMatch, FreeMatch,
    Pseudo-Label), weighted as the method weights them. The rule: with labeled features ``x_i``,
    labels ``y_i``, unlabeled features ``u_j`` (the training pass's, detached), pseudo-labels ``ŷ_j``
    and weights ``w_j`` (1 where the confidence passes the method's threshold, else 0),

        ``m_k = (Σ_{i: y_i = k} x_i + Σ_{j: ŷ_j = k} w_j u_j) / (n_k + Σ_{j: ŷ_j = k} w_j)``

    replaces the labeled class mean in the centroid rule (a class is present when its total weight
    is > 0). Needs ``features="reuse"`` and a base method that pseudo-labels.

    ``rows`` (``cm.rows``): ``"all"`` (the paper) applies ``L_CM`` to every row of the joined batch;
    ``"labeled"`` to the labeled (source) rows only, ``n`` = their count, so the unlabeled (target)
    features get no gradient from SuperCM: the ablation that asks whether pulling target features
    toward the source centroids is what helps or hurts in UDA (issue 17 §3).

    The model must be a :class:`supercm.models.CMClassifier` (a backbone and a
    :class:`supercm.cm.ClusteringModule` head): the CM encoder is the classifier.
    """

    needs_unlabeled = False

    @dataclass
    class Options:
        features: str = field(default="reuse", metadata={"choices": FEATURE_MODES})
        centroid_source: str = field(default="labeled", metadata={"choices": CENTROID_SOURCES})
        rows: str = field(default="all", metadata={"choices": LOSS_ROWS})

        def validate(self) -> None:
            if self.centroid_source == "labeled+pseudo" and self.features != "reuse":
                raise ValueError("centroid_source='labeled+pseudo' needs features='reuse' (the pseudo-labeled "
                                 "features are the training pass's)")

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
        if self.options.centroid_source == "labeled+pseudo" and batch.pseudo_labels is not None:
            labels, weights = batch.pseudo_labels
            head.update_centroids(
                batch.features.detach(), torch.cat([batch.y_labeled, labels]),
                torch.cat([weights.new_ones(batch.num_labeled), weights]))
        elif self.options.features == "reuse":
            head.update_centroids(batch.features_labeled.detach(), batch.y_labeled)
        # The forward pass's γμ used the centroids before this update: the loss recomputes it.
        features, output = self._rows(batch)
        return head.loss(features, output._replace(reconstruction=None))

    def _rows(self, batch: Batch):
        """The features and head output ``L_CM`` is taken over: the whole batch, or its labeled rows."""
        if self.options.rows == "labeled":
            n = batch.num_labeled
            return batch.features_labeled, batch.output._make(None if t is None else t[:n] for t in batch.output)
        return batch.features, batch.output

    @torch.no_grad()
    def log_terms(self, batch: Batch) -> dict[str, Tensor]:
        head = batch.model.head
        features, output = self._rows(batch)
        terms = head.loss_terms(features.detach(), output._replace(reconstruction=None))
        return dict(zip(("e1", "e2", "e3", "e4"), terms))
