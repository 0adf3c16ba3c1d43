"""Decoding an image file, and the key of the decoded-image cache: the one recipe both image pipelines use.

The memory pipeline (:mod:`supercm.data.images`, which keeps the decoded uint8 array in a cache)
and the stream pipeline (:mod:`supercm.data.stream`, which decodes in DataLoader workers) both
read pixels with :func:`decode_one` and key their cache entries with :func:`cache_key`, so they
hand the trainer the same pixels and find each other's entries (:func:`scan_images`, the
``bad_images=skip`` scan, reads a memory-pipeline entry of the same files when there is one).
This module imports nothing of the package above :mod:`supercm.data.base`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..fileio import atomic_write
from .base import default_data_root

#: Version of the cache format and of the decode/resize recipe; part of every cache key.
CACHE_VERSION = 1
RESIZE_METHOD = "PIL.Image.resize(BICUBIC) of convert('RGB')"
#: Environment variable naming the decoded-image cache folder.
CACHE_ENV = "SUPERCM_IMAGE_CACHE"


class BadImageError(ValueError):
    """Images that cannot be decoded (unreadable, truncated, not an image); the message lists their paths."""


def default_workers() -> int:
    """Worker processes when ``data.options.workers`` is unset: the CPU count, at most 8."""
    return min(8, os.cpu_count() or 1)


def default_cache_dir() -> Path:
    """``$SUPERCM_IMAGE_CACHE`` if set, else ``DATA_ROOT/image_cache`` of :func:`default_data_root`."""
    return Path(os.environ.get(CACHE_ENV) or os.path.join(default_data_root(), "image_cache"))


def cache_key(paths: list[Path], size: int) -> str:
    """SHA-256 of the recipe, ``size`` and every file's path, byte size and modification time."""
    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "size": size, "resize": RESIZE_METHOD}).encode())
    for p in paths:
        st = p.stat()
        h.update(f"\n{p.resolve()}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()


def decode_one(path: Path, size: int) -> np.ndarray:
    """One image as uint8 (3, size, size): RGB, resized with Pillow's bicubic filter (``Image.resize``'s
    default, which the field's ``ResizeImage`` uses)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB").resize((size, size), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


# --------------------------------------------------------------------------- bad_images=skip, up front


def scan_images(paths: list[Path], size: int, *, cache_dir: str | os.PathLike | None = None, cache: bool = True,
                workers: int | None = None, progress: bool = True, what: str = "images") -> list[list[str]]:
    """``[path, why]`` of every file :func:`decode_one` cannot decode (resized to
    ``size``), found by decoding each once (threads); cached beside the memory pipeline's cache under
    the same key, and read from a memory-pipeline cache entry of the same files when there is one."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = cache_key(paths, size)
    for name in (f"{key[:32]}.scan.json", f"{key[:32]}.json"):  # ours, or the memory pipeline's
        try:
            meta = json.loads((folder / name).read_text()) if cache else None
            if meta and meta.get("key") == key and isinstance(meta.get("bad"), list):
                return meta["bad"]
        except (OSError, ValueError):
            pass

    def check(p: Path):
        try:
            decode_one(p, size)
            return None
        except Exception as exc:  # noqa: BLE001  (any failure to decode is reported by path)
            return [str(p), f"{type(exc).__name__}: {exc}"]

    bad = []
    with concurrent.futures.ThreadPoolExecutor(workers or default_workers()) as pool, \
            tqdm(total=len(paths), desc=f"checking {what}", disable=not progress, leave=False) as bar:
        for result in pool.map(check, paths, chunksize=16):
            if result is not None:
                bad.append(result)
            bar.update(1)
    if cache:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / f"{key[:32]}.scan.json", json.dumps({"key": key, "size": size, "bad": bad}))
    return bad


__all__ = [
    "CACHE_ENV",
    "CACHE_VERSION",
    "RESIZE_METHOD",
    "BadImageError",
    "cache_key",
    "decode_one",
    "default_cache_dir",
    "default_workers",
    "scan_images",
]
