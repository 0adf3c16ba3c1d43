"""``mnistm_pool``: MNIST-M-style digits whose train and test crops come from ONE pool of photos (issue 17 §1).

``mnistm_style`` (:mod:`supercm.data.domains`) crops its target-train images from the left half of two
photos and its test images from the right half, so its two splits differ (near-flat crops 46 % vs 64 %,
bright backgrounds 20 % vs 37 %: :func:`crop_statistics`; here 41 % vs 41 % and 23 % vs 25 %). MNIST-M (Ganin & Lempitsky 2015) draws
both splits' crops from one pool, BSDS500. ``mnistm_pool`` does the same with every public-domain or
CC0 colour *photograph* that ships in a package (:data:`POOL`): scikit-learn's two sample photos and
five of the images inside the scikit-image wheel (astronaut, chelsea, coffee, rocket: public domain or CC0
by their docstrings; ihc: "no known copyright restrictions") (read from its ``skimage/data`` folder with Pillow;
none needs scikit-image's network fetcher). Left out: ``motorcycle_left/right`` (Middlebury stereo,
no licence stated), ``color.png`` (a synthetic colour wheel), ``hubble_deep_field.jpg`` and
``retina.jpg`` (mostly black: a crop would leave the plain digit).

Recipe, as ``mnistm_style`` otherwise: ``out = |crop − digit|`` per channel, digits from mnist10k split
exactly as for ``mnistm_style`` (:func:`~supercm.data.domains.mnist_halves`: the pair's source is the
other half of mnist10k's training digits, the test split blends mnist10k's test digits), 3,998 train /
2,000 test. Each digit gets a photo drawn uniformly from the pool and a crop position uniform over the
whole photo, from one ``numpy.random.Generator`` (:data:`MNISTM_POOL_SEED`), for both splits alike.
Inputs (mnist10k's bytes, each decoded photo) and every generated array are checked against the SHA-256
digests in :mod:`supercm.data.digests`. ``mnistm_style`` is unchanged, byte for byte.

Fetching needs scikit-image (``pip install 'supercm[photos]'``); loading the cached dataset does not.
"""

from __future__ import annotations

import importlib.util
import os
from functools import partial
from pathlib import Path

import numpy as np

from .base import ArrayDataset, FetchError, MissingExtraError
from .digests import check_digests
from .domains import load_photos, mnist10k_arrays, mnist_halves, read_generated, sha256_array, write_generated
from .fetchers import FETCHERS, Fetcher, fetch, is_fetched
from .offline import arrays_dataset

NAME = "mnistm_pool"
#: Seed of the photo choices and crop positions.
MNISTM_POOL_SEED = 17
#: The scikit-image files of the pool (in ``skimage/data``), after scikit-learn's china.jpg and flower.jpg.
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "ihc.png")
#: The pool, in the order of the ``photo`` column of ``{split}_crops``.
POOL = ("sklearn:china.jpg", "sklearn:flower.jpg", *(f"skimage:{f}" for f in SKIMAGE_PHOTOS))
#: scikit-image's version when the digests were recorded.
RECORDED_SKIMAGE = "0.26.0"
INSTALL_HINT = "pip install 'supercm[photos]' (or: pip install scikit-image)"


def skimage_data_dir() -> Path:
    """scikit-image's bundled data folder (located without importing scikit-image); a one-line
    :class:`~supercm.data.base.FetchError` naming the extra to install when it is missing."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(f"{NAME} crops scikit-image's bundled photos, and scikit-image is not installed: "
                                f"{INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def skimage_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scikit-image")
    except PackageNotFoundError:
        return "unknown"


def load_pool() -> list[np.ndarray]:
    """The photos of :data:`POOL` as uint8 (h, w, 3) arrays (decoded by Pillow)."""
    from PIL import Image

    folder = skimage_data_dir()
    photos = load_photos()
    for name in SKIMAGE_PHOTOS:
        path = folder / name
        if not path.is_file():
            raise FetchError(f"{NAME}: {path} is not in this scikit-image ({skimage_version()}; the digests were "
                             f"recorded with {RECORDED_SKIMAGE}): install a scikit-image wheel that ships it")
        with Image.open(path) as im:
            photos.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return photos


def blend_from_pool(digits: np.ndarray, photos: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``|crop − digit|`` of uint8 ``digits`` (N, 28, 28) with a photo of ``photos`` drawn uniformly and a
    28×28 crop anywhere in it; returns the images (N, 28, 28, 3) and the crops (N, 3) as ``(photo, top, left)``."""
    n = digits.shape[0]
    which = rng.integers(len(photos), size=n)
    sizes = np.array([p.shape[:2] for p in photos])[which]
    tops = rng.integers(0, sizes[:, 0] - 28 + 1)
    lefts = rng.integers(0, sizes[:, 1] - 28 + 1)
    out = np.empty((n, 28, 28, 3), np.uint8)
    for i in range(n):
        crop = photos[which[i]][tops[i] : tops[i] + 28, lefts[i] : lefts[i] + 28].astype(np.int16)
        out[i] = np.abs(crop - digits[i].astype(np.int16)[:, :, None]).astype(np.uint8)
    return out, np.stack([which.astype(np.int64), tops, lefts], axis=1)


def build_mnistm_pool(images: np.ndarray, labels: np.ndarray, photos: list[np.ndarray], *, seed: int = MNISTM_POOL_SEED,
                      limit: int | None = None) -> dict[str, np.ndarray]:
    """Arrays of ``mnistm_pool`` from mnist10k's ``images``/``labels``, keyed as ``mnistm_style``'s
    (:func:`~supercm.data.domains.build_mnistm_style`); ``limit`` keeps the first indices of each split."""
    halves = mnist_halves(labels)
    rng = np.random.default_rng(seed)
    out = {"source_index": halves["source"][:limit]}
    for split, key in (("train", "target_train"), ("test", "test")):
        index = halves[key][:limit]
        blended, crops = blend_from_pool(images[index], photos, rng)
        out.update({f"{split}_images": blended, f"{split}_labels": labels[index].astype(np.uint8),
                    f"{split}_crops": crops, f"{split}_index": index})
    return out


def crop_statistics(photos: list[np.ndarray], crops: np.ndarray, *, flat_std: float = 15.0,
                    bright_mean: float = 150.0) -> dict[str, float]:
    """Fractions of ``crops`` (rows ``(photo, top, left)``) that are *near-flat* (std of the crop's luma
    0.299 R + 0.587 G + 0.114 B below ``flat_std``) and *bright* (mean luma above ``bright_mean``), on 0…255."""
    luma = np.array([0.299, 0.587, 0.114])
    patches = np.stack([photos[p][t : t + 28, l : l + 28] @ luma for p, t, l in crops])
    flat = patches.reshape(len(crops), -1)
    return {"near_flat": float((flat.std(axis=1) < flat_std).mean()),
            "bright": float((flat.mean(axis=1) > bright_mean).mean())}


def generate_mnistm_pool(root: Path, *, allow_mismatch: bool | None = None) -> dict:
    """Build the arrays (fetching mnist10k under ``root`` first if missing) and check inputs and outputs."""
    photos = load_pool()  # first: a missing scikit-image fails before anything is fetched
    if not is_fetched("mnist10k", root):
        fetch("mnist10k", root)
    images, labels = mnist10k_arrays(root)
    mismatched = {"inputs": check_digests(
        NAME, "inputs",
        {"mnist10k_images": sha256_array(images), **{f"photo{i}": sha256_array(p) for i, p in enumerate(photos)}},
        explain=f"The photos are decoded by Pillow from scikit-learn's and scikit-image's files (scikit-image here: "
                f"{skimage_version()}, recorded with {RECORDED_SKIMAGE}); another version may ship other bytes.",
        allow_mismatch=allow_mismatch)}
    arrays = build_mnistm_pool(images, labels, photos)
    mismatched["arrays"] = check_digests(
        NAME, "arrays", {k: sha256_array(v) for k, v in arrays.items()},
        explain="The inputs matched, so the blending code or numpy's Generator changed.", allow_mismatch=allow_mismatch)
    if any(mismatched.values()):
        arrays["_mismatch"] = mismatched  # type: ignore[assignment]
    return arrays


def fetch_mnistm_pool(name: str, dest: Path, *, allow_mismatch: bool | None = None) -> None:
    """The fetcher's ``build``: generate into ``dest`` (``ROOT/mnistm_pool``)."""
    write_generated(name, dest, generate_mnistm_pool(dest.parent, allow_mismatch=allow_mismatch))


FETCHERS.register(NAME, Fetcher((f"{NAME}.npz",), fetch_mnistm_pool, partial(read_generated, verify=True)))


def load_mnistm_pool(root: str | os.PathLike | None = None) -> ArrayDataset:
    """MNIST-M-style digits on one pool of photos: 3,998 train / 2,000 test, (N, 3, 28, 28) float32 in [−1, 1]."""
    return arrays_dataset(NAME, read_generated(NAME, root))


__all__ = ["MNISTM_POOL_SEED", "POOL", "build_mnistm_pool", "crop_statistics", "load_mnistm_pool", "load_pool"]
