"""MCC (Jin et al., 2020): minimum class confusion on the target batch."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..losses import mcc_loss
from .base import Batch, Term, register


@register("mcc")
class MCC(Term):
    """Class confusion of the unlabeled (target) predictions at temperature T (see
    :func:`supercm.losses.mcc_loss`): entropy-weighted, rows normalised, off-diagonal mass / K.
    Usable as a base method or stacked as a regulariser (``regularisers: [{name: mcc}]``).
    Data-parallel: computed on the global target batch (``batch.gather``), as in one process."""

    @dataclass
    class Options:
        temperature: float = field(default=2.5, metadata={"range": "(0, inf)"})

    def loss(self, batch: Batch) -> Tensor:
        return mcc_loss(batch.gather(batch.logits_unlabeled), self.options.temperature)
