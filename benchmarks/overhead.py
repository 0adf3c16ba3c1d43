"""Training-step overhead of SuperCM: time (and peak memory) per iteration with / without the CM loss.

For each backbone × base method, three trainers are built from the same seed and
stepped interleaved (order rotated each repetition, after warm-up):

* ``base``      β = 0 (the base method alone; the CM encoder is still the linear classifier)
* ``reuse``     β > 0, centroids from the detached features of the training pass
* ``eval_pass`` β > 0, centroids from an extra eval-mode forward of the labeled batch (authors' code)

The ratio of each SuperCM arm to ``base`` is taken per repetition; the median and
IQR / range of those ratios are reported. Data are synthetic (random images, random
labels): a step's cost does not depend on the pixel values, so timing needs no real data.

Peak memory (CPU): each arm runs in a fresh subprocess with glibc's mmap threshold
lowered to 64 KiB (``MALLOC_MMAP_THRESHOLD_``), so every tensor buffer is its own mapping
and is returned to the kernel when freed (RSS then follows live memory instead of
malloc's cache). One warm-up step allocates the optimizer and EMA state; then the
resident set size is read (VmRSS), the kernel's high-water mark is reset
(``/proc/self/clear_refs`` ← 5), a few training steps run, and the new high-water mark
(VmHWM) is read. "Step memory" = VmHWM − VmRSS before the measured steps (activations,
gradients, temporaries); the ratio of step memory with/without SuperCM is reported, and
the ratio of whole-process peaks. On CUDA, ``torch.cuda.max_memory_allocated`` after a
``reset_peak_memory_stats`` is used instead.

    python benchmarks/overhead.py                      # WRN-28-2 and cnn, 5 methods (~15 min on 2 cores)
    python benchmarks/overhead.py --backbones cnn --methods supervised vat --reps 5
    python benchmarks/overhead.py --quick              # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from supercm.config import from_dict  # noqa: E402
from supercm.data.base import ArrayDataset  # noqa: E402
from supercm.train import Trainer  # noqa: E402

METHODS = ("supervised", "pseudo_label", "vat", "pi_model", "mean_teacher")
#: backbone -> (input shape, augmentations of SPEC §5 for the matching dataset)
BACKBONES = {
    "wrn28_2": ((3, 32, 32), {"flip": True, "crop_pad": 2, "noise_std": 0.15}),  # CIFAR-10 protocol
    "cnn": ((3, 28, 28), {"crop_pad": 2}),  # MNIST protocol: 28×28 replicated to 3 channels
}
ARMS = ("base", "reuse", "eval_pass")


def synthetic_dataset(shape: tuple[int, ...], num_classes: int = 10, n_train: int = 600, seed: int = 0, augment=None):
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(
        "synthetic",
        torch.randn(n_train, *shape, generator=g),
        torch.randint(0, num_classes, (n_train,), generator=g),
        torch.randn(20, *shape, generator=g),
        torch.randint(0, num_classes, (20,), generator=g),
        num_classes,
        dict(augment or {}),
    )


def arm_config(spec: dict, arm: str):
    """The trainer config of one arm; ``spec`` holds backbone, method, batch sizes, model options."""
    return from_dict(
        {
            "data": {"name": "synthetic", "num_labeled": 100, "num_validation": 0},
            "model": {"backbone": spec["backbone"], "options": dict(spec.get("model_options", {}))},
            "cm": {"beta": 0.0 if arm == "base" else 1.0, "features": "eval_pass" if arm == "eval_pass" else "reuse"},
            "method": {"name": spec["method"], "delta": 1.0, "rampup": 0},
            "train": {
                "batch_labeled": spec["batch"],
                "batch_unlabeled": spec["batch"],
                "ema_decay": 0.99,  # the paper evaluates a weight-EMA copy; same in every arm
                "device": spec.get("device", "cpu"),
                "progress": False,
                "tensorboard": False,
                "seed": 0,
            },
        }
    )


def build_trainer(spec: dict, arm: str) -> Trainer:
    shape, augment = BACKBONES[spec["backbone"]]
    return Trainer(arm_config(spec, arm), None, dataset=synthetic_dataset(shape, augment=augment))


# ----------------------------------------------------------------------------- memory
def _proc_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def measure_memory(spec: dict, arm: str, steps: int = 2) -> dict:
    """Peak memory of ``steps`` training steps of one arm after one warm-up step, in this process.

    Call it in a fresh process (see :func:`memory_in_subprocess`)."""
    trainer = build_trainer(spec, arm)
    trainer.train_step()  # warm-up: Adam moments, EMA copy, lazy allocations
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(steps):
            trainer.train_step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"method": "torch.cuda.max_memory_allocated", "before_mib": before / 2**20, "peak_mib": peak / 2**20,
                "step_mib": (peak - before) / 2**20}
    gc.collect()
    before = _proc_status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS (Linux ≥ 4.0)
        how = "VmHWM after a reset via /proc/self/clear_refs, minus VmRSS before the measured steps"
    except OSError:
        how = "VmHWM (not resettable here: includes setup), minus VmRSS before the measured steps"
    for _ in range(steps):
        trainer.train_step()
    peak = _proc_status_kb("VmHWM")
    return {"method": how, "before_mib": before / 1024, "peak_mib": peak / 1024, "step_mib": (peak - before) / 1024}


def memory_in_subprocess(spec: dict, arm: str, steps: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--_memory-child", json.dumps({"spec": spec, "arm": arm, "steps": steps}),
           "--threads", str(threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=common.ROOT, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- timing
def component_times(trainer: Trainer, reps: int, eval_reps: int) -> dict:
    """Seconds of the work SuperCM adds to a step, timed alone (far less noisy than a whole step).

    ``cm``: (centroid update + CM loss + its share of the backward) = time of
    [update, head forward, CE + β·L_CM, backward] minus [head forward, CE, backward], on the
    trainer's real batch features (a detached leaf, so the backbone is not re-run).
    ``eval_pass``: the extra no-grad eval-mode backbone pass over the labeled batch.
    """
    import torch.nn.functional as F

    model, head = trainer.model, trainer.model.head
    lab = trainer.labeled_sampler.next()
    unl = trainer.unlabeled_sampler.next()
    x_l_raw, y_l = trainer.x_train[lab], trainer.y_train[lab]
    n_l = y_l.numel()
    with torch.no_grad():
        feats = model.backbone(torch.cat([x_l_raw, trainer.x_train[unl]]))
    f = feats.detach().clone().requires_grad_(True)
    beta = 1.0

    def without():
        f.grad = None
        head.zero_grad(set_to_none=True)
        out = head(f)
        F.cross_entropy(out.logits[:n_l], y_l).backward()

    def with_cm():
        f.grad = None
        head.zero_grad(set_to_none=True)
        head.update_centroids(f[:n_l].detach(), y_l)
        out = head(f)
        (F.cross_entropy(out.logits[:n_l], y_l) + beta * head.loss_terms(f, out).total).backward()

    saved = {k: v.clone() for k, v in head.state_dict().items()}
    blocks = {"without": common.calibrate_block(without, 0.02), "with_cm": common.calibrate_block(with_cm, 0.02)}
    t = common.interleaved_times({"without": without, "with_cm": with_cm}, reps=reps, warmup=2, block=blocks)
    head.load_state_dict(saved)
    head.zero_grad(set_to_none=True)

    def eval_pass():
        with torch.no_grad():
            model.eval()
            model.backbone(x_l_raw)
            model.train()

    te = common.interleaved_times({"eval_pass": eval_pass}, reps=eval_reps, warmup=1)["eval_pass"]
    cm = [a - b for a, b in zip(t["with_cm"], t["without"])]
    return {"cm_s": common.summarize(cm), "eval_pass_s": common.summarize(te),
            "head_without_s": common.summarize(t["without"]), "head_with_cm_s": common.summarize(t["with_cm"])}


def time_combo(spec: dict, reps: int, warmup: int, block: int, component_reps: int = 30, eval_reps: int = 5) -> dict:
    trainers = {arm: build_trainer(spec, arm) for arm in ARMS}
    times = common.interleaved_times({a: t.train_step for a, t in trainers.items()}, reps=reps, warmup=warmup, block=block)
    comp = component_times(trainers["reuse"], component_reps, eval_reps)
    base = common.summarize(times["base"])["median"]
    return {
        "seconds_per_step": {a: common.summarize(v) for a, v in times.items()},
        "ratio": {a: common.ratio_summary(times[a], times["base"]) for a in ARMS if a != "base"},
        "components": comp,
        # 1 + (added work timed alone) / (median base step): the additive estimate of each ratio.
        "component_ratio": {
            "reuse": 1 + comp["cm_s"]["median"] / base,
            "eval_pass": 1 + (comp["cm_s"]["median"] + comp["eval_pass_s"]["median"]) / base,
        },
        "raw_seconds": times,
    }


def run(
    backbones=tuple(BACKBONES),
    methods=METHODS,
    reps: int = 10,
    warmup: int = 3,
    block: dict | None = None,
    batch: int = 50,
    memory: bool | str = True,  # "first": only for the first backbone × method (quick runs)
    memory_steps: int = 2,
    model_options: dict | None = None,
    threads: int | None = None,
    echo=print,
) -> dict:
    threads = common.set_threads(threads)
    machine = common.machine_info()  # at the start: commit, load average
    block = {"wrn28_2": 1, "cnn": 3, **(block or {})}
    rows = []
    for bb in backbones:
        for m in methods:
            spec = {"backbone": bb, "method": m, "batch": batch, "model_options": (model_options or {}).get(bb, {})}
            r = {**spec, **time_combo(spec, reps, warmup, block.get(bb, 1))}
            if memory and (memory != "first" or not rows):
                mem = {a: memory_in_subprocess(spec, a, memory_steps, threads) for a in ARMS}
                r["memory"] = {
                    "per_arm": mem,
                    "step_ratio": {a: mem[a]["step_mib"] / max(mem["base"]["step_mib"], 1e-9) for a in ARMS[1:]},
                    "process_peak_ratio": {a: mem[a]["peak_mib"] / mem["base"]["peak_mib"] for a in ARMS[1:]},
                }
            rows.append(r)
            s = r["seconds_per_step"]["base"]["median"]
            echo(
                f"{bb:8s} {m:13s} base {s:7.3f} s/step  reuse {common.fmt_ratio(r['ratio']['reuse'])}  "
                f"eval_pass {common.fmt_ratio(r['ratio']['eval_pass'])}  components: reuse "
                f"{r['component_ratio']['reuse']:.4f} eval_pass {r['component_ratio']['eval_pass']:.4f}"
                + (f"  mem(step) reuse {r['memory']['step_ratio']['reuse']:.3f} eval_pass "
                   f"{r['memory']['step_ratio']['eval_pass']:.3f}" if "memory" in r else "")
            )
    return {
        "benchmark": "overhead",
        "command": common.command_line(),
        "machine": machine,
        "settings": {
            "reps": reps, "warmup": warmup, "steps_per_block": block, "batch_labeled": batch, "batch_unlabeled": batch,
            "threads": threads, "beta": 1.0, "centroids": "paper", "ema_decay": 0.99, "data": "synthetic random images",
            "memory_steps": memory_steps if memory else 0,
        },
        "results": rows,
    }


def to_markdown(data: dict) -> str:
    s = data["settings"]
    rows = data["results"]
    has_mem = any("memory" in r for r in rows)
    out = [
        *common.markdown_heading("Training-step overhead (time and memory with / without SuperCM)", data),
        f"Batch {s['batch_labeled']} labeled + {s['batch_unlabeled']} unlabeled, synthetic random images "
        f"(3×32×32 for WRN-28-2, 3×28×28 for cnn; 10 classes; timing does not depend on pixel values), "
        f"β = 1, 'paper' centroids, weight-EMA 0.99 in every arm, base-method weight δ = 1 with no ramp. "
        f"Three trainers (β=0 / reuse / eval_pass) stepped interleaved, order rotated each repetition; "
        f"{s['warmup']} warm-up + {s['reps']} measured repetitions, each of "
        + ", ".join(f"{v} step(s) for {k}" for k, v in s["steps_per_block"].items() if any(r["backbone"] == k for r in rows))
        + ". "
        "Ratio = time per step with SuperCM / without, per repetition: median [IQR] (min–max). "
        "Component estimate = 1 + (work SuperCM adds, timed alone on the same batch, median) / (median step "
        "time with β=0): 'added CM work' = [centroid update + head + CE + β·L_CM + backward] − [head + CE + "
        "backward] on the real batch features (interleaved, 30 repetitions); 'extra eval pass' = the no-grad "
        "eval-mode backbone pass over the labeled batch. It ignores indirect effects (caches, allocator) but is "
        "far less noisy than whole-step ratios on a shared machine.",
        "",
    ]
    header = ["backbone", "method", "s/step β=0", "ratio reuse", "ratio eval_pass", "added CM work ms",
              "extra eval pass ms", "component est. reuse", "component est. eval_pass"]
    if has_mem:
        header += ["step-mem ratio reuse", "step-mem ratio eval_pass", "step mem β=0 (MiB)"]
    table = []
    for r in rows:
        row = [
            r["backbone"], r["method"], f"{r['seconds_per_step']['base']['median']:.3f}",
            *(
                f"{common.fmt_ratio(r['ratio'][a])} ({r['ratio'][a]['min']:.3f}–{r['ratio'][a]['max']:.3f})"
                for a in ("reuse", "eval_pass")
            ),
            f"{1e3 * r['components']['cm_s']['median']:.2f}",
            f"{1e3 * r['components']['eval_pass_s']['median']:.1f}",
            f"{r['component_ratio']['reuse']:.4f}",
            f"{r['component_ratio']['eval_pass']:.4f}",
        ]
        if has_mem and "memory" in r:
            m = r["memory"]
            row += [f"{m['step_ratio']['reuse']:.3f}", f"{m['step_ratio']['eval_pass']:.3f}",
                    f"{m['per_arm']['base']['step_mib']:.0f}"]
        elif has_mem:
            row += ["–", "–", "–"]
        table.append(row)
    out.append(common.markdown_table(header, table))
    if has_mem:
        how = next(r["memory"]["per_arm"]["base"]["method"] for r in rows if "memory" in r)
        out += ["", f"Memory: one fresh subprocess per arm (glibc mmap threshold 64 KiB), one warm-up step, then "
                f"{s['memory_steps']} measured training steps; step memory = {how}."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="cnn (width 8), batch 8+8, supervised and vat, 2 reps, memory for the first only")
    p.add_argument("--backbones", nargs="+", choices=list(BACKBONES), default=None)
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=None)
    p.add_argument("--reps", type=int, default=None, help="measured repetitions per arm (default 10)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up repetitions (default 3)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1, see common.DEFAULT_THREADS)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.memory_child is not None:
        common.set_threads(a.threads)
        job = json.loads(a.memory_child)
        print(json.dumps(measure_memory(job["spec"], job["arm"], job["steps"])))
        return
    if a.quick:
        kw = dict(backbones=a.backbones or ["cnn"], methods=a.methods or ["supervised", "vat"], reps=a.reps or 2,
                  warmup=a.warmup or 1, batch=8, model_options={"cnn": {"width": 8}}, memory_steps=1,
                  memory=False if a.no_memory else "first")
    else:
        kw = dict(backbones=a.backbones or list(BACKBONES), methods=a.methods or list(METHODS), reps=a.reps or 10,
                  warmup=a.warmup if a.warmup is not None else 3)
    kw.setdefault("memory", not a.no_memory)
    data = run(threads=a.threads, **kw)
    jp, mp = common.write_results("overhead", data, to_markdown(data), a.out)
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    main()
