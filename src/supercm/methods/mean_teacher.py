"""Mean Teacher (Tarvainen & Valpola, 2017)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Batch, Term, register


@register("mean_teacher")
class MeanTeacher(Term):
    """``L = mean_ik (softmax(student(a(x)))_ik − softmax(teacher(a'(x)))_ik)²``.

    The teacher is an exponential moving average of the student's weights,
    ``θ' ← decay·θ' + (1 − decay)·θ`` after every optimizer step (buffers are
    copied). It gets no gradient; the gradient of L flows into the student.
    """

    @dataclass
    class Options:
        decay: float = field(default=0.95, metadata={"range": "[0, 1)"})

    def setup(self, model: nn.Module) -> None:
        self.teacher = copy.deepcopy(model)
        self.teacher.requires_grad_(False)

    def loss(self, batch: Batch) -> Tensor:
        self.teacher.train(batch.model.training)
        with torch.no_grad():
            target = self.teacher(batch.augmented("unlabeled")).logits.softmax(dim=1)
        return F.mse_loss(batch.logits_unlabeled.softmax(dim=1), target)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        d = self.options.decay
        torch._foreach_lerp_(list(self.teacher.parameters()), [s.detach() for s in model.parameters()], 1.0 - d)
        for t, s in zip(self.teacher.buffers(), model.buffers()):
            t.copy_(s)
