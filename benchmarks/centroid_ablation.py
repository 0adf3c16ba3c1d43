"""Which centroid rule, and which centroid features? An ablation on the demo's protocol.

    python benchmarks/centroid_ablation.py                 # 5 seeds, digits, β = 1
    python benchmarks/centroid_ablation.py --seeds 2 --iterations 100   # smoke

Variants: the paper's rule (τ = update count) with reused training features (this project's
default) or with the authors' extra eval-mode pass; the exact per-class running mean; EMA
centroids (momentum 0.9 and 0.99); learned centroids (the ablation the paper reports to
collapse); and β = 0 (CE) for reference. Test accuracy at the best validation accuracy,
mean ± std over seeds, and the paired difference to the default. Writes JSON + markdown to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "paper rule, reused features (default)": {},
    "paper rule, extra eval-mode pass (authors' code)": {"cm.features": "eval_pass"},
    "exact running mean": {"cm.centroids": "mean"},
    "EMA, momentum 0.9": {"cm.centroids": "ema", "cm.momentum": 0.9},
    "EMA, momentum 0.99": {"cm.centroids": "ema", "cm.momentum": 0.99},
    "learned centroids": {"cm.centroids": "learned"},
    "CE only (β = 0)": {"cm.beta": 0.0},
}
DEFAULT = "paper rule, reused features (default)"


def _init(parent: int | None = None) -> None:
    import torch

    from supercm.lifeline import die_with_parent

    die_with_parent(parent)  # a killed sweep takes its workers with it

    torch.set_num_threads(1)


def run(variant: str, seed: int, beta: float, iterations: int | None) -> dict:
    from supercm.config import from_dict
    from supercm.demo import DEMO_CONFIG
    from supercm.train import Trainer

    cfg = from_dict(DEMO_CONFIG).replace(**{"cm.beta": beta, "train.seed": seed})
    if iterations:
        cfg = cfg.replace(**{"train.iterations": iterations})
    cfg = cfg.replace(**VARIANTS[variant])
    r = Trainer(cfg, None).fit()
    return {"variant": variant, "seed": seed, **r.to_dict()}


def positive_int(text: str) -> int:
    from supercm.cli import _positive_int  # ≥ 1, or argparse's one-line usage error

    return _positive_int(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=positive_int, default=5)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "centroid_ablation.json"))
    args = ap.parse_args(argv)

    jobs = [(v, s, args.beta, args.iterations) for s in range(args.seeds) for v in VARIANTS]
    rows = []
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init, initargs=(os.getpid(),)) as pool:
        for fut in as_completed([pool.submit(run, *j) for j in jobs]):
            rows.append(fut.result())
    by = {v: {r["seed"]: r for r in rows if r["variant"] == v} for v in VARIANTS}

    def ms(v: str, key: str) -> str:
        vals = [100 * r[key] for r in by[v].values()]
        return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.2f}"

    lines = ["| variant | val acc % | test acc % | Δ test vs default (paired) | s/run |", "|---|---|---|---|---|"]
    for v in VARIANTS:
        d = [100 * (by[v][s]["test_accuracy_at_best_val"] - by[DEFAULT][s]["test_accuracy_at_best_val"]) for s in by[v]]
        secs = statistics.mean(r["seconds"] for r in by[v].values())
        lines.append(f"| {v} | {ms(v, 'best_val_accuracy')} | {ms(v, 'test_accuracy_at_best_val')} | "
                     f"{statistics.mean(d):+.2f} | {secs:.1f} |")
    md = "\n".join(lines)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"commit": commit, "args": vars(args), "runs": rows}, indent=1))
    out.with_suffix(".md").write_text(
        f"commit {commit}; python benchmarks/centroid_ablation.py {' '.join(argv or sys.argv[1:])}\n\n{md}\n"
    )
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
