"""CIFAR-10 load time with and without the GCN + ZCA cache, on CIFAR-sized synthetic files.

Real CIFAR cannot be downloaded on the development machine, so this writes files in
torchvision's CIFAR-10 format with random uint8 pixels (50,000 + 10,000 images, 180 MB) to a
temporary folder and loads them twice with ``load_dataset("cifar10", ...)``: the first load
preprocesses and writes the cache, the second reads it. Timing does not depend on the pixel
values. Needs ~1.5 GB of free disk in the temporary folder and ~4 GB of memory.

    python benchmarks/cifar_cache.py [--tmp DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def write_fake_cifar10(root: Path, per_batch: int = 10000, seed: int = 0) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)

    def batch(name: str) -> None:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        entry = {"batch_label": name, "labels": rng.integers(0, 10, per_batch).tolist(), "data": data, "filenames": []}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)

    for b in range(1, 6):
        batch(f"data_batch_{b}")
    batch("test_batch")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tmp", default=None, help="folder for the synthetic files (default: the system temp dir)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2: loading is not a timed race)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    a = p.parse_args(argv)
    threads = common.set_threads(a.threads)
    machine = common.machine_info()
    import torchvision.datasets.cifar as tv_cifar

    from supercm.data import load_dataset
    from supercm.data.torchvision_sets import CACHE_DIR

    # The synthetic files have no official MD5: check existence only.
    tv_cifar.check_integrity = lambda fpath, md5=None: Path(fpath).is_file()
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        root = Path(tmp)
        write_fake_cifar10(root)
        seconds = {}
        for arm in ("uncached (computes and writes the cache)", "cached"):
            t0 = time.perf_counter()
            ds = load_dataset("cifar10", str(root))
            seconds[arm] = time.perf_counter() - t0
            print(f"{arm}: {seconds[arm]:.1f} s", flush=True)
        size = sum(f.stat().st_size for f in (root / CACHE_DIR).iterdir())
        assert ds.train_x.shape == (50000, 3, 32, 32)
    data = {
        "benchmark": "cifar_cache", "command": common.command_line(), "machine": machine,
        "settings": {"threads": threads, "images": [50000, 10000]},
        "seconds": seconds, "cache_bytes": size,
    }
    md = "\n".join([
        *common.markdown_heading("CIFAR-10 load time with and without the preprocessing cache", data),
        "Synthetic CIFAR-10-sized files (random pixels), torch threads: " + str(threads) + ".",
        "",
        common.markdown_table(["load", "seconds"], [[k, f"{v:.1f}"] for k, v in seconds.items()]),
        "",
        f"Cache file: {size / 2**20:.0f} MiB.",
    ])
    jp, mp = common.write_results("cifar_cache", data, md, a.out)
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    main()
