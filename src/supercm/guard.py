"""The divergence guard: a run whose loss or state stops being finite is stopped, and says what is left.

The steady-state step never waits for the device: :meth:`DivergenceGuard.watch` remembers, on the
device, the first iteration whose loss was not finite, and :meth:`check_history` reads it (one
host-device sync) on logged, evaluation and checkpoint iterations, before anything is written.
:meth:`check_state` looks at the tensors it is handed (weights, BatchNorm statistics, the terms'
and the EMA model's state): the loss can stay finite while BatchNorm running statistics overflow.
:meth:`agree` makes every data-parallel rank stop when any rank diverged. Every error is a
``FloatingPointError`` whose message names the iteration, the fix, and what is left on disk
(``usable()``, e.g. the last checkpoint, which is never overwritten by a diverged state).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import Tensor

from .rundir import all_finite

FIX = "lower optim.lr or cm.beta"


class DivergenceGuard:
    """Watches the losses of one run on ``device``; ``usable()`` says what is left after a divergence."""

    def __init__(self, device: torch.device, usable: Callable[[], str]):
        self.usable = usable
        # The first iteration whose loss was not finite (0: none) and that loss, kept on the device.
        self.first_nonfinite = torch.zeros((), dtype=torch.long, device=device)
        self.nonfinite_loss = torch.zeros((), device=device)

    def check_loss(self, loss: Tensor, iteration: int) -> None:
        """Stop now on a non-finite loss (one host-device sync)."""
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"loss became {loss.item()} at iteration {iteration}; {FIX}; {self.usable()}")

    def watch(self, loss: Tensor, iteration: int) -> None:
        """Remember, on the device, whether the loss of step ``iteration`` (0-based) was not finite."""
        loss = loss.detach()
        new = ~torch.isfinite(loss) & (self.first_nonfinite == 0)
        self.first_nonfinite = torch.where(new, iteration + 1, self.first_nonfinite)
        self.nonfinite_loss = torch.where(new, loss.to(self.nonfinite_loss.dtype), self.nonfinite_loss)

    def check_history(self, iteration: int, scale_collapsed: float | None = None) -> None:
        """Stop if a loss since the start was not finite, or if fp16's gradient scale collapsed
        (``scale_collapsed``: the scale, when every recent step overflowed and was skipped). One sync."""
        first = int(self.first_nonfinite)
        if first:
            value = float(self.nonfinite_loss)  # finite (0) on a data-parallel rank whose own loss stayed finite
            raise FloatingPointError(
                f"loss became {value if not math.isfinite(value) else 'NaN or inf'} at iteration {first} (found at iteration "
                f"{iteration}: fit() reads the loss on logged, evaluation and checkpoint iterations, so "
                f"iterations {first}..{iteration} were not kept); {FIX}; {self.usable()}"
            )
        if scale_collapsed is not None:
            raise FloatingPointError(
                f"the fp16 gradient scale fell to {scale_collapsed:.3g} by iteration {iteration}: "
                f"every recent step overflowed (NaN or inf gradients) and was skipped, so the run diverged; "
                f"{FIX}, or use train.precision=bf16; {self.usable()}"
            )

    def check_state(self, model_state: dict[str, Tensor], others: Iterable[Tensor], iteration: int) -> None:
        """Stop if the model's state (named) or any other state tensor holds NaN or inf."""
        others = list(others)
        if all_finite([*model_state.values(), *others]):
            return
        bad = next((n for n, t in model_state.items() if t.is_floating_point() and not torch.isfinite(t).all()),
                   "the method's or EMA model's state")
        raise FloatingPointError(
            f"the model diverged by iteration {iteration}: {bad} holds NaN or inf (the loss can stay finite "
            f"while BatchNorm statistics overflow); {FIX}; {self.usable()}"
        )

    def agree(self, state: Iterable[Tensor], iteration: int, scale_collapsed: float | None = None) -> None:
        """Data-parallel (a collective): adopt the earliest non-finite iteration of any rank, and stop
        every rank if any rank's loss or state was not finite."""
        first = torch.where(self.first_nonfinite > 0, self.first_nonfinite, torch.iinfo(torch.long).max)
        finite = torch.tensor([1.0 if all_finite(list(state)) else 0.0], device=self.first_nonfinite.device)
        flags = torch.stack([first.double(), -finite[0].double()])
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
        if flags[0] < torch.iinfo(torch.long).max:
            self.first_nonfinite = flags[0].long()
        if flags[1] > -1:  # some rank holds NaN/inf: every rank raises, the checkpoint stays
            self.check_history(iteration, scale_collapsed)
            raise FloatingPointError(
                f"the model diverged by iteration {iteration} on at least one rank (NaN or inf in its "
                f"weights or BatchNorm statistics); {FIX}; {self.usable()}"
            )
        self.check_history(iteration, scale_collapsed)
