"""The training rows behind one interface, whichever pipeline holds them.

The memory pipeline keeps the training set as a tensor on the device; the stream pipeline as an
:class:`~supercm.data.stream.ImageStore` whose worker processes decode ahead. :func:`rows` wraps
either in a reader with the same two calls, so the trainer's step never asks which one it has:

* ``read(rows, device_rows)`` — the batch of dataset rows ``rows`` (CPU indices; ``device_rows``
  the same indices already on the device);
* ``prefetch(samplers, select)`` — a context manager that decodes ahead the batches copies of the
  samplers will draw (a no-op for the memory pipeline).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

import torch
from torch import Tensor

from .stream import ImageStore


class TensorRows:
    """Rows of a tensor on the device (the memory pipeline), read by device indices."""

    def __init__(self, x: Tensor):
        self.x = x

    def read(self, rows: Tensor, device_rows: Tensor) -> Tensor:
        return self.x[device_rows]

    def prefetch(self, samplers: Sequence, select: Callable[[Tensor], Tensor] | None = None):
        return nullcontext()


class StoreRows:
    """Rows of an :class:`ImageStore` (the stream pipeline), read by the CPU indices its prefetch checks."""

    def __init__(self, store: ImageStore):
        self.x = store

    def read(self, rows: Tensor, device_rows: Tensor) -> Tensor:
        return self.x[rows]

    def prefetch(self, samplers: Sequence, select: Callable[[Tensor], Tensor] | None = None):
        return self.x.prefetch(samplers, select)


def rows(x: Tensor | ImageStore) -> TensorRows | StoreRows:
    """The reader for a training set held by either pipeline."""
    return StoreRows(x) if isinstance(x, ImageStore) else TensorRows(x)


def to_device(idx: Tensor, device: torch.device) -> Tensor:
    """Batch indices (drawn on the CPU) to ``device`` without waiting for it: a plain ``.to(cuda)``
    from pageable memory synchronises the stream; from pinned memory it is asynchronous."""
    if device.type == "cuda":
        return idx.pin_memory().to(device, non_blocking=True)
    return idx.to(device)
