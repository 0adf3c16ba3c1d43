"""DANN (Ganin et al., 2016): domain-adversarial training through gradient reversal."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ..losses import DomainDiscriminator, dann_lambda, dann_loss
from .base import Batch, Term, register


@register("dann")
class DANN(Term):
    """``L = ½ (BCE(D(R_λ(f_s)), 1) + BCE(D(R_λ(f_t)), 0))`` on the features the CM head sees.

    ``D`` is a domain discriminator (Linear–BN–ReLU ×2, ``hidden`` wide, one logit) that this
    term owns: the trainer optimises it with the model. ``R_λ`` is gradient reversal: identity
    forward, gradient × −λ backward, so D learns to tell the domains apart while the backbone
    learns to confuse it. λ(i) = 2/(1 + e^(−i/``lambda_scale``)) − 1 is a function of the
    iteration alone, so a resumed run continues the same schedule. Labeled rows of the batch
    are the source, unlabeled rows the target.
    """

    @dataclass
    class Options:
        hidden: int = field(default=1024, metadata={"range": "[1, inf)"})
        lambda_scale: float = field(default=1000.0, metadata={"range": "(0, inf)"})

    def setup(self, model: nn.Module) -> None:
        self.discriminator = DomainDiscriminator(model.head.in_features, self.options.hidden)

    def loss(self, batch: Batch) -> Tensor:
        lam = dann_lambda(batch.iteration, self.options.lambda_scale)
        return dann_loss(self.discriminator, batch.features_labeled, batch.features_unlabeled, lam)
