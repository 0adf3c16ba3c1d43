"""DANN's domain-adversarial loss (Ganin et al. 2016), as the common implementation writes it.

A discriminator D: features → one logit is trained to output 1 on source features and 0
on target features; the features reach it through gradient reversal R_λ, so the
feature extractor receives the opposite gradient:

    L_dann = ½ [ BCE(D(R_λ(f_s)), 1) + BCE(D(R_λ(f_t)), 0) ],

each BCE a mean over its batch, computed from logits (``binary_cross_entropy_with_logits``,
numerically stable and safe under autocast). Minimising L_dann over D and the extractor
jointly is the min-max game of DANN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .grl import grad_reverse


class DomainDiscriminator(nn.Sequential):
    """[Linear → BatchNorm → ReLU → Dropout] × ``depth`` → one logit, ``hidden`` wide.

    Input (B, in_features); output (B,) logits, positive meaning "source". The defaults
    (``depth=2``, ``hidden=1024``, BatchNorm, no dropout) are tllib's ``DomainDiscriminator``
    (batch-norm variant), the discriminator of the ResNet-50 / Office protocol. The DANN paper's
    digit experiments use one hidden layer of 100 units without BatchNorm (Ganin et al., JMLR 2016,
    §5.2): ``DomainDiscriminator(768, hidden=100, depth=1, batch_norm=False)``. ``batch_norm=False``
    drops the BatchNorm layers; ``dropout`` > 0 adds ``nn.Dropout`` after each ReLU (tllib's
    variant without BatchNorm uses 0.5).

    Example::

        >>> disc = DomainDiscriminator(256, hidden=1024)
        >>> disc(torch.randn(8, 256)).shape
        torch.Size([8])
        >>> ganin = DomainDiscriminator(768, hidden=100, depth=1, batch_norm=False)
        >>> sum(p.numel() for p in ganin.parameters())
        77001
    """

    def __init__(self, in_features: int, hidden: int = 1024, depth: int = 2, batch_norm: bool = True,
                 dropout: float = 0.0) -> None:
        if depth < 1 or hidden < 1:
            raise ValueError(f"depth and hidden must be ≥ 1, got depth={depth}, hidden={hidden}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        d = in_features
        for _ in range(depth):
            layers.append(nn.Linear(d, hidden))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU(inplace=True))
            if dropout:
                layers.append(nn.Dropout(dropout))
            d = hidden
        super().__init__(*layers, nn.Linear(d, 1))
        self.in_features = in_features
        self.hidden = hidden

    def forward(self, features: Tensor) -> Tensor:
        return super().forward(features).squeeze(-1)


def dann_loss(
    discriminator: nn.Module,
    features_source: Tensor,
    features_target: Tensor,
    lambda_: float = 1.0,
) -> Tensor:
    """½ (BCE_source + BCE_target) of ``discriminator`` on gradient-reversed features.

    ``features_source`` (B_s, D) gets domain label 1, ``features_target`` (B_t, D) label 0.
    Both halves go through the discriminator in **one** call, so its batch-norm sees a
    mixed-domain batch (as in tllib). The discriminator's parameters receive the ordinary
    gradient of the loss; the features receive it multiplied by ``−lambda_``
    (:func:`~supercm.losses.grl.grad_reverse`). Returns a scalar.

    Example::

        >>> from supercm.losses import dann_lambda
        >>> backbone, disc = torch.nn.Linear(10, 32), DomainDiscriminator(32, hidden=64)
        >>> f_s, f_t = backbone(torch.randn(8, 10)), backbone(torch.randn(8, 10) + 1)
        >>> loss = dann_loss(disc, f_s, f_t, lambda_=dann_lambda(2000))
        >>> loss.backward()  # disc learns to separate, backbone to confuse
    """
    n_s = features_source.shape[0]
    features = grad_reverse(torch.cat([features_source, features_target], dim=0), lambda_)
    logits = discriminator(features).reshape(-1)
    logits_s, logits_t = logits[:n_s], logits[n_s:]
    bce_s = F.binary_cross_entropy_with_logits(logits_s, torch.ones_like(logits_s))
    bce_t = F.binary_cross_entropy_with_logits(logits_t, torch.zeros_like(logits_t))
    return 0.5 * (bce_s + bce_t)
