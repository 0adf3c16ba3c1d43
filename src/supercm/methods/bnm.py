"""BNM (Cui et al., 2020): batch nuclear-norm maximisation on the target batch."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..losses import BNM_NORMALISATIONS, bnm_loss
from .base import Batch, Term, register


@register("bnm")
class BNM(Term):
    """Minus the nuclear norm of softmax(unlabeled / target logits) (see :func:`supercm.losses.bnm_loss`):
    ``normalisation="mean"`` (default, the BNM authors' code) averages the singular values,
    ``"batch"`` divides their sum by the batch size. Usable as a base method or a regulariser.
    Data-parallel: computed on the global target batch (``batch.gather``), as in one process."""

    @dataclass
    class Options:
        normalisation: str = field(default="mean", metadata={"choices": BNM_NORMALISATIONS})

    def loss(self, batch: Batch) -> Tensor:
        return bnm_loss(batch.gather(batch.logits_unlabeled), self.options.normalisation)
