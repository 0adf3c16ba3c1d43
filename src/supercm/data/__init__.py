"""Datasets by name: ``load_dataset(name, root)`` returns an :class:`ArrayDataset`."""

from __future__ import annotations

from typing import Callable

from ..registry import Registry
from .base import UNLABELED, ArrayDataset, DatasetCorruptError, DatasetMissingError, DomainPair, default_data_root
from .digits import load_digits
from .domains import DOMAIN_PAIRS, joined_training_set, load_domain_pair, load_uda, load_mnistm_style, load_optdigits, load_synth_digits
from .images import IMAGE_DATASETS, BadImageError, DatasetLayoutError
from .offline import FETCHABLE, fetch, load_fashion_mnist, load_mnist10k
from .splits import SSLSplit, stratified_split, uda_split
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
    **IMAGE_DATASETS,  # Office-31, Office-Home, ImageCLEF-DA, Office-Caltech-10 domains; image_folder
}.items():
    DATASETS.register(_name, _loader)


def load_dataset(name: str, root: str | None = None, **kwargs) -> ArrayDataset:
    return DATASETS.get(name)(root, **kwargs)


__all__ = [
    "ArrayDataset",
    "BadImageError",
    "DatasetLayoutError",
    "DATASETS",
    "DOMAIN_PAIRS",
    "DatasetCorruptError",
    "DatasetMissingError",
    "DomainPair",
    "FETCHABLE",
    "SSLSplit",
    "default_data_root",
    "fetch",
    "load_dataset",
    "load_domain_pair",
    "load_uda",
    "joined_training_set",
    "uda_split",
    "UNLABELED",
    "stratified_split",
]
