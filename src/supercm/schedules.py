"""Schedules over training iterations: the consistency ramp-up w(t) and the learning-rate factor."""

from __future__ import annotations

import math

from .config import OptimConfig


def rampup(iteration: int, length: int) -> float:
    """w(t) = exp(−5 (1 − min(t/T, 1))²); 1 when T = 0."""
    if length <= 0:
        return 1.0
    t = min(iteration / length, 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def lr_factor(optim: OptimConfig, iteration: int) -> float:
    """The learning-rate multiplier at ``iteration`` (0-based): the annealed schedule of the
    domain-adaptation protocol, (1 + γ·i)^(−p), and/or the step decay of the SSL protocol."""
    factor = (1.0 + optim.anneal_gamma * iteration) ** (-optim.anneal_power) if optim.schedule == "annealed" else 1.0
    if optim.decay_at is not None and iteration >= optim.decay_at:
        factor *= optim.decay_factor
    return factor
