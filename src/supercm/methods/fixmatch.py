"""FixMatch (Sohn et al., 2020): a confident weak view's hard label trains the strong view."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..data.randaugment import RandAugment
from ..losses import confident_labels, masked_cross_entropy
from .base import Batch, Term, frozen_batchnorm_stats, register


@dataclass
class StrongViewOptions:
    """The strong view's options, shared by FixMatch and FreeMatch: RandAugment's ``num_ops`` operations
    and Cutout's probability ``cutout``; ``pixel_min``/``pixel_max`` the range of float images."""

    num_ops: int = field(default=2, metadata={"range": "[0, inf)"})
    cutout: float = field(default=0.5, metadata={"range": "[0, 1]"})
    pixel_min: float = -1.0
    pixel_max: float = 1.0

    def validate(self) -> None:
        if not self.pixel_max > self.pixel_min:
            raise ValueError(f"pixel_max ({self.pixel_max}) must be > pixel_min ({self.pixel_min})")


@register("fixmatch")
class FixMatch(Term):
    """``L_u = (1/μB) Σ_i 1[max p_i ≥ τ] · CE(f(A(u_i)), argmax p_i)``, ``p_i = softmax(f(α(u_i)))``.

    ``α`` is the weak view: the unlabeled rows of the training pass (the dataset's augmentation,
    e.g. crop for digits, flip + crop for CIFAR), whose prediction is detached. ``A`` is the strong
    view: a fresh weak augmentation of the raw unlabeled rows, then :class:`RandAugment`
    (``num_ops`` operations of FixMatch's list at random magnitudes) and Cutout, drawn from the
    trainer's generator (exact under resume and the same under torchrun). The strong pass is a second
    call of the model on the strong views alone, with gradient, BatchNorm running statistics left
    alone (USB concatenates labeled, weak and strong views into one pass instead: here BatchNorm
    normalises the strong views by their own batch statistics, and the running statistics are the
    labeled and weak views' ones, those of the images the model is evaluated on).

    The unlabeled batch is μ × the labeled one (``train.batch_unlabeled``; μ = 7 in the paper) and
    λ_u is ``method.delta`` (1 in the paper, no ramp-up).

    :meth:`pseudo_labels` gives ``(argmax p_i, 1[max p_i ≥ τ])``: with SuperCM's
    ``cm.centroid_source=labeled+pseudo`` the confident unlabeled features join the centroid update
    with weight 1, the weight their loss has here.

    ``pixel_min``/``pixel_max``: the range of float images (the digit sets are scaled to [−1, 1]);
    uint8 images need none. Images only: vectors have no strong augmentation.
    """

    @dataclass
    class Options(StrongViewOptions):
        threshold: float = field(default=0.95, metadata={"range": "[0, 1]"})

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.randaugment = RandAugment(self.options.num_ops, self.options.cutout)
        self._labels_of: tuple[weakref.ref, tuple[Tensor, Tensor]] | None = None

    def thresholds(self, batch: Batch, probs: Tensor) -> Tensor | float:
        """The confidence each unlabeled row must reach (FixMatch: the fixed τ)."""
        return self.options.threshold

    def pseudo_labels(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(hard labels, mask) of the unlabeled rows from the weak view, computed once per batch."""
        if self._labels_of is not None and self._labels_of[0]() is batch:
            return self._labels_of[1]
        logits = batch.logits_unlabeled.detach().float()
        labels = confident_labels(logits, self.thresholds(batch, logits.softmax(dim=1)))
        self._labels_of = (weakref.ref(batch), labels)
        return labels

    def strong_view(self, batch: Batch) -> Tensor:
        """RandAugment + Cutout of a fresh weak augmentation of the raw unlabeled rows."""
        raw = batch.x_unlabeled_raw
        if raw.dim() != 4:
            raise ValueError(f"{self.name} needs images (N, C, H, W) for its strong augmentation, got shape "
                             f"{tuple(raw.shape)}")
        weak = batch.augmented("unlabeled")
        value_range = (0.0, 1.0) if raw.dtype == torch.uint8 else (self.options.pixel_min, self.options.pixel_max)
        strong = batch.drawn(self.randaugment, weak, "unlabeled", value_range=value_range)
        return strong.to(batch.x.dtype).contiguous(memory_format=_memory_format(batch.x))

    def strong_logits(self, batch: Batch) -> Tensor:
        with frozen_batchnorm_stats(batch.model):
            return batch.model(self.strong_view(batch)).logits

    def loss(self, batch: Batch) -> Tensor:
        labels, mask = self.pseudo_labels(batch)
        return masked_cross_entropy(self.strong_logits(batch), labels, mask)

    @torch.no_grad()
    def log_terms(self, batch: Batch) -> dict[str, Tensor]:
        _, mask = self.pseudo_labels(batch)
        return {"mask_rate": mask.mean()}


def _memory_format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
