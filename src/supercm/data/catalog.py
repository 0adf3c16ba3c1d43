"""Datasets by name: :data:`DATASETS` (``data.name``), :func:`load_dataset`, and :func:`load_uda` for a pair.

The one place that knows every loader module: it imports them and registers their loaders in the
order below, so no module of :mod:`supercm.data` needs the package ``__init__`` (which re-exports
this module's names).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..registry import Registry
from .base import ArrayDataset, DomainPair
from .digits import load_digits
from .domains import load_mnistm_style, load_optdigits, load_synth_digits
from .images import IMAGE_DATASETS
from .mnistm_pool import load_mnistm_pool
from .offline import load_fashion_mnist, load_mnist10k
from .pairs import DOMAIN_PAIRS, load_domain_pair
from .torchvision_sets import load_cifar10, load_cifar100, load_mnist, load_svhn

DATASETS: Registry[Callable[..., ArrayDataset]] = Registry("dataset", "data.name")
for _name, _loader in {
    "digits": load_digits,
    "mnist": load_mnist,
    "svhn": load_svhn,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "mnist10k": load_mnist10k,
    "fashion_mnist": load_fashion_mnist,
    "mnistm_style": load_mnistm_style,
    "optdigits": load_optdigits,
    "synth_digits": load_synth_digits,
    "mnistm_pool": load_mnistm_pool,
    **IMAGE_DATASETS,  # Office-31, Office-Home, ImageCLEF-DA, Office-Caltech-10 domains; image_folder
}.items():
    DATASETS.register(_name, _loader)


def load_dataset(name: str, root: str | None = None, **kwargs) -> ArrayDataset:
    return DATASETS.get(name)(root, **kwargs)


def load_uda(source: str, target: str, root: str | os.PathLike | None = None, /, **options) -> DomainPair:
    """The pair ``source->target``: a :data:`DOMAIN_PAIRS` entry when there is one (it may hold
    the source out of the target's images), otherwise each dataset loaded by name with ``options``
    (``data.options``, shared by both domains). A loader with a ``load_pair`` attribute (``image_folder``)
    named as both source and target loads the pair itself from its options."""
    name = f"{source}->{target}"
    if name in DOMAIN_PAIRS:
        if options:
            raise ValueError(f"domain pair {name!r} takes no data.options, got {sorted(options)}")
        return load_domain_pair(name, root=root)
    load_source, load_target = DATASETS.get(source), DATASETS.get(target)
    pair_loader = getattr(load_source, "load_pair", None)
    if pair_loader is not None or getattr(load_target, "load_pair", None) is not None:
        if source != target:
            raise ValueError(f"{source!r} loads both domains from data.options: set data.name and data.target "
                             f"both to {source!r}" if pair_loader else
                             f"{target!r} loads both domains from data.options: set data.name and data.target "
                             f"both to {target!r}")
        return pair_loader(root, **options)
    return DomainPair(name, load_source(root, **options), load_target(root, **options))


__all__ = ["DATASETS", "load_dataset", "load_uda"]
