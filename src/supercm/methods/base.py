"""What a base method sees each step, and the registry of methods by name.

A base method adds one unlabeled loss, ``L_base``, to the objective
``CE + β·L_CM + δ·w(t)·L_base``. It knows nothing of SuperCM; the trainer knows
nothing of the method beyond this interface.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

from torch import Tensor, nn


@dataclass
class StepInputs:
    """One training step, as a base method sees it.

    ``x`` is the joined, augmented batch ``[labeled; unlabeled]`` that went through
    the training forward pass and produced ``logits`` (with gradient); its first
    ``num_labeled`` rows are labeled. ``x_raw`` is the same batch before
    augmentation, and ``augment`` draws a fresh augmentation of a raw batch (for
    methods that need a second stochastic view). A method that makes extra passes
    over the model should pass the *joined* batch, so BatchNorm normalises them with
    the statistics of the batch that produced ``logits`` (see ``vat.py``).
    """

    model: nn.Module
    x: Tensor
    num_labeled: int
    y_labeled: Tensor
    x_raw: Tensor
    logits: Tensor
    augment: Callable[[Tensor], Tensor]
    iteration: int

    @property
    def x_labeled(self) -> Tensor:
        return self.x[: self.num_labeled]

    @property
    def x_unlabeled(self) -> Tensor:
        return self.x[self.num_labeled :]

    @property
    def x_unlabeled_raw(self) -> Tensor:
        return self.x_raw[self.num_labeled :]

    @property
    def logits_unlabeled(self) -> Tensor:
        return self.logits[self.num_labeled :]


class SSLMethod(nn.Module):
    """Base class of a base method. Subclasses set ``Options`` (a dataclass of hyperparameters)."""

    name: ClassVar[str] = ""

    @dataclass
    class Options:
        pass

    def __init__(self, **options) -> None:
        super().__init__()
        fields = {f.name for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(options) - fields)
        if unknown:
            allowed = ", ".join(sorted(fields)) or "none"
            raise ValueError(f"unknown option {unknown[0]!r} for method {self.name!r} (method.options.*); allowed: {allowed}")
        self.options = self.Options(**options)

    def setup(self, model: nn.Module) -> None:
        """Called once with the student model before training (e.g. to build a teacher)."""

    def unlabeled_loss(self, step: StepInputs) -> Tensor | None:
        """L_base for this step, or None when the method adds nothing."""
        return None

    def after_step(self, model: nn.Module) -> None:
        """Called after each optimizer step (e.g. to update a teacher)."""


METHODS: dict[str, type[SSLMethod]] = {}


def register(name: str) -> Callable[[type[SSLMethod]], type[SSLMethod]]:
    def deco(cls: type[SSLMethod]) -> type[SSLMethod]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def build_method(name: str, options: dict | None = None) -> SSLMethod:
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}") from None
    return cls(**(options or {}))


@contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Extra forward passes in train mode that do not touch BatchNorm running statistics."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True
