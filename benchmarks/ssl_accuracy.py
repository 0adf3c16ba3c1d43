"""SSL accuracy at CPU scale: every base method with and without SuperCM, several seeds.

    python benchmarks/ssl_accuracy.py --data-root /tmp/supercm-data            # the full table
    python benchmarks/ssl_accuracy.py --datasets mnist10k --methods supervised --seeds 1 --iterations 100

Each run trains the config ``configs/cpu/<dataset>-<method>[-cm].yaml`` (the same
files ``supercm train`` takes) with a seed, and reports test accuracy at the best
validation accuracy. Finished runs are appended to ``--out`` (JSON lines) at once,
and a rerun skips them, so an interrupted benchmark loses nothing. The markdown
table (mean ± std over seeds, gain of +SuperCM over its base, paired t-test) is
written beside it.

Arms: ``base`` (β = 0), ``cm`` (+ SuperCM, centroids from labeled features) and
``cm_pseudo`` (+ SuperCM with ``cm.centroid_source=labeled+pseudo``: also the unlabeled rows
the base method pseudo-labels; FixMatch, FreeMatch and Pseudo-Label only; the ``-cm`` config).
Each run also records its curve: at every evaluation, the iteration, the training seconds, the
validation accuracy and the test accuracy of the model validation has selected so far.

    python benchmarks/ssl_accuracy.py --methods fixmatch freematch --arms base cm cm_pseudo --workers 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("supervised", "pseudo_label", "vat", "pi_model", "mean_teacher", "fixmatch", "freematch")
LABELS = {"supervised": "CE", "pseudo_label": "Pseudo-Label", "vat": "VAT", "pi_model": "Π-Model", "mean_teacher": "Mean Teacher",
          "fixmatch": "FixMatch", "freematch": "FreeMatch"}
ARMS = ("base", "cm", "cm_pseudo")
#: The overrides an arm adds to its config (``cm_pseudo`` trains the ``-cm`` config).
ARM_OVERRIDES = {"base": [], "cm": [], "cm_pseudo": ["cm.centroid_source=labeled+pseudo"]}


def config_path(dataset: str, method: str, cm: bool) -> Path:
    return ROOT / "configs" / "cpu" / f"{dataset}-{method}{'-cm' if cm else ''}.yaml"


def _init_worker(parent: int | None = None) -> None:
    import torch

    from supercm.lifeline import die_with_parent

    die_with_parent(parent)  # a killed sweep takes its workers with it

    torch.set_num_threads(1)  # one process per core is faster than threads for these small models


def run_one(dataset: str, method: str, arm: str, seed: int, overrides: list[str]) -> dict:
    from supercm.config import load_config
    from supercm.train import Trainer

    cm = arm != "base"
    path = config_path(dataset, method, cm)
    cfg = load_config(path, [*ARM_OVERRIDES[arm], *overrides, f"train.seed={seed}", "train.progress=false",
                             "train.tensorboard=false"])
    t0 = time.perf_counter()
    trainer = Trainer(cfg, None)
    curve = []

    def on_evaluate(rec: dict) -> None:
        curve.append({"iteration": rec["iteration"], "seconds": trainer.elapsed, "val": rec["val"],
                      "test_at_best_val": trainer.selection.best["test"]})

    result = trainer.fit(on_evaluate)
    return {
        "dataset": dataset, "method": method, "cm": cm, "arm": arm, "seed": seed, "config": str(path.relative_to(ROOT)),
        "overrides": overrides, "beta": cfg.cm.beta, "delta": cfg.method.delta, "iterations": cfg.train.iterations,
        "centroid_source": cfg.cm.centroid_source, **result.to_dict(), "wall_seconds": time.perf_counter() - t0,
        "curve": curve,
    }


def _arm(r: dict) -> str:
    return r.get("arm", "cm" if r["cm"] else "base")  # runs written before the third arm


def _key(r: dict) -> tuple:
    return (r["dataset"], r["method"], _arm(r), r["seed"], tuple(r["overrides"]))


def table(rows: list[dict]) -> str:
    """One line per (dataset, method): base and +SuperCM over seeds, paired by seed
    (statistics from :mod:`supercm.analysis.compare`, the same as ``supercm compare``)."""
    from supercm.analysis.compare import fmt_mean_std, fmt_p, paired, summarize

    out = [
        "| dataset | method | base test % | + SuperCM test % | gain | SuperCM better | paired t-test p | base val % | + SuperCM val % | s/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {}
    for r in rows:
        by.setdefault((r["dataset"], r["method"], _arm(r)), {})[r["seed"]] = r
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for method, arm in ((m, a) for m in METHODS for a in ARMS[1:]):
            base, cm = by.get((dataset, method, "base"), {}), by.get((dataset, method, arm), {})
            if not cm and (arm != "cm" or not base):
                continue
            label = LABELS[method] + (" (+ SuperCM, labeled + pseudo centroids)" if arm == "cm_pseudo" else "")

            def ms(runs: dict, key: str) -> str:
                return fmt_mean_std(summarize(r[key] for r in runs.values()))

            key = "test_accuracy_at_best_val"
            c = paired({s: r[key] for s, r in base.items()}, {s: r[key] for s, r in cm.items()})
            gain = f"{100 * c.gain:+.2f}" if c.n else "–"
            wins = f"{c.wins}/{c.n}" if c.n else "–"
            secs = [r["wall_seconds"] for r in [*base.values(), *cm.values()]]
            out.append(
                f"| {dataset} | {label} | {ms(base, key)} | {ms(cm, key)} "
                f"| {gain} | {wins} | {fmt_p(c.p_value)} | {ms(base, 'best_val_accuracy')} | {ms(cm, 'best_val_accuracy')} | {statistics.mean(secs):.0f} |"
            )
    return "\n".join(out)


def positive_int(text: str) -> int:
    from supercm.cli import _positive_int  # ≥ 1, or argparse's one-line usage error

    return _positive_int(text)


def curve_table(rows: list[dict], target: float = 0.9745) -> str:
    """Test accuracy of the validation-selected model against iterations (mean over seeds), per
    dataset, method and arm, for the runs that recorded a curve; and when each mean first reaches
    ``target`` (the paper's MNIST-100 number by default), with the mean training seconds to get there."""
    from supercm.analysis.compare import fmt_mean_std, summarize

    by: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("curve"):
            by.setdefault((r["dataset"], r["method"], _arm(r)), []).append(r)
    if not by:
        return ""
    names = {"base": "", "cm": " + SuperCM", "cm_pseudo": " + SuperCM (pseudo centroids)"}
    iterations = sorted({c["iteration"] for runs in by.values() for r in runs for c in r["curve"]})
    out = ["| dataset | arm | " + " | ".join(str(i) for i in iterations) + f" | first ≥ {100 * target:.2f} % (mean) |",
           "|---|---|" + "---|" * (len(iterations) + 1)]
    for (dataset, method, arm), runs in by.items():
        cells, reached = [], "not reached"
        for i in iterations:
            points = [c for r in runs for c in r["curve"] if c["iteration"] == i]
            tests = [c["test_at_best_val"] for c in points if c["test_at_best_val"] is not None]
            if len(tests) != len(runs):
                cells.append("–")
                continue
            mean = statistics.mean(tests)
            cells.append(fmt_mean_std(summarize(tests)))
            if mean >= target and reached == "not reached":
                reached = f"iteration {i} ({statistics.mean(c['seconds'] for c in points):.0f} s)"
        out.append(f"| {dataset} | {LABELS[method]}{names[arm]} | " + " | ".join(cells) + f" | {reached} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["mnist10k", "fashion_mnist"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", type=positive_int, default=3)
    ap.add_argument("--arms", nargs="+", default=["base", "cm"], choices=ARMS)
    ap.add_argument("--data-root", help="data root holding the fetched datasets (supercm fetch-data all)")
    ap.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ssl_accuracy.jsonl"))
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = ap.parse_args(argv)

    overrides = list(args.overrides) + ([f"data.root={args.data_root}"] if args.data_root else [])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    have = {_key(r) for r in done}
    jobs = [
        (d, m, arm, s, overrides)
        for s in range(args.seeds) for d in args.datasets for m in args.methods for arm in args.arms
        if (d, m, arm, s, tuple(overrides)) not in have
    ]
    for d in args.datasets:
        for m in args.methods:
            for arm in args.arms:
                if not config_path(d, m, arm != "base").exists():
                    raise SystemExit(f"no config {config_path(d, m, arm != 'base')}; run configs/generate.py")
    print(f"{len(done)} runs already in {out}; {len(jobs)} to go with {args.workers} workers", file=sys.stderr)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(run_one, *job): job for job in jobs}
        for i, fut in enumerate(as_completed(futures), 1):
            r = fut.result()
            with open(out, "a") as f:
                f.write(json.dumps(r) + "\n")
            done.append(r)
            print(
                f"[{i}/{len(jobs)} {time.perf_counter() - t0:.0f}s] {r['dataset']} {r['method']} {r['arm']} "
                f"seed {r['seed']}: val {100 * r['best_val_accuracy']:.2f} test {100 * r['test_accuracy_at_best_val']:.2f} "
                f"({r['wall_seconds']:.0f}s)", file=sys.stderr, flush=True,
            )
    rows = [r for r in done if tuple(r["overrides"]) == tuple(overrides)]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    md = table(rows)
    curves = curve_table(rows)
    if curves:
        md += "\n\nTest accuracy (%) of the validation-selected model against iterations, mean ± std over seeds:\n\n" + curves
    header = f"commit {commit}; command: python benchmarks/ssl_accuracy.py {' '.join(argv or sys.argv[1:])}\n\n"
    out.with_suffix(".md").write_text(header + md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
