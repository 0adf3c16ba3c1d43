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

UDA pairs: :func:`load_domain_pair` returns a :class:`DomainPair` (source and target
:class:`ArrayDataset`; the target's training labels are there for evaluation only) for the names
in :data:`DOMAIN_PAIRS`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..fileio import atomic_write
from .base import UNLABELED, ArrayDataset, DatasetCorruptError, DomainPair, FetchError, resolve_root
from .fetchers import FETCHERS, Fetcher, fetch, is_fetched, require_fetched, run_tool
from .offline import MNIST10K_TEST_FRACTION, MNIST10K_TEST_SEED, arrays_dataset, load_mnist10k, stratified_test_mask
from .stream import cat_rows

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
ALLOW_MISMATCH_ENV = "SUPERCM_ALLOW_DATA_MISMATCH"

#: SHA-256 of the inputs (``inputs``) and of every generated array (C order), per dataset.
EXPECTED_SHA256: dict[str, dict[str, dict[str, str]]] = {
    "mnistm_style": {
        "inputs": {
            "mnist10k_images": "0768d16c5adea568dee18fa5e4e1acb117e9ec2c5d6b1dffe5fc29c1e61c1eca",
            "photo0": "e701459344fd69797154c91add3bb5d70e5ed1a61d8bed889bab3a796104698d",
            "photo1": "3202904ed246795bf616c66d7859cd7c6080eff736c6e38dc5cc62779742033f",
        },
        "arrays": {
            "source_index": "bd92fb3a7bfeec3aa755fbe74c8981a7ae218987dcf4b560c3917bde0f693937",
            "test_crops": "37576aff48b7e499a2417dccc44cddad9c5324be013421c486bf0107f5bc5d30",
            "test_images": "f5d316ecf05bdf0017ad651d1b3a8c3a1df90f0744fb6a936644cf915f29fd05",
            "test_index": "bb184d4164286eabcaa98679387abc6775c8456c9a29e53853e6669289b0e169",
            "test_labels": "1e5bdbaab32a4634dd85bb28ecf928e37e756c2dbfe61128763053ca0b78261a",
            "train_crops": "40bafe6b7bc2177302616b21e02fd574319737e82e717171a325c12f29780d02",
            "train_images": "1d59d7b9d77cbc53248be71ed5e981eda9bdb97fb67bc9f03fd502c4c08c2e32",
            "train_index": "5463be86bd6192ceda135d58700bfdec64d70480d81a38169208cbed13c1a593",
            "train_labels": "fbffeb4887dbee72f6dd431a57708c98f395048e3c6f3925661416a58ea326d9",
        },
    },
    "optdigits": {
        "inputs": {
            "images": "20def7f70a702f0af9732fbba4375e147a7d54fe70d8c45569b8e7c1c7010c10",
            "labels": "a3c91c262eddcf7ba8f0e37507c30284493c9b20412ffe4af30d536401f7ba21",
        },
        "arrays": {
            "test_images": "7bc14b51b1d09b0c56676cde4d7b097d16aca25b8baafc4cf01d9330769e3034",
            "test_labels": "0e9a3ed17a67d0c5a299f2ea3616e084a80d4a70c21d2342cd8372a3609db149",
            "train_images": "6fc52e696879aea356ffbf124eb916b2e3302bda535b215877c5601fabcb938c",
            "train_labels": "c11be343c8bb13c9c2cc7451a1cbfab004a56f51de1f250814a7457973f4f00a",
        },
    },
    "synth_digits": {
        "inputs": {
            "dejavu/DejaVuMathTeXGyre.ttf": "f9111561cce123a3b7bdbc230c671b4152265dd1ca6179bc8fac242a6dad0df1",
            "dejavu/DejaVuSans-Bold.ttf": "0d977336a6d5fba34eab8e3199eb218327161b5143749f802982c2bc34df0c96",
            "dejavu/DejaVuSans-BoldOblique.ttf": "b7479266f14d71a019f79cb0ccc23acb6b130483317f7fff16182a0784031c9b",
            "dejavu/DejaVuSans-ExtraLight.ttf": "af1ca215bce59dade18223e4591340f2a07d2e193a87356cd216fcc09da70f02",
            "dejavu/DejaVuSans-Oblique.ttf": "eef1a593cc0a4654f147fd1aa9a11e7d327eb8be6f3a35099182db6aeb5d28fe",
            "dejavu/DejaVuSans.ttf": "abdc775b21b1bc470d50c97e790d276f2054b7504e56e5bd3e64f48d68582322",
            "dejavu/DejaVuSansCondensed-Bold.ttf": "6d2f2481e2aae944e8411cc5be515c69503ff7f5db52f2c67bcbe5d4de6bec13",
            "dejavu/DejaVuSansCondensed-BoldOblique.ttf": "a0c1e726e901341f5b0a0ecae0696fef44de9a004768ba71d69909938caa1421",
            "dejavu/DejaVuSansCondensed-Oblique.ttf": "e35007c431fa7d6c8c8b1aeac60bd68ac14869bb7ed70959c6f027e4cdfa8d35",
            "dejavu/DejaVuSansCondensed.ttf": "2d8aa290adcf1ebcbb35f63e57cf32941b012eaab4b65096b904112cf3bac972",
            "dejavu/DejaVuSansMono-Bold.ttf": "2964f6dac8e6e9d71613928340f17bf868e9ea51692cca333c79e74962f02233",
            "dejavu/DejaVuSansMono-BoldOblique.ttf": "97a099e700f0e0a4f0078c04a970686595c9a6049b5a1defbd22362e20ae1fcf",
            "dejavu/DejaVuSansMono-Oblique.ttf": "db15e83c273e57cd52731c10ebb5b6bbcb0b3e9e5860dec33a66b60a5294f2df",
            "dejavu/DejaVuSansMono.ttf": "0f5db4f1749979d961019838b160bec74abdf7f9eca69553fe1aa856bbff49a4",
            "dejavu/DejaVuSerif-Bold.ttf": "e2fd85eba2de65ac270d1cdb1685e252eb827f600850cf62af2d20c41b22e945",
            "dejavu/DejaVuSerif-BoldItalic.ttf": "c84b722b8da77cb96873a801c9ad1bc3b75d0c847c718696898878f33186c657",
            "dejavu/DejaVuSerif-Italic.ttf": "889a2b9daff9f091f7cf1ff6c88e5c1a5b55b3afb221571393ccb71ec9301ec9",
            "dejavu/DejaVuSerif.ttf": "13e61509f5c81d7c3132810f4f903e3523df89c802bf6e0674621e8f659cdfe1",
            "dejavu/DejaVuSerifCondensed-Bold.ttf": "9432825f095d7bdc4fb445d60b7a91f326e212d041f88cf0c651801f6b7f5668",
            "dejavu/DejaVuSerifCondensed-BoldItalic.ttf": "66b389de31f2a2f64110b9a5da006e3a3e903ead43a3fdbaa91c130ded9d1a8c",
            "dejavu/DejaVuSerifCondensed-Italic.ttf": "c1670c8a103e28767d44c94203a15975bee1cf04c40caffd4a5349b90a779cd0",
            "dejavu/DejaVuSerifCondensed.ttf": "1b3f7840572a81733df8f7a82176d61c19b43c2b110e380bac7ee07e9ac6a66b",
            "freefont/FreeMono.ttf": "1175cc31865a2a1bf011a7711ddab98302343bd679181b360a0e845774c61ecf",
            "freefont/FreeMonoBold.ttf": "30b4b98748839431a366123f859871549b57e461a8b8ec2d3d65b55b2fb9f22d",
            "freefont/FreeMonoBoldOblique.ttf": "897560b2d1678baf96b5d4d3c5203f1bcf41df46fa4fc6dfbcf245ba84c1b130",
            "freefont/FreeMonoOblique.ttf": "e8d854cbb19b7f3b2d7cfc93c8ab31595de1b53f78bb81da595a700ae686e7e8",
            "freefont/FreeSans.ttf": "0b602f2825b30f9faa772c2ca25b1ce05b6255c9bf02dd8ca088ae51f9f737bb",
            "freefont/FreeSansBold.ttf": "e8b93173d6d8214fb74a068663d3721fdca612bbf3f98973dddb7067b131a0cf",
            "freefont/FreeSansBoldOblique.ttf": "69cdc7587112f2b2cf6f460da6ce2c19a983a80905a2863dafe7e5a92ad6e4af",
            "freefont/FreeSansOblique.ttf": "31050ee870617c8c098167dd3df78cde65392abc04ed96fd9304d0b1421a68a9",
            "freefont/FreeSerif.ttf": "12ee050384c99c97a6873708a3aebde3d795de8d8ed069b1a0e3274ab3e5be03",
            "freefont/FreeSerifBold.ttf": "12bd953ceb1fa8c7d7386c3d026bd3b004bf07640d8603cc803db7ceb7d9fb99",
            "freefont/FreeSerifBoldItalic.ttf": "86b1ef902639cbe98e442cdd3aa913e0478a072d79192a9b6e989fd35310de0f",
            "freefont/FreeSerifItalic.ttf": "3049ffb26ed8140c13e21d612d78e18ff3dc20123b85d1f7353a1564163a5e9b",
            "liberation/LiberationMono-Bold.ttf": "267ae0b63fc67980d11fc4cbb630de84d845c6bf350988ec56766baf98706b8b",
            "liberation/LiberationMono-BoldItalic.ttf": "c8f21356b3948b9ae2858b82a5514a8384c53847fde1f9ecd38cb6849582f864",
            "liberation/LiberationMono-Italic.ttf": "8d39f087bf0d103586624233981c048818e1d4bcb74e4c5ca96a34f6caed583d",
            "liberation/LiberationMono-Regular.ttf": "a2e642d350acb1c5e368f375db8a4ef5a2f4ff2b79056d8c3be8bd8a7e9fcb44",
            "liberation/LiberationSans-Bold.ttf": "361c61b82d575c5c35fd9157fda8b0194bcfcd0d88ea8521a4fb5dd53d33dddc",
            "liberation/LiberationSans-BoldItalic.ttf": "a224075ac17495ad0a3af3bc0a419ac0704a8b3fd1095456201fb9b095fc281d",
            "liberation/LiberationSans-Italic.ttf": "832b4406dbef23628800d3aaad21048534ac84d7e3ad955be83b8172ed8ef512",
            "liberation/LiberationSans-Regular.ttf": "f8ace1f892b2bd9dc1792ba7f097fa7588f84fed48321480e04de5390828221f",
            "liberation/LiberationSansNarrow-Bold.ttf": "f77fe6ca01c8b043b99743fad34954c53d625263c076aa844c5a5dbf568743ab",
            "liberation/LiberationSansNarrow-BoldItalic.ttf": "822ef9cfc11f1409f27611f8d128d67105da5ea616f4010b2ab9af76413bda7e",
            "liberation/LiberationSansNarrow-Italic.ttf": "a48c86c13c247fbcf3cdbe9bed3e5abcfa6e91a8f61f3ae190a5893885266e59",
            "liberation/LiberationSansNarrow-Regular.ttf": "ab9719545aeb24156c462601f92bf4897130beaac59ad79bea7da264bce69b19",
            "liberation/LiberationSerif-Bold.ttf": "af228b9de767e5162168e433351b3d0e086648219c6c12ed888fba0bda3694d5",
            "liberation/LiberationSerif-BoldItalic.ttf": "19c8cef87d61197323b0501d0f8676669489658f23417ca661de18d85755af06",
            "liberation/LiberationSerif-Italic.ttf": "ccd19036f8e8599e920345105df8d21eb27a66b700ac23968fb14d70259ddb1e",
            "liberation/LiberationSerif-Regular.ttf": "1c9c77c2cd0f3c2d2aeef53ea50a4d5d3d684ac73a431d7c70d7864887d194a3",
        },
        "arrays": {
            "test_fonts": "79c4cad76a33e2237740cf3f330a7c2f1ba270a753d2e91d285248a3f0feba04",
            "test_images": "24d965f60979e4d6118a391585b2ab8ec1c284dcedbe69abf0de17d8d7e2800b",
            "test_labels": "cf9a790c1dbcc744a3e2056afc4f7d276c8be2683c38355b50f039bba54212a7",
            "train_fonts": "ca3225a7ed8b1556784ebe23ed1280daec05b2bb91e11aa5487cf8614429dad0",
            "train_images": "52db9e30bc290ed7148e15bf6bf3ab9f45309678152343a0d85dca8de9f528a4",
            "train_labels": "81921691f56cf8b44832d6ec3bd4dba0b1eead07dcf608254eef6593ab0d913d",
        },
    },
}


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


def _allow_mismatch(allow: bool | None) -> bool:
    if allow is not None:
        return allow
    return os.environ.get(ALLOW_MISMATCH_ENV, "").strip().lower() in {"1", "true", "yes"}


def check_digests(
    name: str,
    kind: str,
    digests: dict[str, str],
    *,
    explain: str,
    allow_mismatch: bool | None = None,
    expected: dict[str, str] | None = None,
) -> list[str]:
    """Compare ``digests`` with the recorded ones; returns the differing keys (warns) or raises :class:`FetchError`.

    ``explain`` is appended to the message: what differs on this machine and why it matters.
    """
    expected = EXPECTED_SHA256[name][kind] if expected is None else expected
    bad = sorted(k for k in set(expected) | set(digests) if expected.get(k) != digests.get(k))
    if not bad:
        return []
    shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
    message = (
        f"{name}: the {kind} differ from the SHA-256 digests recorded in supercm.data.domains ({shown}). {explain}"
    )
    if _allow_mismatch(allow_mismatch):
        warnings.warn(message + f" Caching anyway because {ALLOW_MISMATCH_ENV} is set.", stacklevel=2)
        return bad
    raise FetchError(
        message + f"\nThe data would not be the bytes every other machine trains on. To build it anyway "
        f"(and record what differs in {name}/mismatch.json), set {ALLOW_MISMATCH_ENV}=1."
    )


def _mnist10k_arrays(root: Path) -> tuple[np.ndarray, np.ndarray]:
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
        images, labels = _mnist10k_arrays(root)
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


def load_mnist10k_source_half(root: str | os.PathLike | None = None) -> ArrayDataset:
    """mnist10k restricted to the training half that ``mnistm_style`` does *not* blend (4,000), test = mnist10k's."""
    images, labels = _mnist10k_arrays(resolve_root(root))
    halves = mnist_halves(labels)
    source_index, test = halves["source"], halves["test"]
    return arrays_dataset(
        "mnist10k_source_half",
        {
            "train_images": images[source_index],
            "train_labels": labels[source_index],
            "test_images": images[test],
            "test_labels": labels[test],
        },
    )


def _mnist10k(root) -> ArrayDataset:
    return load_mnist10k(root)


#: UDA pairs by name ``"SOURCE->TARGET"``: (source loader, target loader), each ``loader(root)``.
#: In ``mnist10k->mnistm_style`` the source is the half of mnist10k's training digits that the
#: target does not blend, so no digit image is on both sides.
DOMAIN_PAIRS: dict[str, tuple[Callable[..., ArrayDataset], Callable[..., ArrayDataset]]] = {
    "mnist10k->mnistm_style": (load_mnist10k_source_half, load_mnistm_style),
    "mnist10k->optdigits": (_mnist10k, load_optdigits),
    "optdigits->mnist10k": (load_optdigits, _mnist10k),
    "synth_digits->mnist10k": (load_synth_digits, _mnist10k),
}


def load_domain_pair(source: str, target: str | None = None, root: str | os.PathLike | None = None) -> DomainPair:
    """Load the UDA pair ``source->target`` (a key of :data:`DOMAIN_PAIRS`; ``source`` may be the whole key).

    Raises :class:`~supercm.data.DatasetMissingError` naming ``supercm fetch-data NAME --root ROOT``
    when a dataset is missing.
    """
    name = source if target is None else f"{source}->{target}"
    if not re.fullmatch(r"[\w]+->[\w]+", name) or name not in DOMAIN_PAIRS:
        raise ValueError(f"unknown domain pair {name!r}; choose one of {', '.join(DOMAIN_PAIRS)}")
    load_source, load_target = DOMAIN_PAIRS[name]
    return DomainPair(name, load_source(root), load_target(root))


def joined_training_set(pair: DomainPair) -> ArrayDataset:
    """``[source train ; target train]`` as one training set, the target test set as its test set.

    The target's training labels are replaced by :data:`UNLABELED`: they never reach the
    trainer, so no loss, selection rule or log can read them.
    """
    s, t = pair.source, pair.target
    if s.input_shape != t.input_shape:
        raise ValueError(
            f"domain pair {pair.name!r}: source samples have shape {s.input_shape} but target samples "
            f"{t.input_shape}; both domains must be brought to one input shape"
        )
    if s.num_classes != t.num_classes:
        raise ValueError(f"domain pair {pair.name!r}: source has {s.num_classes} classes, target {t.num_classes}")
    if s.classes is not None and t.classes is not None and list(s.classes) != list(t.classes):
        raise ValueError(f"domain pair {pair.name!r}: source and target name their classes differently "
                         f"({s.classes[:3]}… vs {t.classes[:3]}…)")
    if s.input_transform != t.input_transform:
        raise ValueError(f"domain pair {pair.name!r}: source and target need different input transforms")
    hidden = torch.full_like(t.train_y, UNLABELED)
    return ArrayDataset(
        pair.name, cat_rows([s.train_x, t.train_x]), torch.cat([s.train_y, hidden]), t.test_x, t.test_y,
        s.num_classes, dict(s.augment), dict(s.input_transform), s.classes,
    )


__all__ = [
    "DOMAIN_PAIRS",
    "UNLABELED",
    "joined_training_set",
    "GENERATED",
    "DomainPair",
    "build_mnistm_style",
    "build_optdigits",
    "build_synth_digits",
    "load_domain_pair",
    "load_mnistm_style",
    "load_optdigits",
    "load_synth_digits",
]
