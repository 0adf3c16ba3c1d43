"""Every GPU figure the project lacks, in one command that fits in 8 minutes of one CUDA device (issue 21 §3).

    python benchmarks/gpu_suite.py --out benchmarks/results/gpu      # on the GPU machine: ≤ 8 min
    python benchmarks/gpu_suite.py --smoke --out /tmp/gpu-smoke      # tiny sizes on the CPU (the tests run it)

What it measures, through ``Trainer.train_step(check=False)`` (the step ``fit()`` runs), random weights
and synthetic data (throughput does not depend on either):

* **SSL, WRN-28-2, 3×32×32** (flip + crop + noise, one draw per batch, Adam, weight-EMA 0.99): CE
  (``supervised``), VAT and Mean Teacher, each without and with SuperCM (β = 1, centroids from the
  training pass), at 64 + 448 (the paper's CIFAR batch) and 50 + 50 (the configs' batch);
* **UDA, ResNet-50 + 256-d bottleneck at 224 px**: uint8 256 px images, RandomResizedCrop(224) + flip
  on the device and the ImageNet input stage (the field's protocol), batch 32 + 32, SGD; DANN and MCC,
  each ± SuperCM;

each in ``fp32``, ``bf16`` (autocast) and ``bf16-compile-cl`` (bf16 + ``train.compile`` +
``train.channels_last``). For every arm: seconds per step (median over repetitions) and images/s;
SuperCM's overhead (the ± SuperCM trainers of one cell stepped *interleaved*, ratio per repetition,
median [IQR]); the **GPU busy fraction** (``torch.profiler`` over a few steps: the union of the device's
kernel and copy intervals over the span of the profiled steps; on the CPU the union of top-level
torch ops, labelled as such); **host syncs per step** (``torch.cuda.set_sync_debug_mode("warn")``,
one warning per synchronising call, counted; CUDA only); **peak memory** (``max_memory_allocated``
during the timed steps; CUDA only). Then the **stream pipeline**: images/s its ``--workers`` decoding
processes deliver (random 300×300 JPEGs → 256 px, batches of 32 + 32 from the trainer's samplers) against
the fastest measured UDA step's demand.

**Time budget.** ``--budget`` seconds of wall time (default 450, under the 8 minutes with room for
start-up and the output). Cells run in priority order (fp32 and bf16 of every method first, the
compiled arms last, the stream pipeline in between); a cell whose estimate does not fit in what is left
is skipped and listed under ``skipped`` with the reason, so the run always ends, and says what it left
out. Each cell's own timing stops early when its share runs out (fewer repetitions, noted).

Output: ``gpu_suite.json`` and ``gpu_suite.md`` (card name, torch and CUDA versions, the table) in
``--out``. ``--smoke`` runs the same code at tiny sizes on the CPU (a width-4 CNN in place of both
backbones, 2 + 2 images, 40 px uint8 → 32 px crops for UDA, one step per repetition, 2 decoding workers,
1 thread; fp32 and bf16, the compiled arm left out: its compilation alone takes a minute on a CPU) in
about half a minute; ``tests/test_benchmarks.py`` runs it so the suite cannot rot before a GPU appears.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from supercm.config import from_dict  # noqa: E402
from supercm.data.base import ArrayDataset  # noqa: E402
from supercm.data.domains import DomainPair  # noqa: E402
from supercm.data.images import field_transforms  # noqa: E402
from supercm.train import BatchSampler, Trainer  # noqa: E402

SSL_METHODS = ("supervised", "vat", "mean_teacher")
UDA_METHODS = ("dann", "mcc")
#: arm → train.* settings.
PRECISIONS = {
    "fp32": {"precision": "fp32"},
    "bf16": {"precision": "bf16"},
    "bf16-compile-cl": {"precision": "bf16", "compile": True, "channels_last": True},
}
SSL_AUGMENT = {"flip": True, "crop_pad": 2, "noise_std": 0.15}

#: Sizes of the full run (one GPU) and of ``--smoke`` (the CPU, in the tests).
FULL = {"ssl_backbone": ("wrn28_2", {}), "uda_backbone": ("resnet50", {"weights": "none", "bottleneck": 256}),
        "ssl_batches": [(64, 448), (50, 50)], "uda_batch": (32, 32), "uda_size": 256, "uda_crop": 224,
        "warmup": 3, "reps": 7, "steps": 3, "profile_steps": 3, "workers": 8, "stream_images": 1024,
        "budget": 450.0, "precisions": list(PRECISIONS), "images": 2048}
SMOKE = {"ssl_backbone": ("cnn", {"width": 4, "convs_per_block": 1}),
         "uda_backbone": ("cnn", {"width": 4, "convs_per_block": 1}), "ssl_batches": [(2, 2)], "uda_batch": (2, 2), "uda_size": 40, "uda_crop": 32,
         "warmup": 1, "reps": 2, "steps": 1, "profile_steps": 1, "workers": 2, "stream_images": 24,
         "budget": 120.0, "precisions": ["fp32", "bf16"], "images": 16}


# ----------------------------------------------------------------------------- trainers
def _ssl_data(n: int, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset("synthetic", torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g),
                        torch.randn(20, 3, 32, 32, generator=g), torch.randint(0, 10, (20,), generator=g), 10,
                        dict(SSL_AUGMENT))


def _uda_data(n: int, size: int, crop: int) -> DomainPair:
    augment, transform = field_transforms(crop)

    def domain(name, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
        y = torch.arange(n) % 31  # every class in the source (the split draws labeled rows per class)
        return ArrayDataset(name, x, y, x[:8], y[:8], 31, augment, transform)

    return DomainPair("synthetic->synthetic-target", domain("synthetic", 0), domain("synthetic-target", 1))


def build(kind: str, method: str, batch: tuple[int, int], precision: str, supercm: bool, device: str,
          sizes: dict) -> Trainer:
    """The trainer of one arm: ``kind`` "ssl" (WRN-28-2) or "uda" (ResNet-50 at the crop size; ``--smoke``:
    a tiny CNN for both, the same code path otherwise)."""
    train = {"batch_labeled": batch[0], "batch_unlabeled": batch[1], "device": device, "progress": False,
             "tensorboard": False, "seed": 0, **PRECISIONS[precision]}
    cm = {"beta": 1.0 if supercm else 0.0, "features": "reuse"}
    if kind == "ssl":
        options = {"decay": 0.95} if method == "mean_teacher" else {}
        cfg = {"data": {"name": "synthetic", "num_labeled": max(100, 2 * batch[0]), "num_validation": 0,
                        "augment_draw": "batch"},
               "model": {"backbone": sizes["ssl_backbone"][0], "options": sizes["ssl_backbone"][1]}, "cm": cm,
               "method": {"name": method, "delta": 1.0, "rampup": 0, "options": options},
               "optim": {"name": "adam", "lr": 1e-3}, "train": {**train, "ema_decay": 0.99}}
        n = max(600, 2 * (batch[0] + batch[1]))
        return Trainer(from_dict(cfg), None, dataset=_ssl_data(n))
    cfg = {"data": {"name": "synthetic", "target": "synthetic-target", "num_labeled": 1, "num_validation": 0},
           "model": {"backbone": sizes["uda_backbone"][0], "options": sizes["uda_backbone"][1]}, "cm": cm,
           "method": {"name": method, "delta": 1.0, "rampup": 0},
           "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3,
                     "schedule": "annealed", "backbone_lr_mult": 0.1},
           "train": {**train, "ema_decay": 0.0}}
    n = max(2 * batch[0], 62)
    return Trainer(from_dict(cfg), None, dataset=_uda_data(n, sizes["uda_size"], sizes["uda_crop"]))


# ----------------------------------------------------------------------------- measurements
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def union_fraction(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Fraction of [start, end] covered by the union of ``intervals`` (clipped to it)."""
    if end <= start:
        return 0.0
    covered, reach = 0.0, start
    for a, b in sorted((max(a, start), min(b, end)) for a, b in intervals):
        if b <= reach:
            continue
        covered += b - max(a, reach)
        reach = b
    return covered / (end - start)


def busy_fraction(step, steps: int, device: torch.device) -> float | None:
    """Share of the wall time of ``steps`` profiled steps during which the device ran kernels or copies
    (CUDA); on the CPU the share spent inside top-level torch ops (what the profiler can see there)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    _sync(device)
    with profile(activities=activities) as prof:
        _sync(device)
        for _ in range(steps):
            step()
        _sync(device)
    if cuda:
        return _device_busy(prof)
    events = list(prof.events())
    if not events:
        return None
    spans = [(e.time_range.start, e.time_range.end) for e in events]
    start, end = min(a for a, _ in spans), max(b for _, b in spans)
    mine = [(e.time_range.start, e.time_range.end) for e in events if e.cpu_parent is None]
    return union_fraction(mine, start, end)


def _device_busy(prof) -> float | None:
    """CUDA: the union of the device's kernel / memcpy / memset intervals over the span of every event
    recorded (host and device), from the profiler's raw Kineto events (one clock for both); the
    parsed event list as a fallback."""
    cuda = torch.autograd.DeviceType.CUDA
    try:
        raw = list(prof.profiler.kineto_results.events())
        spans = [(e.start_ns(), e.start_ns() + e.duration_ns()) for e in raw]
        mine = [(e.start_ns(), e.start_ns() + e.duration_ns()) for e in raw if e.device_type() == cuda]
    except (AttributeError, RuntimeError):
        events = list(prof.events())
        spans = [(e.time_range.start, e.time_range.end) for e in events]
        mine = [(e.time_range.start, e.time_range.end) for e in events if e.device_type == cuda]
    if not spans or not mine:
        return None  # no device activity recorded: reported as "–", not as 0
    return union_fraction(mine, min(a for a, _ in spans), max(b for _, b in spans))


def host_syncs(step, steps: int, device: torch.device) -> float | None:
    """Synchronising host-device calls per step (CUDA's sync debug mode warns once per call); None off CUDA."""
    if device.type != "cuda":
        return None
    _sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    _sync(device)
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def time_cell(arms: dict, sizes: dict, device: torch.device, deadline: float) -> dict:
    """Interleaved repetitions of ``steps`` steps per arm (order rotated), stopping at ``deadline``."""
    names = list(arms)
    out: dict[str, list[float]] = {k: [] for k in names}
    for rep in range(sizes["reps"]):
        if rep >= 2 and time.perf_counter() > deadline:
            break
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(sizes["steps"]):
                arms[name]()
            _sync(device)
            out[name].append((time.perf_counter() - t0) / sizes["steps"])
    return out


def run_cell(kind: str, method: str, batch: tuple[int, int], precision: str, device: torch.device,
             sizes: dict, deadline: float) -> dict:
    """One method at one batch and precision, without and with SuperCM, stepped interleaved."""
    trainers = {cm: build(kind, method, batch, precision, cm == "supercm", str(device), sizes)
                for cm in ("base", "supercm")}
    steps = {k: (lambda t=t: t.train_step(check=False)) for k, t in trainers.items()}
    t0 = time.perf_counter()
    for _ in range(sizes["warmup"]):  # compilation (bf16-compile-cl) happens here
        for s in steps.values():
            s()
    _sync(device)
    warm = time.perf_counter() - t0
    peak = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_cell(steps, sizes, device, deadline)
    if device.type == "cuda":
        peak["both"] = torch.cuda.max_memory_allocated(device) / 2**20
    images = batch[0] + batch[1]
    row = {"kind": kind, "method": method, "batch": list(batch), "precision": precision,
           "warmup_s": warm, "reps_done": len(times["base"]), "reps_asked": sizes["reps"],
           "peak_memory_mib": peak.get("both"), "arms": {}}
    for k, step in steps.items():
        s = common.summarize(times[k])
        row["arms"][k] = {"s_per_step": s, "images_per_s": images / s["median"],
                          "busy_fraction": busy_fraction(step, sizes["profile_steps"], device),
                          "host_syncs_per_step": host_syncs(step, sizes["profile_steps"], device)}
    row["supercm_overhead"] = common.ratio_summary(times["supercm"], times["base"])
    for t in trainers.values():
        t.close()
    del trainers, steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def stream_supply(tmp: Path, sizes: dict, deadline: float) -> dict:
    """Images/s the stream pipeline's worker processes decode for the trainer's samplers (32 + 32 a read)."""
    import numpy as np
    from PIL import Image

    from supercm.data.stream import ImageStore

    rng = np.random.default_rng(0)
    paths = []
    for i in range(sizes["stream_images"]):
        p = tmp / f"{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(p)
    n = len(paths)
    b = sizes["uda_batch"]
    store = ImageStore(paths, sizes["uda_size"], workers=sizes["workers"])
    samplers = [BatchSampler(torch.arange(n // 2), b[0], 1), BatchSampler(torch.arange(n // 2, n), b[1], 2)]
    reads = []
    with store.prefetch(samplers):
        for s in samplers:  # the workers' start-up, untimed
            store[s.next()]
        t0 = time.perf_counter()
        while len(reads) < 4 * sizes["workers"] and (len(reads) < 2 or time.perf_counter() < deadline):
            r0 = time.perf_counter()
            for s in samplers:
                store[s.next()]
            reads.append(time.perf_counter() - r0)
        total = time.perf_counter() - t0
    return {"workers": sizes["workers"], "images_per_s": len(reads) * (b[0] + b[1]) / total,
            "reads": len(reads), "size": sizes["uda_size"], "reads_from_prefetch": store.reads.get("prefetched")}


# ----------------------------------------------------------------------------- the plan
def plan(sizes: dict) -> list[tuple]:
    """Cells in priority order: fp32 and bf16 of everything, the stream pipeline, then the compiled arms."""
    cells = []
    for precision in sizes["precisions"]:
        cell = []
        for batch in sizes["ssl_batches"]:
            cell += [("ssl", m, batch, precision) for m in SSL_METHODS]
        cell += [("uda", m, sizes["uda_batch"], precision) for m in UDA_METHODS]
        cells.append(cell)
    ordered = [c for group in cells[:2] for c in group] + [("stream",)] + [c for group in cells[2:] for c in group]
    return ordered


def estimate(cell: tuple, done: list[dict], sizes: dict) -> float:
    """Seconds a cell should take, from the cells already run (a conservative guess before any)."""
    if cell[0] == "stream":
        return 25.0 if sizes is FULL else 5.0
    kind, method, batch, precision = cell
    like = [r for r in done if r["kind"] == kind and r["method"] == method and r["batch"] == list(batch)]
    if like:
        wall = max(r["wall_s"] for r in like)
    else:
        wall = max([r["wall_s"] for r in done], default=20.0 if sizes is FULL else 2.0)
    if "compile" in precision and not any("compile" in r["precision"] for r in done if r["kind"] == kind):
        wall += 90.0 if sizes is FULL else 60.0  # the first compilation of this backbone
    return wall


def run(sizes: dict = FULL, budget: float | None = None, device: str = "auto", echo=print) -> dict:
    budget = sizes["budget"] if budget is None else budget
    dev = torch.device("cuda" if (device == "auto" and torch.cuda.is_available()) else
                       ("cpu" if device == "auto" else device))
    start = time.perf_counter()
    end = start + budget
    machine = common.machine_info()
    machine.update(card=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if dev.type == "cuda" else None)
    rows, skipped, stream = [], [], None
    cells = plan(sizes)
    for i, cell in enumerate(cells):
        left = end - time.perf_counter()
        need = estimate(cell, rows, sizes)
        if need > left:
            skipped.append({"cell": list(cell), "reason": f"over the time budget (needs ≈{need:.0f} s, {left:.0f} s left)"})
            echo(f"skip {cell}: needs ≈{need:.0f} s, {left:.0f} s left")
            continue
        # This cell's share of what is left: the rest split over the cells still to come, at least its estimate.
        share = max(need, left / max(1, len(cells) - i))
        deadline = time.perf_counter() + share
        t0 = time.perf_counter()
        if cell[0] == "stream":
            with tempfile.TemporaryDirectory(prefix="supercm-gpu-suite-") as tmp:
                stream = stream_supply(Path(tmp), sizes, deadline)
            stream["wall_s"] = time.perf_counter() - t0
            echo(f"stream: {stream['workers']} workers {stream['images_per_s']:.0f} images/s")
            continue
        try:
            row = run_cell(*cell, dev, sizes, deadline)
        except Exception as exc:  # noqa: BLE001  (one arm failing, e.g. compile, must not lose the others)
            skipped.append({"cell": list(cell), "reason": f"failed: {type(exc).__name__}: {str(exc)[:300]}"})
            echo(f"FAILED {cell}: {type(exc).__name__}: {exc}")
            continue
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        a = row["arms"]
        echo(f"{cell[0]} {cell[1]} {cell[2][0]}+{cell[2][1]} {cell[3]}: base {a['base']['s_per_step']['median']*1e3:.1f} ms, "
             f"supercm {a['supercm']['s_per_step']['median']*1e3:.1f} ms, overhead "
             f"{common.fmt_ratio(row['supercm_overhead'])} ({row['wall_s']:.0f} s)")
    if stream is not None:
        uda = [r["arms"][k]["images_per_s"] for r in rows if r["kind"] == "uda" for k in r["arms"]]
        if uda:
            stream["fastest_uda_step_images_per_s"] = max(uda)
            stream["supply_over_demand"] = stream["images_per_s"] / max(uda)
    return {"benchmark": "gpu_suite", "command": common.command_line(), "machine": machine,
            "settings": {k: v for k, v in sizes.items()} | {"budget": budget, "device": str(dev)},
            "results": rows, "stream": stream, "skipped": skipped, "wall_s": time.perf_counter() - start}


def _fmt(x, spec: str, none: str = "–") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def to_markdown(data: dict) -> str:
    m = data["machine"]
    card = m.get("card") or f"no GPU: {m['cpu']} (CPU)"
    out = [f"### GPU suite: {card}", "", f"Command: `{data['command']}`  ",
           f"torch {m['torch']}, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}; commit `{m['commit']}`; {m['date']}; "
           f"load average at start {m.get('loadavg_at_start')}; wall time {data['wall_s']:.0f} s of a "
           f"{data['settings']['budget']:.0f} s budget  ", "",
           "Seconds per step: median of the interleaved repetitions (base and SuperCM of a cell alternate); "
           "images/s = (labeled + unlabeled) / s; overhead = SuperCM / base per repetition, median [IQR]; busy = "
           + ("share of the profiled steps' span with a kernel or copy on the GPU" if m.get("card") else
              "share of the profiled steps' span inside top-level torch ops (CPU: no device timeline)")
           + "; syncs = synchronising host-device calls per step (CUDA sync debug mode); peak = max memory "
           "allocated during the timed steps of both arms.", ""]
    header = ["task", "method", "batch", "precision", "base ms", "SuperCM ms", "base img/s", "SuperCM img/s",
              "SuperCM overhead", "busy base", "busy SuperCM", "syncs/step base", "syncs/step SuperCM",
              "peak MiB", "reps"]
    rows = []
    for r in data["results"]:
        a, b = r["arms"]["base"], r["arms"]["supercm"]
        rows.append([
            f"{r['kind'].upper()} {data['settings'][r['kind'] + '_backbone'][0]}", r["method"], f"{r['batch'][0]}+{r['batch'][1]}",
            r["precision"], f"{a['s_per_step']['median']*1e3:.1f}", f"{b['s_per_step']['median']*1e3:.1f}",
            f"{a['images_per_s']:.0f}", f"{b['images_per_s']:.0f}", common.fmt_ratio(r["supercm_overhead"]),
            _fmt(a["busy_fraction"], ".2f"), _fmt(b["busy_fraction"], ".2f"),
            _fmt(a["host_syncs_per_step"], ".1f"), _fmt(b["host_syncs_per_step"], ".1f"),
            _fmt(r["peak_memory_mib"], ".0f"), f"{r['reps_done']}/{r['reps_asked']}"])
    out.append(common.markdown_table(header, rows))
    s = data.get("stream")
    if s:
        out += ["", f"Stream pipeline: {s['workers']} decoding workers deliver **{s['images_per_s']:.0f} images/s** "
                f"(300×300 JPEG → {s['size']} px, {s['reads']} reads of 32 + 32)"
                + (f"; the fastest UDA step above consumes {s['fastest_uda_step_images_per_s']:.0f} images/s: supply / "
                   f"demand **{s['supply_over_demand']:.2f}**" if "supply_over_demand" in s else "") + "."]
    if data["skipped"]:
        out += ["", "Skipped:", ""] + [f"- {' '.join(str(c) for c in k['cell'])}: {k['reason']}" for k in data["skipped"]]
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (what the tests run)")
    p.add_argument("--budget", type=float, default=None, help="seconds of wall time (default 450; smoke 120)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="directory for gpu_suite.json / .md (default benchmarks/results)")
    args = p.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    device = args.device
    if args.smoke and device == "auto":
        device = "cpu"
    if not args.smoke and device == "auto" and not torch.cuda.is_available():
        raise SystemExit("gpu_suite: no CUDA device here; run it on the GPU machine, or --smoke on the CPU")
    if args.smoke:
        torch.set_num_threads(1)  # a shared CPU: more threads than free cores wait on each other
    data = run(sizes, args.budget, device)
    jp, mp = common.write_results("gpu_suite", data, to_markdown(data), args.out)
    print(mp.read_text())
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    main()
