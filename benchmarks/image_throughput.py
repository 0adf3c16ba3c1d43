"""Images per second of both image pipelines (issue 12 §2): the decoded uint8 cache (``memory``) and
decoding from disk in DataLoader worker processes (``stream``).

    python benchmarks/image_throughput.py                                  # a generated Office-31-sized tree
    python benchmarks/image_throughput.py --root ~/data --dataset office31_amazon --target office31_webcam
    python benchmarks/image_throughput.py --backbone resnet18 --size 64 --crop 56 --images 300 --device cpu
    python benchmarks/image_throughput.py --decode-only --images 600 --workers 1 2   # decoding alone, 256 px
    python benchmarks/image_throughput.py --backbone cnn --side 28 --size 28 --crop 28 --images 300 \
        --workers 1 --tensor-baseline --device cpu                     # the digit-sized case (issue 21 §2)

Without ``--root`` it writes ``--images`` random JPEGs per domain (300×300, like Office-31's Amazon)
under a temporary folder as an ``image_folder`` pair. It measures, in one process:

* **cache build / cache read** (memory pipeline): decode + resize of every image in threads, then a
  second load of the same files from the cache;
* **stream decode**: images/s delivered by the stream pipeline's prefetch (batches of 32 + 32 drawn by
  the trainer's samplers) with each ``--workers`` count, no model; arms interleaved;
* **train steps** of DANN + SuperCM with ``--backbone`` (random weights: throughput does not depend on
  them) at batch 32 + 32, one trainer per pipeline, interleaved (order rotated each repetition):
  seconds per step (median) and the per-repetition ratio stream / memory (median [IQR]);
* ``--tensor-baseline``: a third trainer on the same pixels held as a float tensor with the digit
  pairs' in-memory pipeline (reflect-pad crop of 2, no input stage), the same network and batch: the
  per-repetition ratio memory / tensor is what the image pipeline (uint8 cache, RandomResizedCrop +
  flip on the device, the normalising input stage) costs per step over the plain in-memory one.

``--backbone cnn`` is configs/uda's small CNN (width 16, one conv per block), the digit pairs' network.

Before every timed block each arm runs ``--drain`` untimed steps (reads), so that batches its
prefetch decoded while the other arms ran do not count: the figures are steady-state. Random-noise
JPEGs decode more slowly than photographs (no smooth regions): the images/s are a lower bound for
real data. On a CPU-only machine the stream's workers and the training step share the cores, so the
ratio there is a pessimistic bound for a GPU machine, where the step does not use them. Prints a
summary; ``--out DIR`` writes ``image_throughput.json`` / ``.md`` there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, machine_info, machine_line, markdown_table, ratio_summary, summarize, write_results


def write_tree(folder: Path, n: int, classes: int = 31, side: int = 300) -> None:
    """``n`` random images per domain, ``side`` pixels square: JPEG (like Office-31), PNG at ≤ 64 px (digits)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        for part, label in (("src", i % classes), ("tgt", None)):
            ext = "png" if side <= 64 else "jpg"
            path = folder / part / (f"c{label:02d}" if label is not None else "any") / f"{i:05d}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
            img.save(path, **({"quality": 90} if ext == "jpg" else {}))


def float_pair(pair, crop: int):
    """The same pixels as float [0, 1] tensors with the digit pairs' in-memory pipeline: reflect-pad crop
    of 2, no input stage (what ``configs/uda/mnist10k-to-*`` train on), centre-cropped to ``crop`` so the
    network sees images of the size the image pipeline's RandomResizedCrop gives it."""
    from supercm.data.base import ArrayDataset
    from supercm.data.domains import DomainPair

    def one(d):
        size = d.train_x.shape[-1]
        top = (size - crop) // 2
        d = type(d)(d.name, d.train_x[..., top:top + crop, top:top + crop], d.train_y,
                    d.test_x[..., top:top + crop, top:top + crop], d.test_y, d.num_classes)
        test_x = d.test_x if d.test_x.shape[0] else d.train_x[:2]
        test_y = d.test_y if d.test_y.shape[0] else d.train_y[:2]
        return ArrayDataset(d.name, d.train_x.float() / 255, d.train_y, test_x.float() / 255, test_y,
                            d.num_classes, {"crop_pad": 2})

    return DomainPair("tensor", one(pair.source), one(pair.target))


def interleaved(arms: dict, reps: int, block: int, drain: int, sync) -> dict[str, list[float]]:
    """Seconds per call of each arm per repetition: ``drain`` untimed calls, then ``block`` timed ones,
    arms in an order rotated by one each repetition."""
    names = list(arms)
    out: dict[str, list[float]] = {k: [] for k in names}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            for _ in range(drain):
                arms[name]()
            sync()
            t0 = time.perf_counter()
            for _ in range(block):
                arms[name]()
            sync()
            out[name].append((time.perf_counter() - t0) / block)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="data root of a real benchmark (default: a generated tree)")
    ap.add_argument("--dataset", default="office31_amazon")
    ap.add_argument("--target", default="office31_webcam")
    ap.add_argument("--images", type=int, default=2817, help="generated images per domain (Office-31 Amazon: 2817)")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--side", type=int, default=300, help="side of the generated images (Office-31 Amazon: 300)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--workers", type=int, nargs="+", default=[2],
                    help="stream worker processes to measure decoding with (the train arm uses the last)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per arm")
    ap.add_argument("--steps", type=int, default=5, help="timed train steps (decode: reads of 32) per repetition")
    ap.add_argument("--drain", type=int, default=3, help="untimed steps before each timed block")
    ap.add_argument("--decode-only", action="store_true", help="measure decoding only (no model, no train steps)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the training step (default: 1)")
    ap.add_argument("--tensor-baseline", action="store_true",
                    help="also train on the same pixels as a float tensor (the digit pairs' in-memory pipeline)")
    ap.add_argument("--out", help="write image_throughput.json/.md into this folder")
    a = ap.parse_args()

    import torch
    from common import set_threads

    from supercm.config import from_dict
    from supercm.data import load_uda
    from supercm.data.stream import ImageStore
    from supercm.train import BatchSampler, Trainer, resolve_device

    set_threads(a.threads)
    dev = resolve_device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    info = machine_info()
    result: dict = {"command": command_line(), "machine": info, "size": a.size, "crop": a.crop,
                    "backbone": None if a.decode_only else a.backbone}
    with tempfile.TemporaryDirectory(prefix="supercm-throughput-") as tmp:
        tmp = Path(tmp)
        options = {"size": a.size, "crop": a.crop, "cache_dir": str(tmp / "cache"), "progress": False}
        if a.root is None:
            write_tree(tmp / "tree", a.images, side=a.side)
            name = target = "image_folder"
            options.update(source=str(tmp / "tree" / "src"), target=str(tmp / "tree" / "tgt"))
            root = str(tmp)
        else:
            name, target, root = a.dataset, a.target, a.root
        # Memory pipeline: build the cache (threads), then read it back.
        t0 = time.perf_counter()
        pair = load_uda(name, target, root, **options)
        build = time.perf_counter() - t0
        n = pair.source.train_x.shape[0] + pair.target.train_x.shape[0]
        t0 = time.perf_counter()
        load_uda(name, target, root, **options)
        read = time.perf_counter() - t0
        result.update(images=n, cache_build_images_per_s=n / build, cache_read_images_per_s=n / read)

        # Stream pipeline, decoding alone: the prefetch of two samplers (32 source + 32 target), per worker count.
        streamed = load_uda(name, target, root, **options, pipeline="stream")
        paths = streamed.source.train_x.paths + streamed.target.train_x.paths
        n_src = len(streamed.source.train_x)
        prefetches, arms = [], {}
        for w in a.workers:
            store = ImageStore(paths, a.size, workers=w)
            samplers = [BatchSampler(torch.arange(n_src), 32, 1), BatchSampler(torch.arange(n_src, n), 32, 2)]
            prefetches.append(store.prefetch(samplers))

            def read_step(store=store, samplers=samplers):
                for s in samplers:
                    store[s.next()]

            arms[f"stream_w{w}"] = read_step
        t = interleaved(arms, a.reps, a.steps, a.drain, lambda: None)
        for p in prefetches:
            p.__exit__(None, None, None)
        result["stream_decode"] = {k: {"images_per_s": 64 / summarize(v)["median"], "s_per_64": summarize(v)}
                                   for k, v in t.items()}

        if not a.decode_only:
            w = a.workers[-1]
            trainers = {}
            model_options = ({"width": 16, "convs_per_block": 1} if a.backbone == "cnn"
                             else {"weights": "none", "bottleneck": 256})
            for pipeline in ("memory", "stream") + (("tensor",) if a.tensor_baseline else ()):
                cfg = from_dict({
                    "data": {"name": name, "target": target, "num_validation": 0,
                             "options": {**options, "pipeline": "stream" if pipeline == "stream" else "memory",
                                         "workers": w}},
                    "model": {"backbone": a.backbone, "options": model_options},
                    "method": {"name": "dann"}, "cm": {"beta": 0.3},
                    "optim": {"name": "sgd", "lr": 0.01, "schedule": "annealed", "backbone_lr_mult": 0.1},
                    "train": {"iterations": 10**6, "batch_labeled": 32, "batch_unlabeled": 32, "device": a.device,
                              "progress": False, "tensorboard": False, "ema_decay": 0.0},
                })
                data = {"memory": pair, "stream": streamed}.get(pipeline)
                if pipeline == "tensor":
                    data = float_pair(pair, a.crop)
                    cfg = cfg.replace(**{"data.name": "synthetic", "data.target": "synthetic-target", "data.options": {},
                                         "data.num_labeled": 1})
                trainers[pipeline] = Trainer(cfg, None, dataset=data)
            tr = trainers["stream"]
            prefetch = tr.x_train.prefetch([tr.labeled_sampler, tr.unlabeled_sampler])  # as fit() does
            t = interleaved({k: v.train_step for k, v in trainers.items()}, a.reps, a.steps, a.drain, sync)
            prefetch.__exit__(None, None, None)
            assert tr.x_train.reads["prefetched"] == 2 * a.reps * (a.steps + a.drain), tr.x_train.reads
            result["train"] = {k: {"s_per_step": summarize(v), "images_per_s": 64 / summarize(v)["median"]}
                               for k, v in t.items()}
            result["train"]["stream_workers"] = w
            result["train"]["ratio_stream_over_memory"] = ratio_summary(t["stream"], t["memory"])
            if "tensor" in t:
                result["train"]["ratio_memory_over_tensor"] = ratio_summary(t["memory"], t["tensor"])

    rows = [["memory: cache build (decode + resize, threads)", f"{result['cache_build_images_per_s']:.0f}"],
            ["memory: cache read", f"{result['cache_read_images_per_s']:.0f}"]]
    rows += [[f"stream: decode, {k.removeprefix('stream_w')} worker(s)", f"{v['images_per_s']:.0f}"]
             for k, v in result["stream_decode"].items()]
    if "train" in result:
        tr = result["train"]
        rows += [[f"train step, {k} pipeline ({a.backbone}, batch 32 + 32)", f"{tr[k]['images_per_s']:.1f}"]
                 for k in ("memory", "stream", "tensor") if k in tr]
        r = tr["ratio_stream_over_memory"]
        ratio = f"{r['median']:.3f} [{r['q1']:.3f}–{r['q3']:.3f}]"
    md = (f"`{result['command']}`\n\n{machine_line(info)}\n\n{n} images at {a.size} px"
          f"{'' if a.decode_only else f', crop {a.crop}'}; {a.reps} interleaved repetitions of {a.steps} timed "
          f"steps after {a.drain} untimed ones; medians.\n\n"
          + markdown_table(["what", "images/s"], rows))
    if "train" in result:
        md += f"\n\nTime per step, stream / memory (per repetition, median [IQR]): {ratio}"
        if "ratio_memory_over_tensor" in result["train"]:
            r = result["train"]["ratio_memory_over_tensor"]
            md += (f"\n\nTime per step, image pipeline (uint8 cache) / float tensor (per repetition, median [IQR]): "
                   f"{r['median']:.3f} [{r['q1']:.3f}–{r['q3']:.3f}]")
    print(md)
    if a.out:
        write_results("image_throughput", json.loads(json.dumps(result, default=float)), md, a.out)


if __name__ == "__main__":
    main()
