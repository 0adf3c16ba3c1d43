"""What every part of :mod:`supercm.data` shares; the bottom layer, importing nothing else of the package.

* what loaders return and the trainer consumes: :class:`ArrayDataset` (one dataset) and
  :class:`DomainPair` (a UDA task), and :data:`UNLABELED`, the label a target training sample carries;
* the errors: :class:`DatasetMissingError`, :class:`DatasetCorruptError`, :class:`FetchError`;
* where data lives: :func:`default_data_root` and :func:`resolve_root` (``root`` or the default);
* the pixel converters of the digit datasets: :func:`to_unit_range`, :func:`gray_to_rgb`,
  :func:`images_to_tensor` (uint8 grey or colour → float32 (N, 3, H, W) in [−1, 1]).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


class DatasetMissingError(FileNotFoundError):
    """A dataset's files are not under the data root; the message names the command that fetches them."""


class DatasetCorruptError(ValueError):
    """A cached dataset file is unreadable or altered; the message names the file and the repair command."""


class FetchError(RuntimeError):
    """Fetching a dataset from its registry package failed; the message says which step and why."""


class MissingExtraError(FetchError):
    """Fetching a dataset needs an optional dependency that is not installed; the message names the extra."""


@dataclass
class ArrayDataset:
    """A labelled train split and a test split held as tensors, already preprocessed.

    ``train_x``/``test_x`` are float32, shape (N, C, H, W) for images or (N, D) for
    vectors; ``train_y``/``test_y`` are int64 class indices in [0, num_classes).
    ``augment`` names the batch augmentations the paper uses for this dataset
    (keys of :class:`supercm.data.augment.Augment`), applied by the trainer to
    training batches only.

    Image datasets read from disk (:mod:`supercm.data.images`) keep their pixels as
    uint8 (N, 3, S, S) to fit in memory, and say in ``input_transform`` how the model's
    input stage (:class:`supercm.models.ImageInput`) turns them into network inputs:
    ``{"crop": 224, "mean": [...], "std": [...]}``. ``classes`` names the classes in
    label order where they are known (the run directory records them in ``classes.json``).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    augment: dict = field(default_factory=dict)
    input_transform: dict = field(default_factory=dict)
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"{self.name}: {split}_x has {x.shape[0]} rows but {split}_y has {y.shape[0]}")
            if y.dtype != torch.long:
                raise TypeError(f"{self.name}: {split}_y must be int64, got {y.dtype}")
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(f"{self.name}: train and test samples differ in shape")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


@dataclass
class DomainPair:
    """A UDA task: a labelled ``source`` and a ``target`` whose training labels are for evaluation only.

    ``target.train_x`` is the unlabelled target data a UDA method adapts to; ``target.train_y``
    must never reach training or a non-oracle selection rule; ``target.test_*`` is the target test set.
    """

    name: str
    source: ArrayDataset
    target: ArrayDataset


#: The label a target training sample carries inside the trainer: its true label is never copied.
UNLABELED = -1


# --------------------------------------------------------------------------- data root


def default_data_root() -> str:
    """``$SUPERCM_DATA`` if set, else ``~/.cache/supercm/data``."""
    return os.environ.get("SUPERCM_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "supercm", "data")


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The data root a loader reads: ``root``, or :func:`default_data_root` when it is None (``~`` expanded)."""
    return Path(default_data_root() if root is None else root).expanduser()


# --------------------------------------------------------------------------- pixels


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 pixels in [0, 255] → float32 in [−1, 1] via ``x/127.5 − 1`` (same shape)."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


def gray_to_rgb(images: Tensor) -> Tensor:
    """(N, H, W) or (N, 1, H, W) → (N, 3, H, W) by replicating the single channel (contiguous copy)."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.shape[1] != 1:
        raise ValueError(f"expected one channel, got shape {tuple(images.shape)}")
    return images.repeat(1, 3, 1, 1)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) grey or (N, H, W, 3) colour → float32 (N, 3, H, W) in [−1, 1]."""
    x = to_unit_range(torch.from_numpy(np.ascontiguousarray(images)))
    return gray_to_rgb(x) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()
