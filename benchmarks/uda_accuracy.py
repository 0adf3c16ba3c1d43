"""Domain adaptation on the offline shifts: each pair × method × {without, with SuperCM} × seeds.

    supercm fetch-data all --root /tmp/supercm-data
    python benchmarks/uda_accuracy.py --data-root /tmp/supercm-data                       # every pair and method
    python benchmarks/uda_accuracy.py --pairs optdigits-to-mnist10k --methods source_only dann --seeds 3

Each run trains ``configs/uda/<pair>-<method>[-cm].yaml`` with a seed. Target test accuracy is
reported under the three selection rules the trainer records, named in every table:

* **source-val**: the iterate with the best accuracy on held-out *source* samples (the headline:
  it reads no target label);
* **last**: the final iterate;
* **oracle**: the iterate with the best *target test* accuracy. It selects on the test set — what
  the field's common code reports — so it is an upper bound, never a result.

Finished runs are appended to ``--out`` (JSON lines) at once; a rerun skips them. The table
(mean ± std over seeds, paired gain of + SuperCM with its paired t-test p-value) is written
beside it as Markdown.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ("mnist10k-to-mnistm_style", "optdigits-to-mnist10k", "synth_digits-to-mnist10k", "mnist10k-to-optdigits")
METHODS = ("source_only", "dann", "mcc", "bnm", "dann+mcc", "dann+bnm")
RULES = (("best_validation", "source-val"), ("last", "last"), ("oracle_test_selected", "oracle (test-selected)"))


def config_path(pair: str, method: str, cm: bool) -> Path:
    return ROOT / "configs" / "uda" / f"{pair}-{method}{'-cm' if cm else ''}.yaml"


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_one(pair: str, method: str, cm: bool, seed: int, overrides: list[str]) -> dict:
    from supercm.config import load_config
    from supercm.train import Trainer

    path = config_path(pair, method, cm)
    cfg = load_config(path, [*overrides, f"train.seed={seed}", "train.progress=false", "train.tensorboard=false"])
    t0 = time.perf_counter()
    result = Trainer(cfg, None).fit()
    return {"pair": pair, "method": method, "cm": cm, "seed": seed, "config": str(path.relative_to(ROOT)),
            "overrides": overrides, "beta": cfg.cm.beta, "iterations": cfg.train.iterations,
            **result.to_dict(), "rules": result.selection_rules(), "wall_seconds": time.perf_counter() - t0}


def _key(r: dict) -> tuple:
    return (r["pair"], r["method"], r["cm"], r["seed"], tuple(r["overrides"]))


def table(records: list[dict]) -> str:
    from supercm.analysis.compare import paired, summarize

    def fmt(values: dict) -> str:
        s = summarize(values.values())
        return f"{100 * s.mean:.2f} ± {100 * s.std:.2f}" if s.n > 1 else f"{100 * s.mean:.2f}"

    lines = ["Target test accuracy % (mean ± std over seeds) under each selection rule; gain = + SuperCM − base, "
             "paired by seed (wins/seeds, paired t-test p).", ""]
    pairs = [p for p in PAIRS if any(r["pair"] == p for r in records)]
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    for rule, label in RULES:
        lines += [f"**Rule: {label}**", "", "| pair | method | base | + SuperCM | gain | wins | p |", "|---|---|---|---|---|---|---|"]
        for pair in pairs:
            for method in methods:
                arms = {cm: {r["seed"]: r["rules"][rule] for r in records
                             if r["pair"] == pair and r["method"] == method and r["cm"] == cm}
                        for cm in (False, True)}
                if not arms[False] and not arms[True]:
                    continue
                base = fmt(arms[False]) if arms[False] else "–"
                cm = fmt(arms[True]) if arms[True] else "–"
                if arms[False] and arms[True]:
                    d = paired(arms[False], arms[True])
                    gain, wins, p = f"{100 * d.gain:+.2f}", f"{d.wins}/{d.n}", f"{d.p_value:.3g}"
                else:
                    gain = wins = p = "–"
                lines.append(f"| {pair} | {method} | {base} | {cm} | {gain} | {wins} | {p} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS[:3]), choices=PAIRS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS[:4]), choices=METHODS)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--arms", nargs="+", default=["base", "cm"], choices=["base", "cm"])
    ap.add_argument("--data-root", help="data root holding the fetched datasets (supercm fetch-data all)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "uda_accuracy.jsonl"))
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    a = ap.parse_args()
    overrides = list(a.overrides) + ([f"data.root={a.data_root}"] if a.data_root else [])
    out = Path(a.out)
    done = {_key(json.loads(line)) for line in out.read_text().splitlines()} if out.exists() else set()
    todo = [(p, m, cm, s) for p in a.pairs for m in a.methods for cm in [arm == "cm" for arm in a.arms]
            for s in range(a.seeds) if (p, m, cm, s, tuple(overrides)) not in done]
    print(f"{len(done)} runs already in {out}; {len(todo)} to go with {a.workers} workers", file=sys.stderr)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(a.workers, mp_context=ctx, initializer=_init_worker) as pool:
        futures = [pool.submit(run_one, *t, overrides) for t in todo]
        for f in as_completed(futures):
            r = f.result()
            with out.open("a") as fh:
                fh.write(json.dumps(r) + "\n")
            print(f"{r['pair']} {r['method']}{' + SuperCM' if r['cm'] else ''} seed {r['seed']}: "
                  f"source-val rule {100 * r['rules']['best_validation']:.2f}", file=sys.stderr)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    records = [r for r in records if tuple(r["overrides"]) == tuple(overrides)]
    md = table(records)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
