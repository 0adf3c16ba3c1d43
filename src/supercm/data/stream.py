"""The stream pipeline (issue 12 §2): images decoded from disk in DataLoader worker processes, for
datasets whose decoded pixels do not fit in memory (``data.options.pipeline: stream``).

An :class:`ImageStore` stands where the memory pipeline keeps its uint8 tensor (``train_x``,
``test_x``): ``store[rows]`` returns the same uint8 (n, 3, size, size) batch, each file decoded by
the cache's own :func:`~supercm.data.decode.decode_one` (Pillow RGB, bicubic resize to size×size),
so the two pipelines hand the trainer the same pixels. Everything after the read is shared: the
random augmentation (RandomResizedCrop + flip) runs on the device from the trainer's checkpointed
generator, and the model's input stage centre-crops and normalises.

Prefetch. The trainer's batch samplers are deterministic (seeded, their state in the checkpoint).
:meth:`ImageStore.prefetch` hands a *copy* of them, at their current state, to a
``torch.utils.data.DataLoader`` whose worker processes decode the batches the trainer will ask
for next (``prefetch_factor`` reads per worker ahead; pinned memory on CUDA). The trainer keeps
drawing its own indices; each read compares them with what the loader delivered (a CPU compare)
and takes the decoded batch only when they are equal, otherwise it decodes the rows itself. The
pixels of a row do not depend on how they were read, so **the prefetch changes speed, never
results**. Evaluation reads its chunks through a second loader (persistent workers).

Resume guarantee: a run with ``pipeline: stream`` draws the same batches, the same augmentation
and reaches the same weights and metrics as the uninterrupted run and as the same run with
``pipeline: memory`` (bit for bit, on the same device and thread count, as for every run). A resumed
run starts its prefetch from the samplers restored from the checkpoint; what the killed run had
prefetched is simply lost.

Bad images. ``bad_images: fail`` (default) does not look at a file before a batch needs it: a file
that cannot be decoded stops the run, in the training process, with a
:class:`~supercm.data.decode.BadImageError` naming the path (``supercm train`` adds whether the run
can be resumed: replace the file and ``--resume`` when a checkpoint was written, else start again). ``bad_images: skip`` decodes every image once, up front, to find the
bad ones (the result is cached by the same key as the memory pipeline's cache: file paths, sizes,
modification times, ``size``) and leaves them out, exactly as the memory pipeline does, so the
two pipelines still index the same images.
"""

from __future__ import annotations

import collections
import copy
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .decode import BadImageError, decode_noted, default_workers, warn_converted

#: Values of ``data.options.pipeline``.
PIPELINES = ("memory", "stream")
#: Reads each DataLoader worker keeps decoded ahead of the trainer (``data.options.prefetch``).
DEFAULT_PREFETCH = 2


def _identity(items):
    return items


def _decode_files(paths: Sequence[str], size: int) -> tuple[Tensor | None, tuple[str, str] | None, list]:
    """uint8 (len(paths), 3, size, size), or (None, (path, why)) for the first file that cannot be decoded;
    and the ``[path, note]`` of the files read with a choice (:func:`~supercm.data.decode.decode_noted`)."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    notes = []
    for i, p in enumerate(paths):
        try:
            out[i], note = decode_noted(Path(p), size)
        except Exception as exc:  # noqa: BLE001  (truncated, unreadable, not an image: reported by path)
            return None, (str(p), f"{type(exc).__name__}: {exc}"), notes
        if note:
            notes.append([str(p), note])
    return torch.from_numpy(out), None, notes


class _Decoder(torch.utils.data.Dataset):
    """What a worker process runs: a request ``(tag, size, paths)`` → ``(tag, images, error)``."""

    def __getitem__(self, request):
        tag, size, paths = request
        return (tag, *_decode_files(paths, size))


class _Plan(torch.utils.data.Sampler):
    """The requests a loader hands its workers: whatever :attr:`source` iterates when an iteration starts."""

    def __init__(self, source: Iterable = ()):
        self.source = source

    def __iter__(self):
        return iter(self.source)


def _loader(plan: _Plan, workers: int, prefetch: int, pin: bool, persistent: bool) -> torch.utils.data.DataLoader:
    """A DataLoader whose ``workers`` processes decode the requests of ``plan``, delivered in order."""
    return torch.utils.data.DataLoader(
        _Decoder(), batch_size=None, sampler=plan, num_workers=workers, collate_fn=_identity, pin_memory=pin,
        persistent_workers=persistent and workers > 0, prefetch_factor=prefetch if workers > 0 else None)


class _Pool:
    """One persistent loader that decodes on-demand reads (evaluation, reads off the prefetch) for every
    store of this process with the same workers and prefetch: their worker processes are shared."""

    def __init__(self, workers: int, prefetch: int, pin: bool):
        self.plan = _Plan()
        self.loader = _loader(self.plan, workers, prefetch, pin, persistent=True)
        self.generation = 0

    def run(self, requests: list) -> Iterator:
        """The results of ``requests`` in order. One run at a time: starting another ends this one."""
        self.generation += 1
        mine = self.generation
        self.plan.source = requests
        for item in self.loader:
            if self.generation != mine:
                raise RuntimeError("two reads through the stream pipeline's worker pool were interleaved; "
                                   "finish one before starting the next")
            yield item


_POOLS: dict[tuple[int, int, bool], _Pool] = {}


def close_workers() -> None:
    """Stop the worker processes of the shared on-demand pools (they also end with the process)."""
    _POOLS.clear()


def _pieces(paths: list[str], workers: int) -> list[list[str]]:
    """A read split over the workers (at most ``workers`` pieces; one piece when there are none)."""
    step = max(1, math.ceil(len(paths) / max(1, workers)))
    return [paths[i : i + step] for i in range(0, len(paths), step)] or [paths]


class ImageStore:
    """Image files read on demand as uint8 (n, 3, size, size): ``store[rows]`` (an index tensor, a list
    of ints, an int or a slice) decodes those files with :func:`~supercm.data.decode.decode_one` and
    returns them on :attr:`device`. Behaves like the memory pipeline's tensor where the trainer and
    the analyses use it (``shape``, ``dtype``, ``len``, ``.to(device)``, indexing).

    ``workers``: DataLoader worker processes for prefetched and on-demand reads (0: decode in this
    process; None: the CPU count, at most 8). ``prefetch``: reads each worker decodes ahead.
    """

    dtype = torch.uint8

    def __init__(self, paths: Sequence[str | os.PathLike], size: int, *, workers: int | None = None,
                 prefetch: int = DEFAULT_PREFETCH, what: str = "images", device: str | torch.device = "cpu"):
        if size < 1:
            raise ValueError(f"data.options.size must be ≥ 1, got {size}")
        self.paths = [str(p) for p in paths]
        self.size = size
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 0:
            raise ValueError(f"data.options.workers must be ≥ 0 (0: decode in the training process), got {workers}")
        if prefetch < 1:
            raise ValueError(f"data.options.prefetch must be ≥ 1, got {prefetch}")
        self.prefetch_factor = prefetch
        self.what = what
        self.device = torch.device(device)
        self._stream: _Prefetch | None = None
        self._noted = False
        #: Reads served by the prefetch, and reads decoded on demand (a run's dry run, evaluation, misses).
        self.reads = {"prefetched": 0, "on_demand": 0}

    # ---------------------------------------------------------------- tensor-like
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), 3, self.size, self.size))

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (f"ImageStore({len(self.paths)} {self.what}, size={self.size}, workers={self.workers}, "
                f"device={self.device})")

    def _like(self, paths: list[str], device: torch.device) -> ImageStore:
        return ImageStore(paths, self.size, workers=self.workers, prefetch=self.prefetch_factor, what=self.what,
                          device=device)

    def to(self, device: str | torch.device) -> ImageStore:
        """A store of the same files whose reads land on ``device`` (``self`` when it is this one's)."""
        device = torch.device(device)
        return self if device == self.device else self._like(self.paths, device)

    @classmethod
    def cat(cls, stores: Sequence[ImageStore]) -> ImageStore:
        """The rows of ``stores`` one after the other (``torch.cat`` of the memory pipeline)."""
        if len({s.size for s in stores}) > 1:
            raise ValueError(f"cannot join image stores of sizes {sorted({s.size for s in stores})}")
        joined = stores[0]._like([p for s in stores for p in s.paths], stores[0].device)
        if len({s.what for s in stores}) > 1:
            joined.what = "training images"  # [source ; target]: the message names the file's path
        return joined

    def _rows(self, key) -> list[int]:
        n = len(self.paths)
        if isinstance(key, slice):
            return list(range(n))[key]
        rows = torch.as_tensor(key)
        if rows.dtype == torch.bool:
            rows = rows.nonzero().flatten()
        rows = rows.cpu().long().flatten()
        rows = torch.where(rows < 0, rows + n, rows)
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
            raise IndexError(f"row index out of range for {n} {self.what}")
        return rows.tolist()

    def __getitem__(self, key) -> Tensor:
        """The rows ``key`` as uint8 (n, 3, size, size) on :attr:`device` (an int: one (3, size, size) image)."""
        if isinstance(key, int):
            return self[[key]][0]
        if self._stream is not None and isinstance(key, Tensor) and key.device.type == "cpu":
            images = self._stream.take(key)
            if images is not None:
                return self._to_device(images)
        paths = [self.paths[r] for r in self._rows(key)]
        self.reads["on_demand"] += 1
        if self.workers > 0 and len(paths) > 2:
            return next(iter(self._through_pool([paths])))
        return self._to_device(self._decode(paths))

    # ---------------------------------------------------------------- decoding
    def _decode(self, paths: list[str]) -> Tensor:
        images, error, notes = _decode_files(paths, self.size)
        self._note(notes)
        if error is not None:
            raise self._bad(error)
        return images

    def _note(self, notes: list) -> None:
        """Warn, once per store, of images read with a choice (16-bit, float, transparent, ...): this
        pipeline meets files as batches need them, so it names those of the first read that has any."""
        if notes and not self._noted:
            self._noted = True
            warn_converted(notes, None, self.what,
                           more="; further such files are not named (the memory pipeline, or bad_images=skip, "
                                "lists every one up front)")

    def _bad(self, error: tuple[str, str]) -> Exception:
        path, why = error
        return BadImageError(
            f"{self.what}: cannot decode {path} ({why}); replace the file, or set data.options.bad_images=skip "
            f"(the stream pipeline then decodes every image once, up front, and leaves the bad ones out)")

    def _to_device(self, images: Tensor) -> Tensor:
        if self.device.type == "cpu":
            return images
        return images.to(self.device, non_blocking=images.is_pinned())

    def _requests(self, reads: Iterable[list[str]]) -> Iterator[tuple]:
        """Each read (a list of paths) as its pieces ``((read, piece, pieces), size, paths)``."""
        for i, paths in enumerate(reads):
            ps = _pieces(paths, self.workers)
            for j, p in enumerate(ps):
                yield (i, j, len(ps)), self.size, p

    def _assemble(self, items: Iterable) -> Iterator[Tensor]:
        """Whole reads from a loader's pieces ``((read, piece, pieces), images, error)``, on the device."""
        parts: list[Tensor] = []
        for (_, piece, pieces), images, error, notes in items:
            self._note(notes)
            if error is not None:
                raise self._bad(error)
            parts.append(images)
            if piece == pieces - 1:
                yield self._to_device(parts[0] if len(parts) == 1 else torch.cat(parts))
                parts = []

    def _through_pool(self, reads: list[list[str]]) -> Iterator[Tensor]:
        key = (self.workers, self.prefetch_factor, self.device.type == "cuda")
        if key not in _POOLS:
            _POOLS[key] = _Pool(*key)
        return self._assemble(_POOLS[key].run(list(self._requests(reads))))

    def batches(self, chunks: Sequence) -> Iterator[Tensor]:
        """``store[chunk]`` for each chunk in turn, decoded ahead by the worker processes (evaluation)."""
        reads = [[self.paths[r] for r in self._rows(c)] for c in chunks]
        self.reads["on_demand"] += len(reads)
        if self.workers == 0:
            return (self._to_device(self._decode(paths)) for paths in reads)
        return self._through_pool(reads)

    # ---------------------------------------------------------------- prefetch of the training batches
    def prefetch(self, samplers: Sequence, select: Callable[[Tensor], Tensor] | None = None) -> _Prefetch:
        """Decode ahead, in worker processes, the batches that copies of ``samplers`` (objects with
        ``next() → index tensor``, taken at their current state) draw in turn, step after step; with
        ``select``, the rows ``select(batch)`` of each (a data-parallel rank's share). A read
        ``store[rows]`` with CPU ``rows`` then takes the next prefetched batch when its rows are equal.
        Returns the prefetch; use it as a context manager (or call :meth:`stop`) to stop its workers."""
        self.stop()
        self._stream = _Prefetch(self, samplers, select)
        return self._stream

    def stop(self) -> None:
        """Stop the prefetch (its workers exit); reads decode on demand again."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class _Prefetch:
    """Batches of sampler copies decoded ahead; see :meth:`ImageStore.prefetch`."""

    def __init__(self, store: ImageStore, samplers: Sequence, select: Callable[[Tensor], Tensor] | None = None):
        self.store = store
        self.copies = [copy.deepcopy(s) for s in samplers]
        self.select = select
        self._reads: Iterator | None = None  # started at the first read: a finished run forks no worker
        self._rows: collections.deque = collections.deque()  # the rows of the reads handed to the loader
        self._head: tuple[list[int], Tensor] | None = None
        self._warned = False

    def _paths(self) -> Iterator[list[str]]:
        paths = self.store.paths
        while True:
            for sampler in self.copies:
                drawn = sampler.next()
                rows = (drawn if self.select is None else self.select(drawn)).tolist()
                self._rows.append(rows)
                yield [paths[r] for r in rows]

    def take(self, rows: Tensor) -> Tensor | None:
        """The prefetched batch of ``rows`` if it is the next one, else None (the caller decodes)."""
        s = self.store
        if self._reads is None:
            plan = _Plan(s._requests(self._paths()))
            self._reads = s._assemble(_loader(plan, s.workers, s.prefetch_factor, s.device.type == "cuda",
                                              persistent=False))
        if self._head is None:
            images = next(self._reads)
            self._head = (self._rows.popleft(), images)
        if self._head[0] == rows.tolist():
            images, self._head = self._head[1], None
            s.reads["prefetched"] += 1
            return images
        if not self._warned:
            self._warned = True
            warnings.warn(f"{s.what}: a read did not follow the prefetched sampler copies; decoding it on demand "
                          f"(same pixels, slower)", RuntimeWarning, stacklevel=3)
        return None

    def close(self) -> None:
        self._reads = None  # the loader's iterator goes with it, and its workers exit
        self._head = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.store._stream is self:
            self.store.stop()
        else:
            self.close()


def iter_rows(x, chunks: Sequence[Tensor]) -> Iterator[Tensor]:
    """``x[chunk]`` for each chunk: a tensor is indexed, an :class:`ImageStore` decodes them ahead."""
    if isinstance(x, ImageStore):
        return x.batches(chunks)
    return (x[c] for c in chunks)


def cat_rows(parts: Sequence) -> Tensor | ImageStore:
    """``torch.cat`` of tensors, or the stores joined (both pipelines' training set [source ; target])."""
    if any(isinstance(p, ImageStore) for p in parts):
        if not all(isinstance(p, ImageStore) for p in parts):
            raise ValueError("cannot join images read from disk (pipeline=stream) with images in memory")
        return ImageStore.cat(parts)
    return torch.cat(list(parts))


__all__ = ["DEFAULT_PREFETCH", "PIPELINES", "ImageStore", "cat_rows", "iter_rows"]
