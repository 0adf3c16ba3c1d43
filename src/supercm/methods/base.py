"""What a loss term sees each step, the base class of every term, and the registry of terms.

The trainer minimises ``CE(labeled) + Σ_j weight_j(t) · L_j`` over a list of terms: the base
method (weight ``δ·w(t)``: Pseudo-Label, VAT, Π-Model, Mean Teacher, DANN, MCC, BNM...) and
the regularisers stacked on it (SuperCM with weight β, or any term listed under
``regularisers``). A term is one small file with a ``loss(batch)`` hook and optional
``setup`` / ``before_forward`` / ``after_step`` hooks; it may own trainable modules (DANN's
discriminator), which the trainer optimises. The trainer knows no term by name.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import Tensor, nn

from ..options import ConfigError, check_options, dataclass_specs
from ..registry import Registry


def _local(t: Tensor) -> Tensor:
    return t


@dataclass
class Batch:
    """One training step, as every loss term sees it.

    ``x`` is the joined, augmented batch ``[labeled | source ; unlabeled | target]``; its first
    ``num_labeled`` rows are labeled. The model is called **once** on it; ``output`` holds that
    call's features, logits, responsibilities and reconstruction, with gradient (``None`` in
    :meth:`Term.before_forward`). ``x_raw`` is the same batch before augmentation and
    ``augment`` draws a fresh augmentation of a raw batch, for terms that need another view.
    A term that makes extra passes over the model should pass the *joined* batch, so BatchNorm
    normalises them with the statistics of the batch that produced ``output`` (see ``vat.py``).
    ``iteration`` counts finished steps (0 at the first), of ``total_iterations``.

    Data-parallel runs (``torchrun``) give each process a share of the batch. A loss that is a
    mean over samples needs nothing more; a loss that is a function of the *whole* batch (MCC's
    class confusion, BNM's nuclear norm) computes it on ``gather(t)``, this step's rows of ``t``
    from every process (with gradient), so it equals the one-process loss. In one process
    ``gather`` returns ``t``.

    Randomness a term draws for the batch goes through :meth:`augmented` (a fresh view of raw
    rows) and :meth:`randn` (noise like some rows of ``x``): in a data-parallel run they draw for
    the *global* batch and return this process's rows (``labeled_rows`` / ``unlabeled_rows`` of
    ``global_sizes``), so every random number equals a one-process run's and the processes' random
    streams stay together. ``augment(t)`` augments any tensor as it is (no such guarantee).
    :meth:`drawn` does the same for an augmentation a term owns (FixMatch's RandAugment), drawing
    from ``generator``, the trainer's augmentation generator (checkpointed with it).

    ``pseudo_labels``: ``(labels, weights)`` of the unlabeled rows from the first term (in the order
    the terms are summed) whose :meth:`Term.pseudo_labels` gives some this step; ``None`` if none
    does. SuperCM's ``centroid_source="labeled+pseudo"`` folds them into its centroids.
    """

    model: nn.Module
    x: Tensor
    x_raw: Tensor
    num_labeled: int
    y_labeled: Tensor
    augment: Callable[[Tensor], Tensor]
    iteration: int = 0
    total_iterations: int = 1
    output: Any = None  # supercm.models.ModelOutput once the model has been called
    gather: Callable[[Tensor], Tensor] = _local  # the batch's rows of a tensor from every process
    # Data-parallel: this process's rows of the global labeled / unlabeled batch, and their sizes.
    labeled_rows: slice | None = None
    unlabeled_rows: slice | None = None
    global_sizes: tuple[int, int] | None = None
    generator: torch.Generator | None = None  # the trainer's augmentation generator
    pseudo_labels: tuple[Tensor, Tensor] | None = None
    domain_adaptation: bool = False  # the labeled rows are a source domain, the unlabeled rows a target

    def keep_labeled_only(self) -> None:
        """Drop the unlabeled rows from ``x`` and ``x_raw`` before the model call (a term's
        :meth:`Term.model_sees_unlabeled` asked for it): the model, its BatchNorm statistics
        included, then sees the labeled (source) rows alone; ``features_unlabeled`` is empty."""
        self.x, self.x_raw = self.x[: self.num_labeled], self.x_raw[: self.num_labeled]

    def _global_rows(self, which: str) -> tuple[Tensor | slice | None, int | None]:
        """(this process's rows ``which`` in the global batch, the global count); (None, None) in one process."""
        if which not in ("all", "labeled", "unlabeled"):
            raise ValueError(f"which must be 'all', 'labeled' or 'unlabeled', got {which!r}")
        if self.global_sizes is None:
            return None, None
        n_l, n_u = self.global_sizes
        if which == "labeled":
            return self.labeled_rows, n_l
        if which == "unlabeled":
            return self.unlabeled_rows, n_u
        rows = torch.cat([torch.arange(n_l)[self.labeled_rows], n_l + torch.arange(n_u)[self.unlabeled_rows]])
        return rows.to(self.x.device), n_l + n_u

    def augmented(self, which: str = "all") -> Tensor:
        """A fresh augmentation of the raw rows ``which`` (``"all"``, ``"labeled"``, ``"unlabeled"``):
        another view of the batch, for the terms that compare two (Π-Model, Mean Teacher)."""
        rows, of = self._global_rows(which)
        raw = {"all": self.x_raw, "labeled": self.x_labeled_raw, "unlabeled": self.x_unlabeled_raw}[which]
        return self.augment(raw) if rows is None else self.augment(raw, rows, of)

    def drawn(self, aug: Callable[..., Tensor], x: Tensor, which: str = "unlabeled", **kwargs) -> Tensor:
        """``aug(x, generator, **kwargs)`` for ``x`` holding the rows ``which`` of the batch, drawn from
        :attr:`generator`; in a data-parallel run ``aug(x, generator, rows, of, **kwargs)``, drawn for
        the global batch (``aug`` follows :class:`~supercm.data.augment.Augment`'s ``rows``/``of``)."""
        if self.generator is None:
            raise ValueError("Batch.generator is None: this term draws its own augmentation from the trainer's generator")
        rows, of = self._global_rows(which)
        return aug(x, self.generator, **kwargs) if rows is None else aug(x, self.generator, rows, of, **kwargs)

    def randn(self, which: str = "all") -> Tensor:
        """N(0, 1) noise shaped like the rows ``which`` of ``x``, from torch's default generator."""
        rows, of = self._global_rows(which)
        x = {"all": self.x, "labeled": self.x_labeled, "unlabeled": self.x_unlabeled}[which]
        if rows is None:
            return torch.randn(x.shape, dtype=x.dtype, device=x.device)
        return torch.randn((of, *x.shape[1:]), dtype=x.dtype, device=x.device)[rows]

    @property
    def progress(self) -> float:
        """t/T in [0, 1]."""
        return min(self.iteration / max(self.total_iterations, 1), 1.0)

    @property
    def features(self) -> Tensor:
        return self.output.features

    @property
    def logits(self) -> Tensor:
        return self.output.logits

    @property
    def x_labeled(self) -> Tensor:
        return self.x[: self.num_labeled]

    @property
    def x_unlabeled(self) -> Tensor:
        return self.x[self.num_labeled :]

    @property
    def x_labeled_raw(self) -> Tensor:
        return self.x_raw[: self.num_labeled]

    @property
    def x_unlabeled_raw(self) -> Tensor:
        return self.x_raw[self.num_labeled :]

    @property
    def features_labeled(self) -> Tensor:
        return self.output.features[: self.num_labeled]

    @property
    def features_unlabeled(self) -> Tensor:
        return self.output.features[self.num_labeled :]

    @property
    def logits_labeled(self) -> Tensor:
        return self.output.logits[: self.num_labeled]

    @property
    def logits_unlabeled(self) -> Tensor:
        return self.output.logits[self.num_labeled :]


class Term(nn.Module):
    """Base class of a loss term. Subclasses set ``Options`` (a dataclass of hyperparameters).

    ``needs_unlabeled``: the term is skipped on a step whose unlabeled batch is empty.

    Options are checked from the dataclass alone, so a new option is checked without more code:
    its name, its type (from the annotation; ints are accepted for floats, floats must be
    finite), and, when the field says so, its range and choices, e.g.
    ``threshold: float = field(default=0.95, metadata={"range": "[0, 1]"})`` or
    ``variant: str = field(default="a", metadata={"choices": ("a", "b")})``. An ``Options``
    may add a ``validate(self)`` method for checks across fields (raise ``ValueError``).
    """

    name: ClassVar[str] = ""
    needs_unlabeled: ClassVar[bool] = True

    @dataclass
    class Options:
        pass

    def __init__(self, **options) -> None:
        super().__init__()
        self.options = self.check_options(options)

    @classmethod
    def check_options(cls, options: dict | None) -> "Term.Options":
        """``Options`` built from ``options``; a :class:`~supercm.options.ConfigError` (a ValueError)
        naming ``method.options.<name>`` when a name, type or range is wrong."""
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
        """Called once with the model before training (e.g. to build a teacher)."""

    def before_forward(self, batch: Batch) -> None:
        """Called each step before the training pass (``batch.output`` is None)."""

    def model_sees_unlabeled(self, batch: Batch, terms: list["Term"]) -> bool:
        """Whether this step's model call takes the unlabeled rows too (``terms``: every term of the
        step, this one included). One False and the model sees the labeled rows alone."""
        return True

    def loss(self, batch: Batch) -> Tensor | None:
        """This term's loss for the step, or None when it adds nothing."""
        return None

    def pseudo_labels(self, batch: Batch) -> tuple[Tensor, Tensor] | None:
        """``(labels (n_u,), weights (n_u,))``: the class each unlabeled row is trained toward and the
        weight its loss gives it (0 for rows below the threshold), or None for terms that do not
        pseudo-label. The objective calls it once per step, after the model call and before any
        loss; a term whose labels update state (FreeMatch's thresholds) must do so once per batch."""
        return None

    def log_terms(self, batch: Batch) -> dict[str, Tensor]:
        """Extra scalars for the metrics file, asked for on logged steps only (no gradient)."""
        return {}

    def after_step(self, model: nn.Module) -> None:
        """Called after each optimizer step (e.g. to update a teacher)."""


METHODS: Registry[type[Term]] = Registry("method", "method.name")


def register(name: str) -> Callable[[type[Term]], type[Term]]:
    def deco(cls: type[Term]) -> type[Term]:
        METHODS.register(name, cls)
        cls.name = name
        return cls

    return deco


def check_terms(cfg: Any) -> None:
    """The terms of a :class:`~supercm.config.Config` against the registry: ``method.name`` and each
    ``regularisers[i].name`` a registered term, and their options the term's ``Options``.

    The config layer sits below the terms and checks everything else (including that ``method.name``
    is not ``'supercm'``); the trainer calls this before it writes anything. Raises :class:`ConfigError`.
    """
    known = ", ".join(sorted(METHODS))
    if cfg.method.name not in METHODS:
        raise ConfigError(f"config key 'method.name' must be one of {known}, got {cfg.method.name!r}")
    for i, reg in enumerate(cfg.regularisers):
        if reg.name not in METHODS:
            raise ConfigError(f"config key 'regularisers[{i}].name' must be one of {known}, got {reg.name!r}")
    METHODS[cfg.method.name].check_options(cfg.method.options)
    for reg in cfg.regularisers:
        METHODS[reg.name].check_options(reg.options)
    labelers = [n for n in (cfg.method.name, *(r.name for r in cfg.regularisers))
                if METHODS[n].pseudo_labels is not Term.pseudo_labels]
    if cfg.cm.centroid_source != "labeled" and not labelers:
        able = ", ".join(sorted(n for n in METHODS if METHODS[n].pseudo_labels is not Term.pseudo_labels))
        raise ConfigError(f"config key 'cm.centroid_source' 'labeled+pseudo' needs a base method or regulariser that "
                          f"pseudo-labels ({able}), got method.name={cfg.method.name!r}")


def build_method(name: str, options: dict | None = None) -> Term:
    return METHODS.get(name)(**(options or {}))


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
