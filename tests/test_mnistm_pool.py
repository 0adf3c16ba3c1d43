"""``mnistm_pool`` (issue 17 §1): MNIST-M-style digits whose train and test crops come from one pool of
photos. Checked: the recipe ``|crop − digit|``, determinism in the seed, disjoint digit images across
source / target / test, both splits drawing from every photo with matching crop statistics (where
``mnistm_style``'s halves differ), the recorded digests, the pair, and the message when scikit-image
(the ``photos`` extra) is missing."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from supercm.data import DATASETS, DOMAIN_PAIRS, FETCHABLE, MissingExtraError, domains, load_domain_pair, mnistm_pool
from supercm.data.digests import EXPECTED_SHA256

LABELS = np.repeat(np.arange(10, dtype=np.uint8), 1000)  # mnist10k: sorted by class, ~1000 each
HAVE_SKIMAGE = importlib.util.find_spec("skimage") is not None
needs_skimage = pytest.mark.skipif(not HAVE_SKIMAGE, reason="scikit-image (the photos extra) is not installed")


@pytest.fixture(scope="module")
def fake_mnist():
    return np.random.default_rng(123).integers(0, 256, size=(10_000, 28, 28), dtype=np.uint8), LABELS.copy()


@pytest.fixture(scope="module")
def fake_pool():
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in ((40, 60), (64, 33), (28, 28))]


def test_registered_as_dataset_fetcher_and_pair():
    assert "mnistm_pool" in DATASETS and "mnistm_pool" in FETCHABLE
    assert "mnist10k->mnistm_pool" in DOMAIN_PAIRS
    assert set(EXPECTED_SHA256["mnistm_pool"]["arrays"]) == set(EXPECTED_SHA256["mnistm_style"]["arrays"])


def test_recipe_one_pool_and_determinism(fake_mnist, fake_pool):
    images, labels = fake_mnist
    a = mnistm_pool.build_mnistm_pool(images, labels, fake_pool, limit=600)
    b = mnistm_pool.build_mnistm_pool(images, labels, fake_pool, limit=600)
    c = mnistm_pool.build_mnistm_pool(images, labels, fake_pool, seed=mnistm_pool.MNISTM_POOL_SEED + 1, limit=600)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # a function of the seed
    assert not np.array_equal(a["train_images"], c["train_images"])
    for split in ("train", "test"):
        crops, index = a[f"{split}_crops"], a[f"{split}_index"]
        assert set(crops[:, 0].tolist()) == {0, 1, 2}  # both splits draw from every photo of the pool
        for (p, top, left), i, out in zip(crops[:20], index[:20], a[f"{split}_images"][:20]):
            photo = fake_pool[p]
            assert 0 <= top <= photo.shape[0] - 28 and 0 <= left <= photo.shape[1] - 28
            crop = photo[top : top + 28, left : left + 28].astype(int)
            assert np.array_equal(out, np.abs(crop - images[i].astype(int)[:, :, None]))


def test_digit_images_are_disjoint_across_source_target_and_test(fake_mnist, fake_pool):
    images, labels = fake_mnist
    a = mnistm_pool.build_mnistm_pool(images, labels, fake_pool)
    src, tr, te = (set(a[k].tolist()) for k in ("source_index", "train_index", "test_index"))
    assert not (src & tr) and not (src & te) and not (tr & te)
    assert (len(src), len(tr), len(te)) == (4000, 4000, 2000)
    # The same digits and the same split as mnistm_style: results on the two targets compare.
    style = domains.mnist_halves(labels)
    assert np.array_equal(a["source_index"], style["source"]) and np.array_equal(a["train_index"], style["target_train"])


@needs_skimage
def test_pool_photos_match_their_digests():
    photos = mnistm_pool.load_pool()
    assert len(photos) == len(mnistm_pool.POOL) == 7
    recorded = EXPECTED_SHA256["mnistm_pool"]["inputs"]
    assert [domains.sha256_array(p) for p in photos] == [recorded[f"photo{i}"] for i in range(7)]
    assert recorded["mnist10k_images"] == EXPECTED_SHA256["mnistm_style"]["inputs"]["mnist10k_images"]


@needs_skimage
def test_train_and_test_crops_have_the_same_statistics(fake_mnist):
    """Near-flat (luma std < 15) and bright (mean luma > 150) crops: mnistm_style's left/right halves
    differ by ~17 points; the pool's splits agree within sampling noise (the crop positions do not
    depend on the digits' pixels, so mnist10k's stand-ins give the real positions)."""
    images, labels = fake_mnist
    pool = mnistm_pool.load_pool()
    a = mnistm_pool.build_mnistm_pool(images, labels, pool)
    train, test = (mnistm_pool.crop_statistics(pool, a[f"{s}_crops"]) for s in ("train", "test"))
    assert abs(train["near_flat"] - test["near_flat"]) < 0.04 and abs(train["bright"] - test["bright"]) < 0.04
    photos = domains.load_photos()
    style = domains.build_mnistm_style(images, labels, photos)
    old_train, old_test = (mnistm_pool.crop_statistics(photos, style[f"{s}_crops"]) for s in ("train", "test"))
    assert old_test["near_flat"] - old_train["near_flat"] > 0.1 and old_test["bright"] - old_train["bright"] > 0.1


@needs_skimage
def test_generated_arrays_match_their_digests_and_load_as_a_pair(tmp_path, fake_mnist, monkeypatch):
    """The fetcher's whole path (inputs checked, arrays built and checked, cached, loaded) on stand-in
    digits whose digests are recorded here; the real digests are checked by ``supercm fetch-data``."""
    images, labels = fake_mnist
    (tmp_path / "mnist10k").mkdir()
    np.savez_compressed(tmp_path / "mnist10k" / "mnist10k.npz", images=images, labels=labels)
    arrays = mnistm_pool.build_mnistm_pool(images, labels, mnistm_pool.load_pool())
    inputs = {**EXPECTED_SHA256["mnistm_pool"]["inputs"], "mnist10k_images": domains.sha256_array(images)}
    monkeypatch.setitem(EXPECTED_SHA256, "mnistm_pool",
                        {"inputs": inputs, "arrays": {k: domains.sha256_array(v) for k, v in arrays.items()}})
    from supercm.data import fetch

    fetch("mnistm_pool", tmp_path)
    pair = load_domain_pair("mnist10k->mnistm_pool", root=tmp_path)
    assert pair.target.train_x.shape == (4000, 3, 28, 28) and pair.target.test_x.shape == (2000, 3, 28, 28)
    expected = torch.from_numpy(arrays["test_images"][3]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(pair.target.test_x[3], expected)
    assert pair.source.train_x.shape[0] == 4000


def test_missing_scikit_image_names_the_extra(tmp_path, monkeypatch, capsys):
    from supercm.cli import main

    monkeypatch.setitem(sys.modules, "skimage", None)  # find_spec then answers None: not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'supercm\[photos\]'"):
        mnistm_pool.load_pool()
    assert main(["fetch-data", "mnistm_pool", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "supercm[photos]" in err
    assert not (tmp_path / "mnist10k").exists()  # nothing fetched before the check

