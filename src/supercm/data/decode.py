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
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..fileio import atomic_write
from .base import default_data_root

#: Version of the cache format and of the decode/resize recipe; part of every cache key.
CACHE_VERSION = 2  # 2: 16-bit, float, transparent and EXIF-rotated images read as a viewer shows them
RESIZE_METHOD = "PIL.Image.resize(BICUBIC) of decode_noted's RGB"
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
    default, which the field's ``ResizeImage`` uses). See :func:`decode_noted` for each image mode."""
    return decode_noted(path, size)[0]


def decode_noted(path: Path, size: int) -> tuple[np.ndarray, str | None]:
    """:func:`decode_one`, and a note when reading the file involved a choice the user should know of.

    What each mode Pillow opens becomes (8-bit RGB, as a viewer shows the file):

    * ``RGB``, ``L`` (8-bit grey), ``P`` (palette), ``1`` (1-bit: 0/255), ``CMYK`` (Pillow's
      conversion, as the field's loaders do; Adobe's inverted CMYK JPEGs are read right by Pillow),
      ``YCbCr``: Pillow's ``convert("RGB")`` — exact, no note;
    * the EXIF (or TIFF) orientation is applied first, as every viewer does: a phone photo stored
      sideways is read upright;
    * ``I;16*`` (16-bit grey PNG/TIFF) and ``I`` (32-bit integer): the 16-bit range [0, 65535] mapped to
      [0, 255] (``/ 257``; ``convert("RGB")`` would clip every value above 255 to white); values outside
      it are rescaled from their min–max, with a note;
    * ``F`` (float TIFF): [0, 1] → [0, 255]; values already in [0, 255] are kept; any other range is
      rescaled from its min–max, with a note; NaN/inf pixels read as 0, with a note;
    * transparency (``RGBA``, ``LA``, ``PA``, a palette or grey image with a transparent colour): the
      image composited on white, with a note when a pixel is not opaque (an opaque alpha is dropped);
    * several frames (animated GIF/WebP, multi-page TIFF): the first, with a note;
    * ``LAB``, ``HSV``: Pillow's colour conversion to RGB, no note;
    * a mode Pillow cannot bring to RGB: the file is a bad image, reported by path
      (``data.options.bad_images``).
    """
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        notes = []
        if getattr(im, "n_frames", 1) > 1:
            notes.append(f"{im.n_frames} frames: the first is read")
        im = ImageOps.exif_transpose(im)  # upright, as a viewer shows it
        rgb, note = _as_rgb(im)
        if note:
            notes.append(note)
        rgb = rgb.resize((size, size), Image.BICUBIC)
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1), "; ".join(notes) or None


def _grey(values: np.ndarray, note: str | None):
    from PIL import Image

    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB"), note


def _rescaled(a: np.ndarray, what: str) -> tuple[np.ndarray, str]:
    lo, hi = float(a.min()), float(a.max())
    scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return scaled, f"{what} in [{lo:g}, {hi:g}]: rescaled to [0, 255]"


def _as_rgb(im):
    """``im`` as an 8-bit RGB image, and a note for a conversion that is a choice (see :func:`decode_noted`)."""
    from PIL import Image

    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        if a.min() < 0 or a.max() > 65535:
            return _grey(*_rescaled(a, "integer pixels"))
        return _grey(a / 257.0, None)
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        note = None
        if not np.isfinite(a).all():
            a, note = np.where(np.isfinite(a), a, 0.0), "NaN/inf pixels read as 0"
        if a.min() >= 0 and a.max() <= 1:
            return _grey(a * 255.0, note)
        if a.min() >= 0 and a.max() <= 255:
            return _grey(a, note)
        a, why = _rescaled(a, "float pixels")
        return _grey(a, f"{note}; {why}" if note else why)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] == 255:
            return rgba.convert("RGB"), None
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), "transparent pixels composited on white"
    return im.convert("RGB"), None


def warn_cache_unwritable(folder: Path, exc: OSError) -> None:
    """The decoded-image cache cannot be written: say which knobs fix it (the run goes on without it)."""
    why = exc.strerror or type(exc).__name__
    warnings.warn(f"cannot write the decoded-image cache in {folder} ({why}); the images are decoded and used, "
                  f"but will be decoded again by the next run: set data.options.cache_dir (or ${CACHE_ENV}) to a "
                  f"writable folder, or data.options.cache=false", stacklevel=3)


def warn_converted(notes: list, count: int | None, what: str, *, more: str = "") -> None:
    """One warning naming the images whose reading involved a choice (see :func:`decode_noted`)."""
    if notes:
        counted = f"{len(notes)} of {count} images were" if count is not None else "images were"
        warnings.warn(f"{what}: {counted} converted to 8-bit RGB with a choice (see supercm.data.decode.decode_noted): "
                      f"{listing(notes)}{more}", stacklevel=3)


def listing(bad: list) -> str:
    """The first ten undecodable images as 'path (why)', and how many more."""
    return "; ".join(f"{p} ({why})" for p, why in bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")


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
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / f"{key[:32]}.scan.json", json.dumps({"key": key, "size": size, "bad": bad}))
        except OSError as exc:  # the scan is used; only its reuse is lost
            warn_cache_unwritable(folder, exc)
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
