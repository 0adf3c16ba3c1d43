"""The offline UDA pairs (:data:`DOMAIN_PAIRS`) and the trainer's view of a pair: one training set.

:func:`load_domain_pair` returns a :class:`~supercm.data.base.DomainPair` (source and target
:class:`~supercm.data.base.ArrayDataset`; the target's training labels are there for evaluation only)
for the names in :data:`DOMAIN_PAIRS`; :func:`joined_training_set` joins a pair into
``[source train ; target train]`` with the target's labels hidden.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import torch

from .base import UNLABELED, ArrayDataset, DomainPair, resolve_root
from .domains import load_mnistm_style, load_optdigits, load_synth_digits, mnist10k_arrays, mnist_halves
from .mnistm_pool import load_mnistm_pool
from .offline import arrays_dataset, load_mnist10k
from .stream import cat_rows


def load_mnist10k_source_half(root: str | os.PathLike | None = None) -> ArrayDataset:
    """mnist10k restricted to the training half that ``mnistm_style`` and ``mnistm_pool`` do *not* blend
    (4,002), test = mnist10k's."""
    images, labels = mnist10k_arrays(resolve_root(root))
    halves = mnist_halves(labels)
    source_index, test = halves["source"], halves["test"]
    return arrays_dataset(
        "mnist10k_source_half",
        {
            "train_images": images[source_index],
            "train_labels": labels[source_index],
            "test_images": images[test],
            "test_labels": labels[test],
        },
    )


def _mnist10k(root) -> ArrayDataset:
    return load_mnist10k(root)


#: UDA pairs by name ``"SOURCE->TARGET"``: (source loader, target loader), each ``loader(root)``.
#: In ``mnist10k->mnistm_style`` and ``mnist10k->mnistm_pool`` the source is the half of mnist10k's
#: training digits that the target does not blend, so no digit image is on both sides.
DOMAIN_PAIRS: dict[str, tuple[Callable[..., ArrayDataset], Callable[..., ArrayDataset]]] = {
    "mnist10k->mnistm_style": (load_mnist10k_source_half, load_mnistm_style),
    "mnist10k->mnistm_pool": (load_mnist10k_source_half, load_mnistm_pool),
    "mnist10k->optdigits": (_mnist10k, load_optdigits),
    "optdigits->mnist10k": (load_optdigits, _mnist10k),
    "synth_digits->mnist10k": (load_synth_digits, _mnist10k),
}


def load_domain_pair(source: str, target: str | None = None, root: str | os.PathLike | None = None) -> DomainPair:
    """Load the UDA pair ``source->target`` (a key of :data:`DOMAIN_PAIRS`; ``source`` may be the whole key).

    Raises :class:`~supercm.data.DatasetMissingError` naming ``supercm fetch-data NAME --root ROOT``
    when a dataset is missing.
    """
    name = source if target is None else f"{source}->{target}"
    if not re.fullmatch(r"[\w]+->[\w]+", name) or name not in DOMAIN_PAIRS:
        raise ValueError(f"unknown domain pair {name!r}; choose one of {', '.join(DOMAIN_PAIRS)}")
    load_source, load_target = DOMAIN_PAIRS[name]
    return DomainPair(name, load_source(root), load_target(root))


def joined_training_set(pair: DomainPair) -> ArrayDataset:
    """``[source train ; target train]`` as one training set, the target test set as its test set.

    The target's training labels are replaced by :data:`UNLABELED`: they never reach the
    trainer, so no loss, selection rule or log can read them.
    """
    s, t = pair.source, pair.target
    if s.input_shape != t.input_shape:
        raise ValueError(
            f"domain pair {pair.name!r}: source samples have shape {s.input_shape} but target samples "
            f"{t.input_shape}; both domains must be brought to one input shape"
        )
    if s.num_classes != t.num_classes:
        raise ValueError(f"domain pair {pair.name!r}: source has {s.num_classes} classes, target {t.num_classes}")
    if s.classes is not None and t.classes is not None and list(s.classes) != list(t.classes):
        raise ValueError(f"domain pair {pair.name!r}: source and target name their classes differently "
                         f"({s.classes[:3]}… vs {t.classes[:3]}…)")
    if s.input_transform != t.input_transform:
        raise ValueError(f"domain pair {pair.name!r}: source and target need different input transforms")
    hidden = torch.full_like(t.train_y, UNLABELED)
    return ArrayDataset(
        pair.name, cat_rows([s.train_x, t.train_x]), torch.cat([s.train_y, hidden]), t.test_x, t.test_y,
        s.num_classes, dict(s.augment), dict(s.input_transform), s.classes,
    )
