"""Virtual Adversarial Training (Miyato et al., 2018), one power iteration."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..losses import kl, kl_logits, unit_rows
from .base import Batch, Term, frozen_batchnorm_stats, register

VARIANTS = ("authors", "textbook")


@register("vat")
class VAT(Term):
    """Adversarial direction ``r_adv = ε · g/‖g‖``, ``g = ∇_r KL(p(x) ‖ p(x + r))|_{r = ξ d}``, and

    - ``variant="authors"`` (the SuperCM authors' code, after Oliver et al.):
      ``L = KL(p(x + r_adv) ‖ p(x))``, p(x) detached;
    - ``variant="textbook"`` (Miyato et al.): ``L = KL(p(x) ‖ p(x + r_adv))``.

    ``d`` starts as a random unit direction per unlabeled sample and is refined by
    ``power_iterations`` steps. p(x) is the training pass's prediction, detached.

    Every perturbed pass runs on the whole joined batch ``[labeled; unlabeled]`` (the
    labeled rows unperturbed) with BatchNorm running-statistic updates frozen, as the
    authors do. BatchNorm then normalises the probe with the statistics of the batch
    that produced p(x), so ``KL(p ‖ p(x + r))`` is exactly 0 at r = 0 and its gradient at
    ``ξ d`` is ``ξ H d`` (one power-iteration step on the Hessian H). Probing the
    unlabeled half alone, as this module once did, normalises it with other statistics:
    the mismatch dominates the gradient at small ξ and the "adversarial" direction is
    noise (cosine −0.37…+0.08 with the true one; ``tests/test_methods.py`` checks the
    direction through the trainer's own step).

    ξ defaults to 1e-3, not the 1e-6 of Miyato et al. / Oliver et al. / the SuperCM
    paper: in float32 a 1e-6 probe moves the probabilities less than the forward pass's
    own rounding, and the power iteration returns noise (median cosine 0.02 with the
    float64 direction on the CPU-scale CNN; 0.998 at ξ = 1e-3).

    Under autocast (``train.precision`` bf16/fp16) the probe runs in float32: ξ = 1e-3 is below
    bfloat16's resolution (2⁻⁸ relative), so a bfloat16 probe would measure rounding. Its p(x)
    then comes from a float32 pass over the same batch (no gradient), not from the half-precision
    training pass: a p that differs from the probe's own prediction at r = 0 by rounding gives
    ``KL ≠ 0`` there and, again, a gradient dominated by the mismatch. The final adversarial pass
    and the loss run under autocast like the rest of the step.

    Unlike the authors' model, whose forward re-augments its input on every call, the
    probe passes see exactly the augmented batch of the training pass: re-augmenting
    would make the probe measure the augmentation, not the curvature.
    """

    @dataclass
    class Options:
        xi: float = field(default=1e-3, metadata={"range": "(0, inf)"})
        epsilon: float = field(default=6.0, metadata={"range": "(0, inf)"})
        power_iterations: int = field(default=1, metadata={"range": "[1, inf)"})
        variant: str = field(default="authors", metadata={"choices": VARIANTS})


    #: The last adversarial direction (joined batch, labeled rows zero), for diagnostics and tests.
    last_direction: Tensor | None = None

    def loss(self, batch: Batch) -> Tensor:
        opts = self.options
        n = batch.num_labeled
        x = batch.x.detach()
        p = batch.logits_unlabeled.detach().softmax(dim=1)
        model = batch.model
        autocast = _autocast_enabled(x.device.type)
        probe_precision = torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext()
        with frozen_batchnorm_stats(model), probe_precision:
            if autocast:
                with torch.no_grad():
                    p = model(x).logits[n:].float().softmax(dim=1)
            d = torch.zeros_like(x)
            d[n:] = unit_rows(batch.randn("unlabeled"))
            for _ in range(opts.power_iterations):
                r = (opts.xi * d).requires_grad_(True)
                dist = kl(p, model(x + r).logits[n:])
                (grad,) = torch.autograd.grad(dist, r)
                d = torch.zeros_like(x)
                d[n:] = unit_rows(grad[n:])
            self.last_direction = d
        with frozen_batchnorm_stats(model):
            logits_adv = model(x + opts.epsilon * d).logits[n:]
        if opts.variant == "authors":
            return kl_logits(logits_adv, batch.logits_unlabeled.detach())
        return kl(p, logits_adv)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # PyTorch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
