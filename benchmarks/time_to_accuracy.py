"""Time to accuracy on the built-in digits (demo protocol): CE (β = 0) versus SuperCM (β = 1).

For each seed the two runs are trained side by side, interleaved one evaluation
period at a time (CE 50 iterations, SuperCM 50 iterations, ...), so machine load
affects both alike. Training seconds exclude the evaluations. Each run's
"time to accuracy" is the training time until it first reaches its *own* final
validation accuracy; also reported: the time SuperCM needs to reach CE's final
validation accuracy.

    python benchmarks/time_to_accuracy.py            # 3 seeds × 1000 iterations
    python benchmarks/time_to_accuracy.py --quick    # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from supercm.config import from_dict  # noqa: E402
from supercm.data import load_dataset  # noqa: E402
from supercm.demo import DEMO_CONFIG  # noqa: E402
from supercm.train import Trainer  # noqa: E402

ARMS = {"CE": 0.0, "SuperCM": 1.0}


def first_reaching(evals: list[dict], target: float) -> dict | None:
    """The first evaluation whose validation accuracy is ≥ ``target``."""
    return next((e for e in evals if e["val"] >= target - 1e-12), None)


def run_seed(seed: int, iterations: int | None, eval_every: int | None, dataset) -> dict:
    base = from_dict(DEMO_CONFIG)
    if iterations is not None:
        base = base.replace(**{"train.iterations": iterations})
    if eval_every is not None:
        base = base.replace(**{"train.eval_every": eval_every})
    tc = base.train
    trainers = {name: Trainer(base.replace(**{"cm.beta": beta, "train.seed": seed}), None, dataset=dataset)
                for name, beta in ARMS.items()}
    evals: dict[str, list[dict]] = {name: [] for name in ARMS}
    seconds = {name: 0.0 for name in ARMS}
    it = 0
    period = 0
    while it < tc.iterations:
        steps = min(tc.eval_every, tc.iterations - it)
        names = list(ARMS)
        if period % 2:
            names.reverse()  # alternate which arm goes first
        for name in names:
            tr = trainers[name]
            t0 = time.perf_counter()
            for _ in range(steps):
                # As Trainer.fit does between logged iterations: no E1..E4 split for the logs,
                # which is extra forward work that training without logging never pays.
                tr.train_step(log_terms=False)
            seconds[name] += time.perf_counter() - t0
            # test accuracy is computed at a new best validation accuracy and at the end (None otherwise)
            rec = tr.evaluate_now(final=tr.iteration >= tc.iterations)
            evals[name].append({"iteration": tr.iteration, "seconds": seconds[name], "val": rec["val"], "test": rec["test"]})
        it += steps
        period += 1
    out = {"seed": seed, "arms": {}}
    for name in ARMS:
        ev = evals[name]
        final = ev[-1]["val"]
        hit = first_reaching(ev, final)
        out["arms"][name] = {
            "beta": ARMS[name],
            "final_val": final,
            "final_test": ev[-1]["test"],
            "train_seconds": seconds[name],
            "time_to_final_val_s": hit["seconds"],
            "iterations_to_final_val": hit["iteration"],
            "evals": ev,
        }
    ce_final = out["arms"]["CE"]["final_val"]
    hit = first_reaching(evals["SuperCM"], ce_final)
    out["supercm_to_ce_final"] = {"seconds": hit["seconds"], "iteration": hit["iteration"]} if hit else None
    return out


def run(seeds: int = 3, iterations: int | None = None, eval_every: int | None = None, threads: int | None = None,
        echo=print) -> dict:
    threads = common.set_threads(threads)
    machine = common.machine_info()  # at the start: commit, load average
    dataset = load_dataset("digits")
    runs = []
    for seed in range(seeds):
        r = run_seed(seed, iterations, eval_every, dataset)
        runs.append(r)
        a, b = r["arms"]["CE"], r["arms"]["SuperCM"]
        echo(
            f"seed {seed}: CE final val {a['final_val']:.3f} at {a['time_to_final_val_s']:.2f} s "
            f"(it {a['iterations_to_final_val']}, total {a['train_seconds']:.2f} s); SuperCM final val "
            f"{b['final_val']:.3f} at {b['time_to_final_val_s']:.2f} s (it {b['iterations_to_final_val']}, "
            f"total {b['train_seconds']:.2f} s)"
        )
    cfg = from_dict(DEMO_CONFIG)
    summary = {}
    for name in ARMS:
        arms = [r["arms"][name] for r in runs]
        summary[name] = {
            k: statistics.mean(a[k] for a in arms)
            for k in ("final_val", "final_test", "train_seconds", "time_to_final_val_s", "iterations_to_final_val")
        }
    summary["step_time_ratio"] = statistics.median(
        r["arms"]["SuperCM"]["train_seconds"] / r["arms"]["CE"]["train_seconds"] for r in runs
    )
    return {
        "benchmark": "time_to_accuracy",
        "command": common.command_line(),
        "machine": machine,
        "settings": {
            "seeds": seeds, "threads": threads, "betas": ARMS,
            "iterations": iterations or cfg.train.iterations, "eval_every": eval_every or cfg.train.eval_every,
            "protocol": "supercm.demo.DEMO_CONFIG (digits, 100 labels, MLP 128×2, batch 50+50, Adam 1e-3)",
        },
        "summary": summary,
        "runs": runs,
    }


def to_markdown(data: dict) -> str:
    s = data["settings"]
    out = [
        *common.markdown_heading("Time to accuracy on digits (demo protocol)", data),
        f"{s['protocol']}; {s['iterations']} iterations, evaluation every {s['eval_every']}; CE β = 0 vs SuperCM β = 1. "
        "The two runs of a seed are trained interleaved, one evaluation period at a time. Seconds = training time "
        "(evaluations excluded) until the run first reaches its own final validation accuracy.",
        "",
    ]
    table = []
    for r in data["runs"]:
        for name in ARMS:
            a = r["arms"][name]
            table.append([
                r["seed"], name, f"{100 * a['final_val']:.1f}", f"{100 * a['final_test']:.1f}",
                a["iterations_to_final_val"], f"{a['time_to_final_val_s']:.2f}", f"{a['train_seconds']:.2f}",
            ])
    out.append(common.markdown_table(
        ["seed", "run", "final val %", "final test %", "iteration reaching it", "seconds to reach it",
         "total train s"], table))
    sm = data["summary"]
    hits = [r["supercm_to_ce_final"] for r in data["runs"]]
    out += [
        "",
        f"Means over seeds: CE reaches its final val {100 * sm['CE']['final_val']:.1f}% after "
        f"{sm['CE']['time_to_final_val_s']:.2f} s ({sm['CE']['iterations_to_final_val']:.0f} it); SuperCM reaches its "
        f"final val {100 * sm['SuperCM']['final_val']:.1f}% after {sm['SuperCM']['time_to_final_val_s']:.2f} s "
        f"({sm['SuperCM']['iterations_to_final_val']:.0f} it). Median per-seed ratio of total training time "
        f"SuperCM/CE: {sm['step_time_ratio']:.3f}.",
        "SuperCM reaching CE's final val accuracy: "
        + "; ".join(
            f"seed {r['seed']}: " + (f"{h['seconds']:.2f} s (it {h['iteration']})" if h else "never")
            for r, h in zip(data["runs"], hits)
        ) + ".",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 seed, 100 iterations, evaluation every 25")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3)")
    p.add_argument("--iterations", type=int, default=None, help="override the demo's iterations")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1, as the demo's workers)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    a = p.parse_args(argv)
    if a.quick:
        data = run(seeds=a.seeds or 1, iterations=a.iterations or 100, eval_every=25, threads=a.threads)
    else:
        data = run(seeds=a.seeds or 3, iterations=a.iterations, threads=a.threads)
    jp, mp = common.write_results("time_to_accuracy", data, to_markdown(data), a.out)
    print(f"wrote {jp} and {mp}")


if __name__ == "__main__":
    main()
