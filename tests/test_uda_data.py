"""The offline domain shifts of issue 9 §4, on small samples (no network, a few seconds).

What is checked: the MNIST-M recipe ``|crop − digit|`` pixel for pixel; that source and target
digits are disjoint mnist10k images and train/test photo crops disjoint photo regions; MNIST's
layout of the 28×28 optdigits (≤ 20 px box, centre of mass at the centre); that every generator
is a function of its seed (same seed → identical bytes); shapes, dtypes and ranges as served;
and the messages of a checksum mismatch and of a missing dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from supercm.data import DATASETS, DOMAIN_PAIRS, DatasetMissingError, domains, load_dataset, load_domain_pair, offline
from supercm.data.offline import FETCHABLE, FetchError

MNIST_LIKE_LABELS = np.repeat(np.arange(10, dtype=np.uint8), 1000)  # mnist10k: sorted by class, ~1000 each


@pytest.fixture(scope="module")
def photos():
    return domains.load_photos()


@pytest.fixture(scope="module")
def fake_mnist():
    rng = np.random.default_rng(123)
    return rng.integers(0, 256, size=(10_000, 28, 28), dtype=np.uint8), MNIST_LIKE_LABELS.copy()


def _fonts():
    fonts = domains.font_files(Path("/"))
    if not fonts:
        pytest.skip("no TrueType fonts under /usr/share/fonts/truetype")
    return fonts[:3]


def test_registered():
    for name in domains.GENERATED:
        assert name in DATASETS and name in FETCHABLE
    assert set(DOMAIN_PAIRS) == {
        "mnist10k->mnistm_style",
        "mnist10k->mnistm_pool",
        "mnist10k->optdigits",
        "optdigits->mnist10k",
        "synth_digits->mnist10k",
    }


# --------------------------------------------------------------------------- mnistm_style


def test_mnist_halves_are_disjoint_and_keep_mnist10k_test_split():
    halves = domains.mnist_halves(MNIST_LIKE_LABELS)
    src, tgt, test = (set(halves[k].tolist()) for k in ("source", "target_train", "test"))
    assert not (src & tgt) and not (src & test) and not (tgt & test)
    assert len(src | tgt | test) == 10_000 and len(test) == 2_000
    assert abs(len(src) - len(tgt)) <= 10  # halves per class (odd class sizes round down for the target)
    y = torch.from_numpy(MNIST_LIKE_LABELS.astype(np.int64))
    mask = offline.stratified_test_mask(y, offline.MNIST10K_TEST_FRACTION, offline.MNIST10K_TEST_SEED)
    assert np.array_equal(halves["test"], np.flatnonzero(mask.numpy()))  # the split load_mnist10k uses
    for c in range(10):  # stratified
        assert np.sum(MNIST_LIKE_LABELS[halves["source"]] == c) == 400


def test_mnistm_recipe_regions_and_determinism(fake_mnist, photos):
    images, labels = fake_mnist
    a = domains.build_mnistm_style(images, labels, photos, seed=5, limit=40)
    b = domains.build_mnistm_style(images, labels, photos, seed=5, limit=40)
    c = domains.build_mnistm_style(images, labels, photos, seed=6, limit=40)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # same seed → identical bytes
    assert not np.array_equal(a["train_images"], c["train_images"])
    assert not set(a["source_index"].tolist()) & set(a["train_index"].tolist())
    for split in ("train", "test"):
        out, crops, index = a[f"{split}_images"], a[f"{split}_crops"], a[f"{split}_index"]
        assert out.shape == (40, 28, 28, 3) and out.dtype == np.uint8
        assert np.array_equal(a[f"{split}_labels"], labels[index])
        for img, (p, top, left), i in zip(out, crops, index):
            crop = photos[p][top : top + 28, left : left + 28].astype(int)
            assert np.array_equal(img, np.abs(crop - images[i].astype(int)[:, :, None]))
            width = photos[p].shape[1]
            lo, hi = (0, width // 2) if split == "train" else (width // 2, width)
            assert lo <= left and left + 28 <= hi  # train crops: left half; test crops: right half


def test_photo_regions_are_disjoint():
    for width in (640, 641, 100):
        (a, b), (c, d) = domains.photo_region(width, "train"), domains.photo_region(width, "test")
        assert a == 0 and b == c and d == width
    with pytest.raises(ValueError):
        domains.photo_region(640, "val")


# --------------------------------------------------------------------------- optdigits


def test_optdigits_in_mnist_layout():
    images, labels = domains.optdigits_raw()
    assert images.shape == (1797, 8, 8) and images.max() == 16
    for im in images[:50]:
        big = domains.to_mnist_format(im)
        assert big.shape == (28, 28) and big.dtype == np.uint8 and big.max() > 200
        rows, cols = np.flatnonzero(big.any(1)), np.flatnonzero(big.any(0))
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= 20
        w = big.astype(float)
        com = ((w.sum(1) * np.arange(28)).sum() / w.sum(), (w.sum(0) * np.arange(28)).sum() / w.sum())
        assert abs(com[0] - 13.5) <= 0.5 + 1e-9 and abs(com[1] - 13.5) <= 0.5 + 1e-9
    assert not domains.to_mnist_format(np.zeros((8, 8))).any()
    a = domains.build_optdigits(images, labels, limit=90)
    b = domains.build_optdigits(images, labels, limit=90)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    for c in range(10):  # stratified: a third of every class is test
        n_c = int(np.sum(labels[:90] == c))
        assert np.sum(a["test_labels"] == c) == round(n_c / 3) and np.sum(a["train_labels"] == c) == n_c - round(
            n_c / 3
        )


# --------------------------------------------------------------------------- synth_digits


def test_synth_digits_deterministic_shapes_and_balanced():
    fonts = _fonts()
    sizes = {"train": 20, "test": 10}
    a = domains.build_synth_digits(fonts, seed=3, sizes=sizes)
    b = domains.build_synth_digits(fonts, seed=3, sizes=sizes)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["train_images"].shape == (20, 28, 28, 3) and a["train_images"].dtype == np.uint8
    assert np.bincount(a["train_labels"], minlength=10).tolist() == [2] * 10
    assert a["train_fonts"].max() < len(fonts)
    # A rendered digit is not blank: foreground and background differ in luma by ≥ 96 before blur.
    luma = a["train_images"].astype(float) @ np.array([0.299, 0.587, 0.114])
    assert (luma.reshape(20, -1).max(1) - luma.reshape(20, -1).min(1) > 40).all()


# --------------------------------------------------------------------------- checksums


def test_checksum_mismatch_message_and_override(monkeypatch, recwarn):
    monkeypatch.delenv(domains.ALLOW_MISMATCH_ENV, raising=False)
    with pytest.raises(FetchError) as err:
        domains.check_digests(
            "optdigits", "arrays", {"a": "1", "b": "2"}, explain="Because.", expected={"a": "1", "b": "3"}
        )
    msg = str(err.value)
    assert "optdigits" in msg and "(b)" in msg and "Because." in msg and domains.ALLOW_MISMATCH_ENV in msg
    monkeypatch.setenv(domains.ALLOW_MISMATCH_ENV, "1")
    with pytest.warns(UserWarning, match="Caching anyway"):
        assert domains.check_digests("optdigits", "arrays", {"a": "2"}, explain="", expected={"a": "1"}) == ["a"]


def test_font_version_mismatch_names_the_packages(tmp_path, monkeypatch):
    monkeypatch.delenv(domains.ALLOW_MISMATCH_ENV, raising=False)
    font = tmp_path / domains.FONT_DIR / "dejavu" / "DejaVuSans.ttf"
    font.parent.mkdir(parents=True)
    font.write_bytes(b"not the recorded font")
    versions = dict(domains.FONT_PACKAGES, **{"fonts-dejavu-core": "2.99-1"})
    monkeypatch.setattr(domains, "gather_fonts", lambda tmp: (tmp_path, versions))
    expected = {"inputs": {"dejavu/DejaVuSans.ttf": "0" * 64}, "arrays": {}}
    monkeypatch.setitem(domains.EXPECTED_SHA256, "synth_digits", expected)
    with pytest.raises(FetchError, match=r"fonts-dejavu-core 2\.99-1 \(recorded 2\.37-6\)"):
        domains.generate("synth_digits", tmp_path, progress=False)


def test_fetch_verifies_generated_arrays_and_can_record_a_mismatch(tmp_path, monkeypatch):
    monkeypatch.delenv(domains.ALLOW_MISMATCH_ENV, raising=False)
    # The real recorded digests: generating optdigits here reproduces them.
    offline.fetch("optdigits", tmp_path)
    ds = load_dataset("optdigits", str(tmp_path))
    assert ds.train_x.shape == (1198, 3, 28, 28) and ds.test_x.shape == (599, 3, 28, 28)
    assert not (tmp_path / "optdigits" / "mismatch.json").exists()
    # A wrong recorded digest: refused, nothing new cached; with the override: cached + noted.
    wrong = {"inputs": domains.EXPECTED_SHA256["optdigits"]["inputs"], "arrays": {"train_images": "0" * 64}}
    monkeypatch.setitem(domains.EXPECTED_SHA256, "optdigits", wrong)
    other = tmp_path / "other"
    with pytest.raises(FetchError, match="arrays differ"):
        offline.fetch("optdigits", other)
    assert not (other / "optdigits" / "optdigits.npz").exists()
    with pytest.warns(UserWarning):
        offline.fetch("optdigits", other, allow_mismatch=True)
    assert (other / "optdigits" / "mismatch.json").is_file()


# --------------------------------------------------------------------------- loaders and pairs


def _write_fake_mnist10k(root, images, labels):
    (root / "mnist10k").mkdir(parents=True)
    np.savez_compressed(root / "mnist10k" / "mnist10k.npz", images=images, labels=labels)


def test_loaders_and_mnistm_pair_from_small_files(tmp_path, fake_mnist, photos):
    images, labels = fake_mnist
    _write_fake_mnist10k(tmp_path, images, labels)
    arrays = domains.build_mnistm_style(images, labels, photos, limit=30)
    (tmp_path / "mnistm_style").mkdir()
    domains.write_generated("mnistm_style", tmp_path / "mnistm_style", arrays)
    pair = load_domain_pair("mnist10k", "mnistm_style", root=tmp_path)
    assert pair.name == "mnist10k->mnistm_style"
    target = pair.target
    assert target.train_x.shape == (30, 3, 28, 28) and target.train_x.dtype == torch.float32
    assert target.augment == {"crop_pad": 2} and target.num_classes == 10
    assert target.train_x.min() >= -1 and target.train_x.max() <= 1
    expected = torch.from_numpy(arrays["train_images"][0]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(target.train_x[0], expected)  # channels from the last axis, x/127.5 − 1
    # The source trains on mnist10k's other half: none of the target's digit images.
    halves = domains.mnist_halves(labels)
    assert pair.source.train_x.shape == (4000, 3, 28, 28)
    src = torch.from_numpy(images[halves["source"]]).float() / 127.5 - 1
    assert torch.equal(pair.source.train_x[:, 0], src) and torch.equal(pair.source.train_x[:, 2], src)
    assert not np.isin(arrays["train_index"], halves["source"]).any()
    assert load_domain_pair("mnist10k->mnistm_style", root=tmp_path).source.test_x.shape[0] == 2000


@pytest.mark.parametrize(
    "pair,missing", [("mnist10k->optdigits", "mnist10k"), ("synth_digits->mnist10k", "synth_digits")]
)
def test_missing_dataset_names_the_fetch_command(tmp_path, pair, missing):
    with pytest.raises(DatasetMissingError, match=rf"supercm fetch-data {missing} --root {tmp_path}"):
        load_domain_pair(pair, root=tmp_path)
    for name in domains.GENERATED:
        with pytest.raises(DatasetMissingError, match=rf"supercm fetch-data {name} --root"):
            load_dataset(name, str(tmp_path))


def test_unknown_pair():
    with pytest.raises(ValueError, match="unknown domain pair"):
        load_domain_pair("mnistm_style", "mnist10k")


def test_fetch_over_a_corrupt_generated_cache_names_the_repair(tmp_path, capsys):
    from supercm.cli import main

    folder = tmp_path / "mnistm_style"
    folder.mkdir()
    (folder / "mnistm_style.npz").write_bytes(b"not a zip file")
    assert main(["fetch-data", "mnistm_style", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is corrupt" in err and "--force" in err
