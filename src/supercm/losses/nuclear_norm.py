"""Batch nuclear-norm maximisation (Cui et al., CVPR 2020).

On a target batch of logits z (B, K), A = softmax(z) (B, K) and σ_1 … σ_r its singular values
(r = min(B, K)). Maximising ‖A‖_* = Σ σ_j raises both prediction confidence and diversity;
as a loss to minimise, two normalisations are in use:

* ``"mean"`` (**default**, the authors' released code ``-torch.mean(torch.svd(A)[1])``):
  L_bnm = −(1/r) Σ_j σ_j;
* ``"batch"`` (the paper's equation and e.g. pytorch-adapt): L_bnm = −‖A‖_* / B.

The two differ by the constant factor r/B, which is 1 when B ≤ K and K/B otherwise (e.g.
10/32 for 10 classes and a batch of 32): choose the loss weight accordingly.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Accepted values of ``bnm_loss(..., normalisation=)``.
BNM_NORMALISATIONS = ("mean", "batch")


def bnm_loss(logits_target: Tensor, normalisation: str = "mean") -> Tensor:
    """Negative nuclear norm of softmax(logits_target) (B, K), normalised per ``normalisation``; a scalar.

    ``"mean"``: −mean of the singular values (authors' code, default); ``"batch"``: −‖A‖_*/B.

    Example::

        >>> logits = torch.randn(32, 10, requires_grad=True)
        >>> loss = bnm_loss(logits)            # −mean of the 10 singular values
        >>> loss.backward()
        >>> bool(loss < 0)
        True
    """
    if logits_target.dim() != 2:
        raise ValueError(f"logits_target must be (B, K), got shape {tuple(logits_target.shape)}")
    if normalisation not in BNM_NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {BNM_NORMALISATIONS}, got {normalisation!r}")
    probs = torch.softmax(logits_target, dim=1)
    singular_values = torch.linalg.svdvals(probs)
    if normalisation == "mean":
        return -singular_values.mean()
    return -singular_values.sum() / logits_target.shape[0]
