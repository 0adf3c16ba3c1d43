"""In-memory datasets: what every loader returns and the trainer consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


class DatasetMissingError(FileNotFoundError):
    """A dataset's files are not under the data root; the message names the command that fetches them."""


class DatasetCorruptError(ValueError):
    """A cached dataset file is unreadable or altered; the message names the file and the repair command."""


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


def default_data_root() -> str:
    """``$SUPERCM_DATA`` if set, else ``~/.cache/supercm/data``."""
    import os

    return os.environ.get("SUPERCM_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "supercm", "data")
