"""Each method's training step as a multiple of the bare forward + backward pass (issue 21 §1, a CPU ceiling).

    python benchmarks/ceiling.py --batch 50 --threads 1 --reps 5

The ceiling: WRN-28-2 forward on a fixed joined batch of ``--batch`` + ``--batch`` CIFAR-shaped images,
cross-entropy on the labeled rows, backward (no augmentation, no loss term, no optimiser step): the
least work any step of this protocol does. Against it, ``Trainer.train_step(check=False)`` (the step
``fit()`` runs: augmentation, the terms, Adam, weight-EMA 0.99) of CE (``supervised``), Pseudo-Label,
VAT, Π-Model, Mean Teacher and DANN, each without and with SuperCM (β = 1, centroids from the training
pass), fp32. All arms interleaved in one process (order rotated each repetition); the ratio step /
bare is taken per repetition, median [IQR]. A method whose term runs extra passes (VAT: probe and
adversarial passes; Π-Model: a second augmented pass; Mean Teacher: the teacher's pass) is bounded by
that many passes, not by 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import throughput  # noqa: E402

METHODS = ("supervised", "pseudo_label", "vat", "pi_model", "mean_teacher", "dann")


def build(method: str, variant: str, batch: int):
    throughput.TASKS[f"ceiling-{method}"] = (*throughput.TASKS["ssl"][:4], method, throughput.TASKS["ssl"][5])
    return throughput.build_trainer(f"ceiling-{method}", f"fp32-{variant}", batch)


def run(batch: int, reps: int, warmup: int, threads: int | None, methods=METHODS, echo=print) -> dict:
    threads = common.set_threads(threads)
    machine = common.machine_info()
    trainers = {f"{m}{'+supercm' if v == 'supercm' else ''}": build(m, v, batch)
                for m in methods for v in ("base", "supercm")}
    bare_model = build("supervised", "base", batch).model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)

    def bare():
        bare_model.zero_grad(set_to_none=True)
        F.cross_entropy(bare_model(x).logits[:batch], y).backward()

    arms = {"bare": bare, **{k: (lambda t=t: t.train_step(check=False)) for k, t in trainers.items()}}
    times = common.interleaved_times(arms, reps=reps, warmup=warmup)
    for k in list(throughput.TASKS):
        if k.startswith("ceiling-"):
            del throughput.TASKS[k]
    rows = [{"arm": k, "s_per_step": common.summarize(v), "images_per_s": 2 * batch / common.summarize(v)["median"],
             "over_bare": common.ratio_summary(v, times["bare"])} for k, v in times.items()]
    for r in rows:
        echo(f"{r['arm']}: {r['s_per_step']['median']:.3f} s/step, ×{common.fmt_ratio(r['over_bare'], 2)} bare")
    overhead = {m: common.ratio_summary(times[f"{m}+supercm"], times[m]) for m in methods}
    return {"benchmark": "ceiling", "command": common.command_line(), "machine": machine,
            "settings": {"batch_labeled": batch, "batch_unlabeled": batch, "reps": reps, "warmup": warmup,
                         "threads": threads, "precision": "fp32", "data": "synthetic 3×32×32"},
            "results": rows, "supercm_overhead": overhead, "load_at_end": common.machine_info()["loadavg_at_start"]}


def to_markdown(data: dict) -> str:
    s = data["settings"]
    out = [*common.markdown_heading("The step against the bare forward + backward (issue 21)", data),
           f"WRN-28-2, batch {s['batch_labeled']} + {s['batch_unlabeled']}, fp32, {s['threads']} thread(s); "
           f"{s['warmup']} warm-up + {s['reps']} interleaved repetitions; load average at the end "
           f"{data.get('load_at_end')}. ×bare: per-repetition ratio, median [IQR].", ""]
    ov = data["supercm_overhead"]
    rows = []
    for r in data["results"]:
        m = r["arm"].removesuffix("+supercm")
        rows.append([r["arm"], f"{r['s_per_step']['median']:.3f}", f"{r['images_per_s']:.1f}",
                     common.fmt_ratio(r["over_bare"], 2),
                     common.fmt_ratio(ov[m]) if r["arm"].endswith("+supercm") else ""])
    out.append(common.markdown_table(["step", "s/step", "images/s", "× bare fwd+bwd", "SuperCM / base"], rows))
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    data = run(a.batch, a.reps, a.warmup, a.threads, a.methods)
    jp, mp = common.write_results("ceiling", data, to_markdown(data), a.out)
    print(mp.read_text())
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    main()
