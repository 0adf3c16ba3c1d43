"""Gradient reversal (Ganin & Lempitsky 2015) and DANN's reversal-weight schedule.

The reversal layer R_λ is the identity in the forward pass and multiplies the
incoming gradient by −λ in the backward pass:

    R_λ(x) = x,        ∂L/∂x = −λ · ∂L/∂R_λ(x).

Placed between a feature extractor and a domain discriminator, one backward pass
trains the discriminator to *tell* the domains apart while the extractor is pushed
to make them *indistinguishable*.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GradReverse(torch.autograd.Function):
    """Autograd function behind :func:`grad_reverse`: identity forward, gradient × (−λ) backward."""

    @staticmethod
    def forward(ctx, x: Tensor, lambda_: float) -> Tensor:
        ctx.lambda_ = float(lambda_)
        return x.view_as(x)  # a new view, so autograd records this node

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output.neg() * ctx.lambda_, None


def grad_reverse(x: Tensor, lambda_: float = 1.0) -> Tensor:
    """R_λ(x): ``x`` unchanged, its gradient multiplied by ``−lambda_`` on the way back.

    Shapes: any; the output has ``x``'s shape, dtype and device.

    Example::

        >>> x = torch.tensor([1.0, -2.0], requires_grad=True)
        >>> grad_reverse(x, 0.5).sum().backward()
        >>> x.grad
        tensor([-0.5000, -0.5000])
    """
    return GradReverse.apply(x, lambda_)


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse` with a fixed ``lambda_`` (set the attribute to change it)."""

    def __init__(self, lambda_: float = 1.0) -> None:
        super().__init__()
        self.lambda_ = lambda_

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}"


def dann_lambda(iteration: int, scale: float = 1000.0) -> float:
    """DANN's reversal weight λ(i) = 2 / (1 + exp(−i / scale)) − 1, rising from 0 towards 1.

    A pure function of the iteration count (no state), so a resumed run gets the same
    λ as an uninterrupted one. With the common ``scale = 1000`` (tllib's
    ``WarmStartGradientReverseLayer``: α = 1, max_iters = 1000): λ(0) = 0,
    λ(1000) ≈ 0.462, λ(5000) ≈ 0.987.

    Example::

        >>> round(dann_lambda(1000), 3)
        0.462
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    # tanh form of 2/(1+e^{-z}) − 1: exact and free of overflow for huge iteration counts.
    return math.tanh(iteration / (2.0 * scale))


def dann_lambda_progress(progress: float, gamma: float = 10.0) -> float:
    """The DANN paper's adaptation factor over training progress p = i/T ∈ [0, 1]:
    λ_p = 2 / (1 + exp(−γ·p)) − 1 with γ = 10 (Ganin et al., JMLR 2016, §5.2.2).

    λ_0 = 0, λ_0.1 ≈ 0.462, λ_1 ≈ 0.99991: the same curve as :func:`dann_lambda` with
    ``scale = T/γ``, tied to the run's length instead of a fixed iteration count.

    Example::

        >>> round(dann_lambda_progress(0.1), 3)
        0.462
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    return math.tanh(gamma * progress / 2.0)
