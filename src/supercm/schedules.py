"""Schedules over training iterations: the consistency ramp-up w(t) and the learning-rate factor."""

from __future__ import annotations

import math

from .config import OptimConfig

#: α of the DANN paper's η_p = η0 / (1 + α·p)^β (Ganin et al., JMLR 2016, §5.2.2: α = 10, β = 0.75).
PROGRESS_ALPHA = 10.0
#: The cosine decay η = η0·cos(7πk / 16K) of FixMatch (Sohn et al. 2020, §3 and App. B.1) and USB
#: (``get_cosine_schedule_with_warmup``, ``num_cycles = 7/16``, no warm-up in its classic-CV configs).
COSINE_CYCLES = 7 / 16


def rampup(iteration: int, length: int) -> float:
    """w(t) = exp(−5 (1 − min(t/T, 1))²); 1 when T = 0."""
    if length <= 0:
        return 1.0
    t = min(iteration / length, 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def lr_factor(optim: OptimConfig, iteration: int, total_iterations: int | None = None) -> float:
    """The learning-rate multiplier at ``iteration`` (0-based), and/or the step decay of the SSL protocol:

    * ``annealed`` (tllib, per iteration): (1 + γ·i)^(−power), γ = ``anneal_gamma``;
    * ``progress`` (the DANN paper, over the run): (1 + α·p)^(−power), p = i / ``total_iterations``,
      α = :data:`PROGRESS_ALPHA` = 10 (η_p = 0.01/(1 + 10p)^0.75 as published; a fixed constant, so
      the config and its hash keep their keys: ``anneal_power`` is β, ``anneal_gamma`` is not used);
    * ``cosine`` (FixMatch, USB, over the run): cos(π·c·p), c = :data:`COSINE_CYCLES` = 7/16, so the last
      step runs at cos(7π/16) ≈ 0.195 of η0;
    * ``step``: 1.

    ``decay_at`` multiplies by ``decay_factor`` from that iteration on, under any schedule.
    """
    if optim.schedule == "annealed":
        factor = (1.0 + optim.anneal_gamma * iteration) ** (-optim.anneal_power)
    elif optim.schedule in ("progress", "cosine"):
        if not total_iterations or total_iterations < 1:
            raise ValueError(f"optim.schedule={optim.schedule!r} needs the run's length (train.iterations)")
        p = min(iteration / total_iterations, 1.0)
        if optim.schedule == "progress":
            factor = (1.0 + PROGRESS_ALPHA * p) ** (-optim.anneal_power)
        else:
            factor = math.cos(math.pi * COSINE_CYCLES * p)
    else:
        factor = 1.0
    if optim.decay_at is not None and iteration >= optim.decay_at:
        factor *= optim.decay_factor
    return factor
