"""What a base method sees each step, and the registry of methods by name.

A base method adds one unlabeled loss, ``L_base``, to the objective
``CE + β·L_CM + δ·w(t)·L_base``. It knows nothing of SuperCM; the trainer knows
nothing of the method beyond this interface.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

from torch import Tensor, nn


@dataclass
class StepInputs:
    """One training step, as a base method sees it.

    ``x_unlabeled`` is the augmented unlabeled batch that went through the
    training forward pass and produced ``logits_unlabeled`` (with gradient);
    ``augment`` draws a fresh augmentation of a raw batch (for methods that need
    a second stochastic view of ``x_unlabeled_raw``).
    """

    model: nn.Module
    x_labeled: Tensor
    y_labeled: Tensor
    x_unlabeled_raw: Tensor
    x_unlabeled: Tensor
    logits_unlabeled: Tensor
    augment: Callable[[Tensor], Tensor]
    iteration: int


class SSLMethod(nn.Module):
    """Base class of a base method. Subclasses set ``Options`` (a dataclass of hyperparameters).

    Options are checked from the dataclass alone, so a new option is checked without more code:
    its name, its type (from the annotation; ints are accepted for floats, floats must be
    finite), and, when the field says so, its range and choices, e.g.
    ``threshold: float = field(default=0.95, metadata={"range": "[0, 1]"})`` or
    ``variant: str = field(default="a", metadata={"choices": ("a", "b")})``. An ``Options``
    may add a ``validate(self)`` method for checks across fields (raise ``ValueError``).
    """

    name: ClassVar[str] = ""

    @dataclass
    class Options:
        pass

    def __init__(self, **options) -> None:
        super().__init__()
        self.options = self.check_options(options)

    @classmethod
    def check_options(cls, options: dict | None) -> "SSLMethod.Options":
        """``Options`` built from ``options``; a :class:`~supercm.config.ConfigError` (a ValueError)
        naming ``method.options.<name>`` when a name, type or range is wrong."""
        from ..config import ConfigError, check_options, dataclass_specs

        owner = f"method {cls.name!r}"
        checked = check_options(options, dataclass_specs(cls.Options), "method.options", owner)
        opts = cls.Options(**checked)
        if hasattr(opts, "validate"):
            try:
                opts.validate()
            except ValueError as exc:
                raise ConfigError(f"method.options for {owner}: {exc}") from None
        return opts

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
