"""The weight-EMA copy of the model, evaluated beside it (``train.ema_decay`` > 0).

After every optimizer step ``θ_ema ← d·θ_ema + (1 − d)·θ`` for the parameters (one fused kernel
per group of tensors) and the buffers (BatchNorm statistics) are copied. The copy never trains.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` to hold its EMA."""
    return copy.deepcopy(model).requires_grad_(False)


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """One EMA step of ``ema_model`` towards ``model``'s parameters; ``model``'s buffers copied."""
    torch._foreach_lerp_(list(ema_model.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    for e, b in zip(ema_model.buffers(), model.buffers()):
        e.copy_(b)
