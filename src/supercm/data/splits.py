"""Seeded, stratified labeled / unlabeled / validation splits of a training set.

Oliver et al. (2018): the validation set is held out of the training set and is
labeled; the labeled set is class-balanced; the unlabeled set is the rest of the
training set (labeled samples excluded). Splits are saved with a checksum so a
resumed run reuses them and never redraws.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..fileio import atomic_write


@dataclass(frozen=True)
class SSLSplit:
    labeled: Tensor
    unlabeled: Tensor
    validation: Tensor

    def checksum(self) -> str:
        h = hashlib.sha256()
        for part in (self.labeled, self.unlabeled, self.validation):
            h.update(part.to(torch.int64).numpy().tobytes())
            h.update(b"|")
        return h.hexdigest()

    def save(self, path: str | Path) -> None:
        data = {k: getattr(self, k).tolist() for k in ("labeled", "unlabeled", "validation")}
        data["sha256"] = self.checksum()
        atomic_write(Path(path), json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> "SSLSplit":
        # Deleting split.json alone is safe: the split is a function of the config's seed and sizes,
        # it is redrawn identically, and a checkpoint refuses any other split.
        fix = f"delete {path} alone to redraw it from the config's seed (keep the rest of the run directory)"
        try:
            data = json.loads(Path(path).read_text())
            split = cls(*(torch.tensor(data[k], dtype=torch.long) for k in ("labeled", "unlabeled", "validation")))
        except (ValueError, KeyError, TypeError, RuntimeError, UnicodeDecodeError) as exc:
            raise ValueError(f"split file {path} is corrupt ({type(exc).__name__}); {fix}") from None
        if split.checksum() != data.get("sha256"):
            raise ValueError(f"split file {path} is corrupt (checksum mismatch); {fix}")
        return split


def _per_class_count(total: int, num_classes: int, name: str) -> int:
    if total % num_classes:
        raise ValueError(f"{name}={total} is not divisible by the {num_classes} classes; a balanced split needs a multiple")
    return total // num_classes


def stratified_split(
    labels: Tensor, num_labeled: int, num_validation: int, num_classes: int, seed: int
) -> SSLSplit:
    """Draw a class-balanced labeled set and a class-balanced validation set from ``labels``.

    ``num_labeled`` and ``num_validation`` are totals, each a multiple of ``num_classes``.
    The unlabeled set is everything else. Deterministic in ``seed``.
    """
    labels = labels.cpu().long()
    per_lab = _per_class_count(num_labeled, num_classes, "num_labeled")
    per_val = _per_class_count(num_validation, num_classes, "num_validation")
    if per_lab < 1:
        raise ValueError("num_labeled must give at least one labeled sample per class")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(labels.numel(), generator=g)
    # Stable sort of the shuffled labels groups indices by class in random order.
    order = perm[torch.argsort(labels[perm], stable=True)]
    counts = torch.bincount(labels, minlength=num_classes)
    short = [(c, int(n)) for c, n in enumerate(counts.tolist()) if n < per_lab + per_val]
    if short:
        raise ValueError(
            f"classes {short} have fewer than {per_lab} labeled + {per_val} validation samples; "
            f"lower num_labeled or num_validation"
        )
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(labels.numel()) - starts[labels[order]]
    val_mask = rank < per_val
    lab_mask = (rank >= per_val) & (rank < per_val + per_lab)
    validation, labeled = order[val_mask], order[lab_mask]
    unlabeled = order[~(val_mask | lab_mask)]
    return SSLSplit(labeled.sort().values, unlabeled.sort().values, validation.sort().values)


def uda_split(source_labels: Tensor, num_target: int, num_validation: int, num_classes: int, seed: int) -> SSLSplit:
    """The split of a domain-adaptation run over ``[source train ; target train]``.

    A class-balanced validation set of ``num_validation`` source samples is held out (the
    source-validation selection rule uses it); every other source sample is labeled; the
    ``num_target`` target samples (indices after the source's) are the unlabeled set, whose
    labels are never read. Deterministic in ``seed``.
    """
    k = num_classes
    part = stratified_split(source_labels, k, num_validation, k, seed)  # one labeled per class, the rest unlabeled
    labeled = torch.sort(torch.cat([part.labeled, part.unlabeled])).values
    target = torch.arange(source_labels.numel(), source_labels.numel() + num_target)
    return SSLSplit(labeled, target, part.validation)
