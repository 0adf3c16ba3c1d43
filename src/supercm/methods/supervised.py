"""Cross-entropy on the labeled batch alone: no unlabeled loss (in domain adaptation: source only)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..options import ConfigError
from .base import Batch, Term, register

FORWARDS = ("auto", "labeled", "joined")


@register("supervised")
class Supervised(Term):
    """The CE baseline. With SuperCM (β > 0) the CM loss still uses the batch the model sees.

    ``forward`` says which rows the model is called on:

    * ``labeled``: the labeled rows alone. In domain adaptation this is the field's *source only*:
      the network, its BatchNorm statistics included, never sees a target image in training.
    * ``joined``: ``[labeled ; unlabeled]`` in one call, as every other method. In domain adaptation
      BatchNorm then normalises with statistics of source and target rows (an AdaBN-like baseline,
      not the field's source only); in SSL the unlabeled rows only move the BatchNorm statistics.
    * ``auto`` (default): ``labeled`` in domain adaptation when this is the step's only term (no
      SuperCM, no regulariser: the field's source only), else ``joined`` (SSL runs as before).

    ``labeled`` with a term that needs the unlabeled rows (MCC, BNM...) is refused at the first step.
    """

    @dataclass
    class Options:
        forward: str = field(default="auto", metadata={"choices": FORWARDS})

    def model_sees_unlabeled(self, batch: Batch, terms: list[Term]) -> bool:
        mode = self.options.forward
        if mode == "auto":
            return not (batch.domain_adaptation and all(t is self for t in terms))
        if mode == "labeled":
            readers = [t.name for t in terms if t is not self and t.needs_unlabeled]
            if readers:
                raise ConfigError(
                    f"method.options.forward='labeled' calls the model on the labeled rows alone, but the term(s) "
                    f"{', '.join(map(repr, readers))} read the unlabeled rows; set method.options.forward='joined' or 'auto'")
            return False
        return True
