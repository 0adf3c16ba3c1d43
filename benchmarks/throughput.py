"""Throughput of the training step: images per second and seconds per step, fp32 vs bf16, ± SuperCM.

Two tasks, each with its own trainers built from the same seed and stepped interleaved in one
process (order rotated each repetition, after warm-up), through ``Trainer.train_step`` with the
check ``fit()`` uses (``check=False``: no host-device sync in the step):

* ``ssl``: the SSL step of the paper's protocol: WRN-28-2, 3×32×32 images, flip + crop + noise
  augmentation, Adam, weight-EMA 0.99, base method Π-Model (δ = 1);
* ``uda``: the domain-adaptation step: DANN (SGD, annealed schedule), source + target batch; on
  the CPU it uses configs/uda's CNN on 3×28×28 (the package has no ResNet-50 backbone).

Arms per task: ``{fp32, bf16} × {base (β = 0), supercm (β = 1, centroids from the training pass)}``
and ``fp32-authors`` (β = 1 with the authors' extra eval-mode pass for the centroids), the
reference the SuperCM overhead is usually compared with. Each repetition gives one time per arm;
the ratios (bf16 speed-up, SuperCM overhead) are taken per repetition and summarised by their
median and IQR, so a drift of the shared machine hits both sides of a ratio alike.

    python benchmarks/throughput.py                      # CPU, small sizes (~1-2 min on 1 thread)
    python benchmarks/throughput.py --batch 64 --reps 20 # on a GPU: the paper's batch sizes
    python benchmarks/throughput.py --quick              # smoke run (seconds)

``--ddp``: data-parallel scaling, 1 vs 2 processes (gloo on the CPU, synchronised BatchNorm) on
the same global batch, for the fp32 SuperCM step of each task: the two process counts alternate,
``--ddp-reps`` times each, and each run reports the median seconds per step of its rank 0. On a
2-core machine the 2 processes share it with everything else, so read it as "what 2 ranks cost
here", not as GPU scaling.

``--channels-last``: the SuperCM arms again with ``train.channels_last`` (NHWC weights and batches).

``--compile``: the base and SuperCM arms again with ``train.compile`` (input stage + backbone through
``torch.compile``; the compilation happens in the warm-up steps, which are not timed).

Task ``uda_resnet50`` (not in the default list): the field's DANN step on a torchvision ResNet-50
with the 256-d bottleneck (random weights; throughput does not depend on them), at ``--resnet-size``
pixels (default 64 on the CPU; 224 is the protocol's size, for a GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from supercm.config import from_dict  # noqa: E402
from supercm.data.base import ArrayDataset  # noqa: E402
from supercm.data.domains import DomainPair  # noqa: E402
from supercm.train import Trainer  # noqa: E402

#: task -> (backbone, model options, input shape, augmentation, method, optimiser section)
TASKS = {
    "ssl": ("wrn28_2", {}, (3, 32, 32), {"flip": True, "crop_pad": 2, "noise_std": 0.15}, "pi_model",
            {"name": "adam", "lr": 3e-4}),
    "uda": ("cnn", {"width": 16, "convs_per_block": 1}, (3, 28, 28), {"crop_pad": 2}, "dann",
            {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3,
             "schedule": "annealed"}),
    "uda_resnet50": ("resnet50", {"weights": "none"}, (3, 64, 64), {"flip": True}, "dann",
                     {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3,
                      "schedule": "annealed", "backbone_lr_mult": 0.1}),
}
DEFAULT_TASKS = ("ssl", "uda")
ARMS = ("fp32-base", "fp32-supercm", "fp32-authors", "bf16-base", "bf16-supercm")
#: ``--channels-last``: the SuperCM arms again with train.channels_last (NHWC), image tasks.
CL_ARMS = ("fp32-supercm-cl", "bf16-supercm-cl")
#: ``--compile``: base and SuperCM arms with train.compile.
COMPILE_ARMS = ("fp32-base-compile", "fp32-supercm-compile", "bf16-supercm-compile")


def _synthetic(shape, n: int, seed: int, augment: dict | None = None, num_classes: int = 10) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset("synthetic", torch.randn(n, *shape, generator=g), torch.randint(0, num_classes, (n,), generator=g),
                        torch.randn(20, *shape, generator=g), torch.randint(0, num_classes, (20,), generator=g),
                        num_classes, dict(augment or {}))


def build_trainer(task: str, arm: str, batch: int, device: str = "cpu", model_options: dict | None = None,
                  sync_batchnorm: bool = False) -> Trainer:
    backbone, options, shape, augment, method, optim = TASKS[task]
    precision, variant, *layout = arm.split("-")
    cfg = {
        "data": {"name": "synthetic", "num_labeled": 100, "num_validation": 0, "augmentation": augment},
        "model": {"backbone": backbone, "options": {**options, **(model_options or {})}},
        "cm": {"beta": 0.0 if variant == "base" else 1.0, "features": "eval_pass" if variant == "authors" else "reuse"},
        "method": {"name": method, "delta": 1.0, "rampup": 0},
        "optim": optim,
        "train": {"batch_labeled": batch, "batch_unlabeled": batch, "precision": precision, "device": device,
                  "ema_decay": 0.99 if task == "ssl" else 0.0, "progress": False, "tensorboard": False, "seed": 0,
                  "sync_batchnorm": sync_batchnorm, "channels_last": layout == ["cl"],
                  "compile": layout == ["compile"]},
    }
    if task == "uda":
        cfg["data"].update(target="synthetic-target", num_labeled=1)
        dataset = DomainPair("synthetic->synthetic-target", _synthetic(shape, 300, 0, augment), _synthetic(shape, 300, 1))
    else:
        dataset = _synthetic(shape, 600, 0, augment)
    return Trainer(from_dict(cfg), None, dataset=dataset)


def time_task(task: str, batch: int, reps: int, warmup: int, block: int, device: str, model_options=None,
              arms=ARMS) -> dict:
    trainers = {a: build_trainer(task, a, batch, device, model_options) for a in arms}
    steps = {a: (lambda t=t: t.train_step(check=False)) for a, t in trainers.items()}
    times = common.interleaved_times(steps, reps=reps, warmup=warmup, block=block)
    images = 2 * batch  # labeled + unlabeled (source + target)
    ratio = common.ratio_summary
    return {
        "task": task, "backbone": TASKS[task][0], "method": TASKS[task][4], "batch": batch,
        "seconds_per_step": {a: common.summarize(v) for a, v in times.items()},
        "images_per_second": {a: images / common.summarize(v)["median"] for a, v in times.items()},
        "bf16_speedup": {v: ratio(times[f"fp32-{v}"], times[f"bf16-{v}"]) for v in ("base", "supercm")},
        "supercm_overhead": {p: ratio(times[f"{p}-supercm"], times[f"{p}-base"]) for p in ("fp32", "bf16")},
        "authors_overhead_fp32": ratio(times["fp32-authors"], times["fp32-base"]),
        "channels_last_speedup": {p: ratio(times[f"{p}-supercm"], times[f"{p}-supercm-cl"])
                                  for p in ("fp32", "bf16") if f"{p}-supercm-cl" in times},
        "compile_speedup": {a: ratio(times[a], times[f"{a}-compile"])
                            for a in ("fp32-base", "fp32-supercm", "bf16-supercm") if f"{a}-compile" in times},
        "supercm_overhead_compiled": (ratio(times["fp32-supercm-compile"], times["fp32-base-compile"])
                                      if "fp32-base-compile" in times else None),
        "raw_seconds": times,
    }


#: Steps per arm per repetition: the CPU UDA step lasts ~20 ms, too short to time one at a time.
DEFAULT_BLOCK = {"ssl": 1, "uda": 5, "uda_resnet50": 1}


def _ddp_worker(rank, world, init_file, task, batch, steps, warmup, out):
    import os
    import statistics
    import time

    import torch.distributed as dist

    from supercm.distributed import leave

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    t = None
    try:
        t = build_trainer(task, "fp32-supercm", batch, sync_batchnorm=True)
        times = []
        for i in range(warmup + steps):
            dist.barrier()
            t0 = time.perf_counter()
            t.train_step(check=False)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        if rank == 0:
            with open(os.path.join(out, "ddp.txt"), "w") as f:
                f.write(str(statistics.median(times)))
    except BaseException:
        leave(t, clean=False)
        raise
    leave(t)  # the trainer drops its DistributedDataParallel wrapper, then the group goes


def time_ddp(task: str, batch: int, reps: int, steps: int = 5, warmup: int = 2) -> dict:
    """Median s/step of the fp32 SuperCM step on 1 and on 2 processes (same global batch), alternated."""
    import tempfile

    import torch.multiprocessing as mp

    out: dict[str, list[float]] = {"1": [], "2": []}
    for _ in range(reps):
        for world in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                ctx = mp.get_context("spawn")
                procs = [ctx.Process(target=_ddp_worker, args=(r, world, f"{tmp}/store", task, batch, steps, warmup, tmp))
                         for r in range(world)]
                for p in procs:
                    p.start()
                for p in procs:
                    p.join()
                if any(p.exitcode for p in procs):
                    raise RuntimeError(f"a data-parallel worker failed ({task}, {world} processes)")
                out[str(world)].append(float(Path(tmp, "ddp.txt").read_text()))
    return {"task": task, "seconds_per_step": {k: common.summarize(v) for k, v in out.items()},
            "speedup_2_over_1": common.ratio_summary(out["1"], out["2"]), "raw_seconds": out}


def run(tasks=DEFAULT_TASKS, batch: int = 8, reps: int = 5, warmup: int = 2, block: int | None = None,
        device: str = "cpu", threads: int | None = None, model_options: dict | None = None, ddp: bool = False,
        ddp_reps: int = 3, channels_last: bool = False, compile: bool = False, echo=print) -> dict:
    threads = common.set_threads(threads)
    machine = common.machine_info()
    block = {t: block or DEFAULT_BLOCK[t] for t in tasks}
    rows = []
    for task in tasks:
        r = time_task(task, batch, reps, warmup, block[task], device, (model_options or {}).get(task),
                      ARMS + (CL_ARMS if channels_last else ()) + (COMPILE_ARMS if compile else ()))
        rows.append(r)
        echo(f"{task}: " + "  ".join(f"{a} {r['seconds_per_step'][a]['median']:.3f} s" for a in ARMS)
             + f"  bf16 speed-up {common.fmt_ratio(r['bf16_speedup']['supercm'])}"
             + f"  SuperCM overhead fp32 {common.fmt_ratio(r['supercm_overhead']['fp32'])}")
    ddp_rows = []
    if ddp:
        for task in tasks:
            r = time_ddp(task, batch, ddp_reps)
            ddp_rows.append(r)
            echo(f"{task} data-parallel: 1 process {r['seconds_per_step']['1']['median']:.3f} s/step, 2 processes "
                 f"{r['seconds_per_step']['2']['median']:.3f} s/step, speed-up {common.fmt_ratio(r['speedup_2_over_1'], 2)}")
    return {
        "benchmark": "throughput",
        "ddp": ddp_rows,
        "command": common.command_line(),
        "machine": machine,
        "settings": {"reps": reps, "warmup": warmup, "steps_per_block": block, "batch_labeled": batch,
                     "batch_unlabeled": batch, "threads": threads, "device": device,
                     "data": "synthetic random images", "beta": 1.0, "centroids": "paper"},
        "results": rows,
    }


def to_markdown(data: dict) -> str:
    s = data["settings"]
    out = [
        *common.markdown_heading("Throughput (issue 13)", data),
        f"Batch {s['batch_labeled']} + {s['batch_unlabeled']} (labeled + unlabeled, or source + target), synthetic "
        f"images; {s['warmup']} warm-up + {s['reps']} measured repetitions per arm of "
        + ", ".join(f"{v} step(s) ({k})" for k, v in s["steps_per_block"].items()) + ", "
        "arms interleaved with the order rotated. Seconds per step: median; ratios per repetition, median [IQR]. "
        "`supercm` = β 1 with centroids from the training pass; `authors` = β 1 with the authors' extra eval-mode pass.",
        "",
    ]
    header = ["task", *[f"{a} s/step (img/s)" for a in ARMS], "bf16 speed-up (β 0)", "bf16 speed-up (β 1)",
              "SuperCM overhead fp32", "SuperCM overhead bf16", "authors' overhead fp32"]
    rows = []
    for r in data["results"]:
        rows.append([
            f"{r['task']} ({r['backbone']}, {r['method']})",
            *[f"{r['seconds_per_step'][a]['median']:.3f} ({r['images_per_second'][a]:.0f})" for a in ARMS],
            common.fmt_ratio(r["bf16_speedup"]["base"], 2), common.fmt_ratio(r["bf16_speedup"]["supercm"], 2),
            common.fmt_ratio(r["supercm_overhead"]["fp32"]), common.fmt_ratio(r["supercm_overhead"]["bf16"]),
            common.fmt_ratio(r["authors_overhead_fp32"]),
        ])
    out.append(common.markdown_table(header, rows))
    cl = [r for r in data["results"] if r.get("channels_last_speedup")]
    if cl:
        out += ["", "channels_last (train.channels_last, NHWC), SuperCM step, speed-up over the default layout:", ""]
        out.append(common.markdown_table(
            ["task", "fp32 s/step NHWC", "bf16 s/step NHWC", "speed-up fp32", "speed-up bf16"],
            [[r["task"], f"{r['seconds_per_step']['fp32-supercm-cl']['median']:.3f}",
              f"{r['seconds_per_step']['bf16-supercm-cl']['median']:.3f}",
              common.fmt_ratio(r["channels_last_speedup"]["fp32"], 2),
              common.fmt_ratio(r["channels_last_speedup"]["bf16"], 2)] for r in cl]))
    comp = [r for r in data["results"] if r.get("compile_speedup")]
    if comp:
        out += ["", "torch.compile (train.compile: input stage + backbone compiled, head eager), speed-up over eager, "
                "and SuperCM's overhead with both compiled:", ""]
        out.append(common.markdown_table(
            ["task", "fp32 β 0 s/step compiled", "fp32 β 1 s/step compiled", "bf16 β 1 s/step compiled",
             "speed-up fp32 β 0", "speed-up fp32 β 1", "speed-up bf16 β 1", "SuperCM overhead compiled fp32"],
            [[r["task"], *(f"{r['seconds_per_step'][a]['median']:.3f}" for a in COMPILE_ARMS),
              *(common.fmt_ratio(r["compile_speedup"][a], 2) for a in ("fp32-base", "fp32-supercm", "bf16-supercm")),
              common.fmt_ratio(r["supercm_overhead_compiled"])] for r in comp]))
    if data.get("ddp"):
        out += ["", "Data-parallel (gloo, synchronised BatchNorm, fp32 SuperCM step, same global batch; rank 0's median "
                "s/step per run, the two process counts alternated):", ""]
        out.append(common.markdown_table(
            ["task", "1 process s/step", "2 processes s/step", "speed-up 2 vs 1"],
            [[r["task"], f"{r['seconds_per_step']['1']['median']:.3f}", f"{r['seconds_per_step']['2']['median']:.3f}",
              common.fmt_ratio(r["speedup_2_over_1"], 2)] for r in data["ddp"]]))
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), choices=list(TASKS))
    p.add_argument("--batch", type=int, default=8, help="labeled (source) batch = unlabeled (target) batch")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--block", type=int, default=None, help="steps per arm per repetition (default: ssl 1, uda 5)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ddp", action="store_true", help="also time 1 vs 2 data-parallel processes (gloo)")
    p.add_argument("--channels-last", action="store_true", help="also time the SuperCM arms with train.channels_last")
    p.add_argument("--ddp-reps", type=int, default=3, help="alternations of 1 and 2 processes")
    p.add_argument("--compile", action="store_true", help="also time arms with train.compile")
    p.add_argument("--resnet-size", type=int, default=64, help="image side of the uda_resnet50 task (224: the protocol)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 repetitions (a smoke run)")
    p.add_argument("--out", default=None, help="directory for throughput.json / .md (default benchmarks/results)")
    args = p.parse_args(argv)
    kw = dict(tasks=args.tasks, batch=args.batch, reps=args.reps, warmup=args.warmup, block=args.block,
              device=args.device, threads=args.threads, ddp=args.ddp, ddp_reps=args.ddp_reps,
              channels_last=args.channels_last, compile=args.compile)
    backbone, options, _, *rest = TASKS["uda_resnet50"]
    TASKS["uda_resnet50"] = (backbone, options, (3, args.resnet_size, args.resnet_size), *rest)
    if args.quick:
        kw.update(batch=2, reps=2, warmup=1, ddp_reps=1)
    data = run(**kw)
    jp, mp = common.write_results("throughput", data, to_markdown(data), args.out)
    print(mp.read_text())
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    main()
