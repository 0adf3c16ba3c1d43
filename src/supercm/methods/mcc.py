"""MCC (Jin et al., 2020): minimum class confusion on the target batch."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..uda import mcc_loss
from .base import Batch, Term, register


@register("mcc")
class MCC(Term):
    """Class confusion of the unlabeled (target) predictions at temperature T (see
    :func:`supercm.uda.mcc_loss`): entropy-weighted, rows normalised, off-diagonal mass / K.
    Usable as a base method or stacked as a regulariser (``regularisers: [{name: mcc}]``)."""

    @dataclass
    class Options:
        temperature: float = 2.5

        def __post_init__(self) -> None:
            if not self.temperature > 0:
                raise ValueError(f"method.options.temperature must be > 0, got {self.temperature}")

    def loss(self, batch: Batch) -> Tensor:
        return mcc_loss(batch.logits_unlabeled, self.options.temperature)
