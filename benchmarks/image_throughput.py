"""Images per second of the in-memory image pipeline (issue 12 §2): building the decoded uint8 cache,
and training steps that read it (on-device RandomResizedCrop + flip, the model's input stage).

    python benchmarks/image_throughput.py                                  # a generated Office-31-sized tree
    python benchmarks/image_throughput.py --root ~/data --dataset office31_amazon --target office31_webcam
    python benchmarks/image_throughput.py --backbone resnet18 --size 40 --crop 32 --steps 5 --device cpu  # smoke

Without ``--root`` it writes ``--images`` random JPEGs (300×300, like Office-31's Amazon) under a
temporary folder as an ``image_folder`` pair. It reports: cache build (decode + resize, threads),
cache read (a second load of the same files), and train steps of DANN + SuperCM with ``--backbone``
(random weights: throughput does not depend on them) at batch 32 + 32. The first ``--warmup`` steps are
not timed. Prints one JSON line; quote it with the device's name.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def write_tree(folder: Path, n: int, classes: int = 31, side: int = 300) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        for part, label in (("src", i % classes), ("tgt", None)):
            path = folder / part / (f"c{label:02d}" if label is not None else "any") / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path, quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="data root of a real benchmark (default: a generated tree)")
    ap.add_argument("--dataset", default="office31_amazon")
    ap.add_argument("--target", default="office31_webcam")
    ap.add_argument("--images", type=int, default=2817, help="generated images per domain (Office-31 Amazon: 2817)")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()

    import torch

    from supercm.config import from_dict
    from supercm.data import load_uda
    from supercm.train import Trainer, resolve_device

    with tempfile.TemporaryDirectory(prefix="supercm-throughput-") as tmp:
        tmp = Path(tmp)
        options = {"size": a.size, "crop": a.crop, "cache_dir": str(tmp / "cache"), "progress": False}
        if a.root is None:
            write_tree(tmp / "tree", a.images)
            name = target = "image_folder"
            options.update(source=str(tmp / "tree" / "src"), target=str(tmp / "tree" / "tgt"))
            root = str(tmp)
        else:
            name, target, root = a.dataset, a.target, a.root
        t0 = time.perf_counter()
        pair = load_uda(name, target, root, **options)
        build = time.perf_counter() - t0
        n = pair.source.train_x.shape[0] + pair.target.train_x.shape[0]
        t0 = time.perf_counter()
        load_uda(name, target, root, **options)
        read = time.perf_counter() - t0

        cfg = from_dict({
            "data": {"name": name, "target": target, "num_validation": 0, "options": options},
            "model": {"backbone": a.backbone, "options": {"weights": "none", "bottleneck": 256}},
            "method": {"name": "dann"}, "cm": {"beta": 0.3},
            "optim": {"name": "sgd", "lr": 0.01, "schedule": "annealed", "backbone_lr_mult": 0.1},
            "train": {"iterations": a.steps + a.warmup, "batch_labeled": 32, "batch_unlabeled": 32,
                      "device": a.device, "progress": False, "tensorboard": False, "ema_decay": 0.0},
        })
        trainer = Trainer(cfg, None, dataset=pair)
        dev = resolve_device(a.device)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        for _ in range(a.warmup):
            trainer.train_step()
        sync()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            trainer.train_step()
        sync()
        steps = time.perf_counter() - t0
    device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(json.dumps({
        "device": device, "backbone": a.backbone, "size": a.size, "crop": a.crop, "images": n,
        "cache_build_images_per_s": round(n / build, 1), "cache_read_images_per_s": round(n / read, 1),
        "train_images_per_s": round(64 * a.steps / steps, 1), "train_steps": a.steps,
    }))


if __name__ == "__main__":
    main()
