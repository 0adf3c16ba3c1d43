"""What one training step minimises: ``CE(labeled) + Σ_j weight_j(t) · L_j`` on one :class:`Batch`.

Every term comes as a :class:`WeightedTerm`: the term, its weight and its ramp-up, and the key its
loss is logged under. SuperCM (weight ``cm.beta``), the base method (``method.delta`` with the
ramp-up ``method.rampup``) and each regulariser (its ``weight`` and ``rampup``) reach the objective
through this one mechanism; the builder makes the list, nothing downstream names a term.

:class:`Objective` holds the model and the loss terms that count in a run (SuperCM, the base
method, the regularisers: their trainable modules, e.g. DANN's discriminator) under one root. Its
forward is the objective: the terms' ``before_forward`` hooks, **one** model call on
``[labeled | source ; unlabeled | target]`` (the labeled rows alone when a term says so:
domain adaptation's source only, :meth:`~supercm.methods.Term.model_sees_unlabeled`), cross-entropy on the labeled rows, and each term's
weighted loss. In a data-parallel run (``torchrun``) the trainer wraps it in PyTorch's
``DistributedDataParallel``, so every gradient of the step (the model's and the terms') is averaged
over the processes in buckets while the backward pass is still running; extra passes a term makes
(VAT, Π-Model, the teacher) happen inside that forward, through the unwrapped model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch.nn.functional as F
from torch import Tensor, nn

from .methods import Batch, Term
from .schedules import rampup

__all__ = ["Objective", "WeightedTerm"]


@dataclass
class WeightedTerm:
    """A loss term of the objective with its weight ``weight · w(t)``, ``w`` the ramp-up over
    ``rampup`` iterations (:func:`~supercm.schedules.rampup`; 1 when 0), logged under ``key``."""

    term: Term
    weight: float
    rampup: int
    key: str

    def weight_at(self, iteration: int) -> float:
        return self.weight * rampup(iteration, self.rampup)

    def counts(self, has_unlabeled: bool) -> bool:
        """Whether the term adds to the loss in a run: its weight is positive (the ramp-up never makes
        it 0) and, when it needs one, there is an unlabeled batch."""
        return self.weight > 0 and (has_unlabeled or not self.term.needs_unlabeled)


class Objective(nn.Module):
    """``CE(labeled) + Σ weight · L_term`` on a :class:`~supercm.methods.Batch`.

    ``terms``: the terms that can count in the run (their modules become this module's, so a
    wrapper such as ``DistributedDataParallel`` sees their parameters). ``model_call``: the call
    that makes the step's one pass (default: ``model``; the trainer passes
    ``torch.compile(model)`` with ``train.compile=true``); it is not registered as a submodule.
    """

    def __init__(self, model: nn.Module, terms: list[Term], model_call: Callable[[Tensor], Any] | None = None):
        super().__init__()
        self.model = model
        self.terms = nn.ModuleList(terms)
        self.__dict__["model_call"] = model if model_call is None else model_call

    def forward(self, batch: Batch, weighted: list[tuple[Term, float, str]],
                log_terms: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, logged scalars) of the step; ``weighted`` lists (term, weight now, log key) in
        the order the terms are summed; ``batch.output`` holds the model call's output after it.
        ``log_terms``: also the terms' extra scalars (SuperCM's E1..E4), without gradient."""
        terms = [term for term, _, _ in weighted]
        for term in terms:
            term.before_forward(batch)
        if not all(term.model_sees_unlabeled(batch, terms) for term in terms):
            batch.keep_labeled_only()  # e.g. domain adaptation's source only: BatchNorm of the source rows
        batch.output = self.model_call(batch.x)
        for term, _, _ in weighted:  # before any loss: SuperCM's centroids may take them in first
            labels = term.pseudo_labels(batch)
            if labels is not None and batch.pseudo_labels is None:
                batch.pseudo_labels = labels
        ce = F.cross_entropy(batch.logits_labeled, batch.y_labeled)
        loss = ce
        logs: dict[str, Tensor] = {"ce": ce.detach()}
        for term, weight, key in weighted:
            term_loss = term.loss(batch)
            if term_loss is None:
                continue
            loss = loss + weight * term_loss
            logs[key] = term_loss.detach()
            if log_terms:
                logs.update(term.log_terms(batch))
        return loss, logs
