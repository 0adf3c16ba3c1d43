"""Datasets by name: ``load_dataset(name, root)`` returns an :class:`ArrayDataset`."""

from __future__ import annotations

from typing import Callable

from .base import ArrayDataset, DatasetCorruptError, DatasetMissingError, default_data_root
from .digits import load_digits
from .offline import FETCHABLE, fetch, load_fashion_mnist, load_mnist10k
from .splits import SSLSplit, stratified_split
from .torchvision_sets import load_cifar10, load_cifar100, load_mnist, load_svhn

DATASETS: dict[str, Callable[..., ArrayDataset]] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "svhn": load_svhn,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "mnist10k": load_mnist10k,
    "fashion_mnist": load_fashion_mnist,
}


def load_dataset(name: str, root: str | None = None, **kwargs) -> ArrayDataset:
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}") from None
    return loader(root, **kwargs)


__all__ = [
    "ArrayDataset",
    "DATASETS",
    "DatasetCorruptError",
    "DatasetMissingError",
    "FETCHABLE",
    "SSLSplit",
    "default_data_root",
    "fetch",
    "load_dataset",
    "stratified_split",
]
