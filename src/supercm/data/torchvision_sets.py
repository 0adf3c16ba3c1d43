"""MNIST, SVHN, CIFAR-10 and CIFAR-100 from torchvision's standard on-disk formats.

Each loader reads the files under ``root`` with the matching
``torchvision.datasets`` class (``download=False`` unless the caller asks), takes
the whole uint8 array from its ``.data`` and the labels from ``.targets`` /
``.labels`` (no per-image PIL round trip), and preprocesses as the SuperCM paper's
SSL protocol (SPEC §5, after Oliver et al. 2018):

=========  ==========================================  =====================  ==================================
dataset    files under ``root``                        preprocessing          ``augment``
=========  ==========================================  =====================  ==================================
mnist      ``MNIST/raw/{train,t10k}-*-ubyte``          [−1, 1], 1→3 channels  crop_pad 2
svhn       ``{train,test}_32x32.mat``                  [−1, 1]                crop_pad 2
cifar10    ``cifar-10-batches-py/``                    GCN (55) + ZCA (0.1)   flip, crop_pad 2, noise_std 0.15
cifar100   ``cifar-100-python/``                       GCN (55) + ZCA (0.1)   flip, crop_pad 2, noise_std 0.15
=========  ==========================================  =====================  ==================================

Scaling to [−1, 1] is ``x ← x/127.5 − 1`` on the uint8 pixel values (Oliver et
al.'s ``(x/255 − 0.5)·2``). Missing files raise :class:`DatasetMissingError`
naming the files and how to get them.

CIFAR's GCN + ZCA (33 s on two idle CPU cores for CIFAR-10's 60,000 images) is cached
under ``root/supercm-cache/`` (703 MiB for CIFAR-10; a cached load takes 1.7 s, most of it
torchvision unpickling and hashing): one file per dataset, named by a SHA-256 of the raw pixels
and the preprocessing constants, so a changed file or constant never reuses stale
arrays. A cache that cannot be read is recomputed; one that cannot be written
only costs the preprocessing again next time.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..fileio import load_failure_reason  # torch's own text would advise loading unsafely
from .base import ArrayDataset, DatasetMissingError, gray_to_rgb, resolve_root, to_unit_range
from .preprocess import GCN_SCALE, ZCA, ZCA_IDENTITY_SCALE, global_contrast_normalize

#: Batch augmentations of SPEC §5 per dataset (keys of :class:`supercm.data.augment.Augment`).
MNIST_AUGMENT = {"crop_pad": 2}
SVHN_AUGMENT = {"crop_pad": 2}
CIFAR_AUGMENT = {"flip": True, "crop_pad": 2, "noise_std": 0.15}


def _missing_message(name: str, root: Path, where: Path, files: list[str], missing: list[str], extra: str = "") -> str:
    listing = "\n".join(f"    {where / f}" + ("   <- missing" if f in missing else "") for f in files)
    return (
        f"{name} is not under the data root {root}: torchvision's {name} files are expected at\n{listing}\n"
        f"To let torchvision download them (needs internet), call the loader with download=True "
        f"(in a run config: data.download=true), or copy an existing copy of those files there."
        + (f"\n{extra}" if extra else "")
    )


def _check_files(name: str, root: Path, where: Path, files: list[str], extra: str = "") -> None:
    missing = [f for f in files if not (where / f).is_file()]
    if missing:
        raise DatasetMissingError(_missing_message(name, root, where, files, missing, extra))


def _open(name: str, root: Path, factory: Callable[..., Any], **kwargs: Any) -> Any:
    """Construct a torchvision dataset, turning its "not found or corrupted" RuntimeError into ours."""
    try:
        return factory(root=str(root), **kwargs)
    except RuntimeError as err:
        raise DatasetMissingError(
            f"torchvision could not read {name} under {root}: {err}\n"
            f"The files are present but failed torchvision's checks (a partial or corrupted download fails "
            f"its MD5 check): delete them and fetch them again with download=True (config: data.download=true)."
        ) from err


def load_mnist(root: str | os.PathLike | None = None, *, download: bool = False) -> ArrayDataset:
    """MNIST: 60,000 train / 10,000 test, (N, 3, 28, 28) float32 in [−1, 1].

    Read by ``torchvision.datasets.MNIST`` from ``root/MNIST/raw`` (the four
    uncompressed idx files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``; with
    ``download=True`` torchvision fetches the ``.gz`` files, or only unpacks them
    when they already sit in that folder). The 28×28 images are kept at their size,
    replicated to 3 channels and scaled by ``x/127.5 − 1``. Augment: crop_pad 2.
    """
    from torchvision import datasets

    root = resolve_root(root)
    if not download:
        raw = root / "MNIST" / "raw"
        legacy = root / "MNIST" / "processed"
        if not all((legacy / f).is_file() for f in ("training.pt", "test.pt")):
            files = [os.path.splitext(url)[0] for url, _ in datasets.MNIST.resources]
            _check_files(
                "MNIST",
                root,
                raw,
                files,
                extra=f"If you only have the .gz files, put them in {raw} and pass download=True: "
                "torchvision then only unpacks them.",
            )
    splits = []
    for train in (True, False):
        ds = _open("MNIST", root, datasets.MNIST, train=train, download=download)
        x = gray_to_rgb(to_unit_range(torch.as_tensor(ds.data)))
        y = torch.as_tensor(ds.targets, dtype=torch.long)
        splits += [x, y]
    return ArrayDataset("mnist", *splits, num_classes=10, augment=dict(MNIST_AUGMENT))


def load_svhn(root: str | os.PathLike | None = None, *, download: bool = False) -> ArrayDataset:
    """SVHN (train and test; not "extra"): 73,257 / 26,032 images, (N, 3, 32, 32) float32 in [−1, 1].

    Read by ``torchvision.datasets.SVHN`` from ``root/train_32x32.mat`` and
    ``root/test_32x32.mat`` (Matlab files with ``X`` (32, 32, 3, N) uint8 and ``y``
    (N, 1) in 1..10, where torchvision maps label 10 to digit 0, so labels are the
    digits 0–9). Scaled by ``x/127.5 − 1``. Augment: crop_pad 2.
    """
    from torchvision import datasets

    root = resolve_root(root)
    if not download:
        files = [datasets.SVHN.split_list[s][1] for s in ("train", "test")]
        _check_files("SVHN", root, root, files)
    splits = []
    for split in ("train", "test"):
        ds = _open("SVHN", root, datasets.SVHN, split=split, download=download)
        images = torch.from_numpy(np.ascontiguousarray(ds.data))  # torchvision already made it (N, C, H, W)
        splits += [to_unit_range(images), torch.as_tensor(ds.labels, dtype=torch.long)]
    return ArrayDataset("svhn", *splits, num_classes=10, augment=dict(SVHN_AUGMENT))


def gcn_zca(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """CIFAR preprocessing of Oliver et al.: GCN per image, then ZCA fitted on ``train`` only.

    ``train``/``test`` are (N, C, H, W) raw pixel values (uint8 or float). Each image
    is contrast-normalised to zero mean and L2 norm 55
    (:func:`~supercm.data.preprocess.global_contrast_normalize`); the whitening
    ``z = (x − μ) · (C + 0.1·I)^(−1/2)`` uses the mean ``μ`` and covariance ``C`` of the
    normalised *training* images only and is applied unchanged to both splits.
    Returns float32 tensors of the input shapes.
    """
    train_n = global_contrast_normalize(train.contiguous(), scale=GCN_SCALE)
    zca = ZCA.fit(train_n, identity_scale=ZCA_IDENTITY_SCALE)
    train_z = zca.transform(train_n)
    del train_n
    return train_z, zca.transform(global_contrast_normalize(test.contiguous(), scale=GCN_SCALE))


#: Part of the cache key of preprocessed CIFAR arrays: bump it when :func:`gcn_zca` changes.
PREPROCESS_VERSION = 1
CACHE_DIR = "supercm-cache"


def _cache_file(root: Path, name: str, raw_train: np.ndarray, raw_test: np.ndarray) -> Path:
    """``root/supercm-cache/NAME-gcn-zca-HASH.pt``: HASH covers the raw pixels and the constants."""
    h = hashlib.sha256()
    h.update(f"{name} v{PREPROCESS_VERSION} gcn={GCN_SCALE} zca={ZCA_IDENTITY_SCALE} "
             f"{raw_train.shape} {raw_test.shape}".encode())
    for a in (raw_train, raw_test):
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return root / CACHE_DIR / f"{name}-gcn-zca-{h.hexdigest()[:20]}.pt"


def _read_cache(path: Path, n_train: int, n_test: int) -> tuple[Tensor, Tensor] | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: recompute and overwrite it
        reason = load_failure_reason(err)
    else:
        try:
            train_x, test_x = data["train_x"], data["test_x"]
            if train_x.shape != (n_train, 3, 32, 32) or test_x.shape != (n_test, 3, 32, 32):
                raise ValueError(f"shapes {tuple(train_x.shape)} / {tuple(test_x.shape)} do not match the dataset")
            return train_x, test_x
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            reason = f"not this cache's content: {type(err).__name__}: {err}"
    warnings.warn(f"ignoring unreadable preprocessing cache {path} ({reason}); recomputing GCN + ZCA", stacklevel=3)
    return None


def _write_cache(path: Path, train_x: Tensor, test_x: Tensor) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"train_x": train_x, "test_x": test_x}, tmp)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    except OSError as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        warnings.warn(f"could not write the preprocessing cache {path} ({err}); the next load recomputes it",
                      stacklevel=3)


#: Values of the CIFAR loaders' ``preprocess``: the paper's GCN + ZCA, or pixels scaled to [−1, 1].
CIFAR_PREPROCESS = ("gcn_zca", "unit")


def _load_cifar(
    name: str, root: str | os.PathLike | None, download: bool, hundred: bool, cache: bool = True,
    preprocess: str = "gcn_zca",
) -> ArrayDataset:
    if preprocess not in CIFAR_PREPROCESS:
        raise ValueError(f"preprocess must be one of {', '.join(CIFAR_PREPROCESS)}, got {preprocess!r}")
    from torchvision import datasets

    cls = datasets.CIFAR100 if hundred else datasets.CIFAR10
    root = resolve_root(root)
    if not download:
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        _check_files(
            name.upper(),
            root,
            root / cls.base_folder,
            files,
            extra=f"If you have the official archive {cls.filename}, put it in {root} and pass download=True: "
            "torchvision then only verifies and unpacks it.",
        )
    raw: list[Any] = []
    for train in (True, False):
        ds = _open(name.upper(), root, cls, train=train, download=download)
        raw += [ds.data, torch.as_tensor(ds.targets, dtype=torch.long)]  # data: (N, H, W, C) uint8
    if preprocess == "unit":  # pixels as the network's input, for photometric augmentation (RandAugment)
        train_x, test_x = (to_unit_range(torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()) for a in (raw[0], raw[2]))
        return ArrayDataset(name, train_x, raw[1], test_x, raw[3], num_classes=100 if hundred else 10,
                            augment=dict(CIFAR_AUGMENT))
    path = _cache_file(root, name, raw[0], raw[2]) if cache else None
    cached = _read_cache(path, len(raw[0]), len(raw[2])) if path is not None else None
    if cached is not None:
        train_x, test_x = cached
    else:
        # The network wants (N, C, H, W).
        train_x, test_x = gcn_zca(*(torch.from_numpy(a).permute(0, 3, 1, 2) for a in (raw[0], raw[2])))
        if path is not None:
            _write_cache(path, train_x, test_x)
    return ArrayDataset(
        name, train_x, raw[1], test_x, raw[3], num_classes=100 if hundred else 10, augment=dict(CIFAR_AUGMENT)
    )


def load_cifar10(root: str | os.PathLike | None = None, *, download: bool = False, cache: bool = True,
                 preprocess: str = "gcn_zca") -> ArrayDataset:
    """CIFAR-10: 50,000 train / 10,000 test, (N, 3, 32, 32) float32, GCN + ZCA (see :func:`gcn_zca`).

    Read by ``torchvision.datasets.CIFAR10`` from the python pickles in
    ``root/cifar-10-batches-py`` (``data_batch_1``…``data_batch_5``, ``test_batch``,
    ``batches.meta``). Augment: flip, crop_pad 2, Gaussian noise σ = 0.15.
    Fitting and applying the whitening (a 3072×3072 covariance) takes about half a
    minute on two CPU cores; the result is cached under ``root/supercm-cache/`` (``cache=False``
    neither reads nor writes it). ``preprocess="unit"``: the pixels scaled by ``x/127.5 − 1``
    instead (what FixMatch's RandAugment needs: photometric operations mean nothing on whitened data).
    """
    return _load_cifar("cifar10", root, download, hundred=False, cache=cache, preprocess=preprocess)


def load_cifar100(root: str | os.PathLike | None = None, *, download: bool = False, cache: bool = True,
                  preprocess: str = "gcn_zca") -> ArrayDataset:
    """CIFAR-100 (fine labels, 100 classes): 50,000 train / 10,000 test, GCN + ZCA as CIFAR-10.

    Read by ``torchvision.datasets.CIFAR100`` from ``root/cifar-100-python``
    (``train``, ``test``, ``meta``). Augment: flip, crop_pad 2, noise σ = 0.15.
    """
    return _load_cifar("cifar100", root, download, hundred=True, cache=cache, preprocess=preprocess)
