"""DANN (Ganin et al., 2016): domain-adversarial training through gradient reversal."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ..losses import DomainDiscriminator, dann_lambda, dann_lambda_progress, dann_loss
from .base import Batch, Term, register

LAMBDA_SCHEDULES = ("iteration", "progress")


@register("dann")
class DANN(Term):
    """``L = ½ (BCE(D(R_λ(f_s)), 1) + BCE(D(R_λ(f_t)), 0))`` on the features the CM head sees.

    ``D`` is a domain discriminator that this term owns (the trainer optimises it with the model):
    [Linear → BatchNorm → ReLU → Dropout] × ``depth``, ``hidden`` wide, → one logit. The defaults
    (2 × 1024, BatchNorm, no dropout) are tllib's, for ResNet features; the DANN paper's digit
    experiments use ``depth=1, hidden=100, batch_norm=false`` (one hidden layer of 100).

    ``R_λ`` is gradient reversal: identity forward, gradient × −λ backward, so D learns to tell the
    domains apart while the backbone learns to confuse it. ``lambda_schedule``:

    * ``iteration`` (tllib): λ(i) = 2/(1 + e^(−i/``lambda_scale``)) − 1, a function of the iteration
      alone (0.46 at 1,000, 0.99 at 5,000 with the default scale);
    * ``progress`` (the paper): λ_p = 2/(1 + e^(−``lambda_gamma``·p)) − 1, p = i/T over the run's
      ``train.iterations`` T (γ = 10 published).

    Both are pure functions of the step, so a resumed run continues the same schedule. Labeled rows
    of the batch are the source, unlabeled rows the target.
    """

    @dataclass
    class Options:
        hidden: int = field(default=1024, metadata={"range": "[1, inf)"})
        depth: int = field(default=2, metadata={"range": "[1, inf)"})
        batch_norm: bool = True
        dropout: float = field(default=0.0, metadata={"range": "[0, 1)"})
        lambda_schedule: str = field(default="iteration", metadata={"choices": LAMBDA_SCHEDULES})
        lambda_scale: float = field(default=1000.0, metadata={"range": "(0, inf)"})
        lambda_gamma: float = field(default=10.0, metadata={"range": "(0, inf)"})

    def setup(self, model: nn.Module) -> None:
        o = self.options
        self.discriminator = DomainDiscriminator(model.head.in_features, o.hidden, o.depth, o.batch_norm, o.dropout)

    def lambda_at(self, batch: Batch) -> float:
        """The reversal weight λ of this step under ``lambda_schedule``."""
        if self.options.lambda_schedule == "progress":
            return dann_lambda_progress(batch.progress, self.options.lambda_gamma)
        return dann_lambda(batch.iteration, self.options.lambda_scale)

    def loss(self, batch: Batch) -> Tensor:
        return dann_loss(self.discriminator, batch.features_labeled, batch.features_unlabeled, self.lambda_at(batch))
