"""Domain adaptation: each pair × method × {without, with SuperCM} × seeds, on the offline shifts
or on the Office benchmarks (issue 12).

    supercm fetch-data all --root /tmp/supercm-data
    python benchmarks/uda_accuracy.py --data-root /tmp/supercm-data                       # every pair and method
    python benchmarks/uda_accuracy.py --pairs optdigits-to-mnist10k --methods source_only dann --seeds 3

    # A whole Office benchmark on one GPU (ResNet-50, the field's protocol; configs/uda/office31-*.yaml),
    # each run in its own folder under --run-root so a killed run resumes from its last checkpoint:
    python benchmarks/uda_accuracy.py --benchmark office31 --data-root ~/data --run-root runs/office31 \
        --out benchmarks/results/office31.jsonl

Each run trains ``configs/uda/<pair>-<method>[-cm].yaml`` with a seed. Target test accuracy is
reported under the three selection rules the trainer records, named in every table:

* **source-val**: the iterate with the best accuracy on held-out *source* samples (the headline:
  it reads no target label);
* **last**: the final iterate;
* **DEV**, **SND**, **entropy**, **IM**: the label-free rules (:mod:`supercm.label_free`): the iterate
  with the best importance-weighted source-validation risk, soft neighbourhood density, mean
  prediction entropy, information maximisation, computed at every evaluation from unlabeled target
  training rows (runs recorded before these rules have none);
* **oracle**: the iterate with the best *target test* accuracy. It selects on the test set — what
  the field's common code reports — so it is an upper bound, never a result.

Two tables then put the rules side by side: **every arm** (mean ± std per rule) and the **paired
gains** (each comparison below, plus each adapting method + SuperCM − source only: mean gain [95 % t
interval] wins/seeds per rule). Each rule's **regret** against the oracle (oracle's target test
accuracy − the rule's, per run: mean, max, share of runs within 1 point) over every run in the file
closes the table: which rule to trust.
Before it, the **Decided?** table: for each pair and comparison (each adapting method − source only,
each method + SuperCM − the method) and each rule, the half-width of the paired gain's 95 % t interval
now, and the seeds it would need to reach ±``--half-width`` points (default 1.5, issue 17's bar) at the
sd of its paired differences so far: where to add seeds next. After it, **Runs to add**: each arm's
seeds now, the seeds its comparisons need under every rule (the most of them), and the runs still to
add, summed per pair: what deciding the whole pair would cost.
``--table-only`` rewrites the table from ``--out`` without training.

Finished runs are appended to ``--out`` (JSON lines) at once; a rerun skips them. A killed sweep
takes its worker processes with it (``supercm.lifeline``); a rerun continues each killed run from its
last checkpoint, skips (one line each) a run directory another live process holds, and runs the rest;
a run that fails is one line and the others go on (the exit status says the table is incomplete). The table
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
DIGIT_PAIRS = ("mnist10k-to-mnistm_style", "optdigits-to-mnist10k", "synth_digits-to-mnist10k", "mnist10k-to-optdigits",
               "mnist10k-to-mnistm_pool")
#: The Office benchmarks' tasks, as configs/generate.py writes them (``office31-A-to-W`` …).
BENCHMARKS = ("office31", "officehome", "imageclef", "office_caltech")
OFFICE_PAIRS = {b: tuple(sorted(p.name.removesuffix("-source_only.yaml")
                                for p in (ROOT / "configs" / "uda").glob(f"{b}-*-to-*-source_only.yaml")))
                for b in BENCHMARKS}
PAIRS = DIGIT_PAIRS + tuple(p for b in BENCHMARKS for p in OFFICE_PAIRS[b])
METHODS = ("source_only", "dann", "mcc", "bnm", "dann+mcc", "dann+bnm")
RULES = (("best_validation", "source-val"), ("last", "last"), ("dev", "DEV"), ("snd", "SND"), ("entropy", "entropy"),
         ("im", "IM"), ("oracle_test_selected", "oracle (test-selected)"))
#: The rules that read no target label, whose regret against the oracle the table reports.
LABEL_FREE = tuple(r for r, _ in RULES if r != "oracle_test_selected")
#: How the tables name each method.
LABELS = {"source_only": "source only", "dann": "DANN", "mcc": "MCC", "bnm": "BNM", "dann+mcc": "DANN + MCC",
          "dann+bnm": "DANN + BNM"}
#: The paired 95 % interval half-width (points) a comparison must reach to count as decided (issue 17).
DECIDED = 1.5


def config_path(pair: str, method: str, cm: bool) -> Path:
    return ROOT / "configs" / "uda" / f"{pair}-{method}{'-cm' if cm else ''}.yaml"


def _init_worker(parent: int | None = None) -> None:
    import torch

    from supercm.lifeline import die_with_parent

    die_with_parent(parent)  # a killed sweep takes its workers with it: none lives on holding a run directory

    torch.set_num_threads(1)


def run_one(pair: str, method: str, cm: bool, seed: int, overrides: list[str], run_root: str | None = None) -> dict:
    from supercm.config import load_config
    from supercm.train import CHECKPOINT, Trainer

    path = config_path(pair, method, cm)
    cfg = load_config(path, [*overrides, f"train.seed={seed}", "train.progress=false", "train.tensorboard=false"])
    t0 = time.perf_counter()
    run_dir = None if run_root is None else Path(run_root) / _name(pair, method, cm, seed)
    if run_dir is not None and (run_dir / CHECKPOINT).exists():
        result = Trainer.resume(run_dir).fit()  # a killed run continues from its last checkpoint
    else:
        result = Trainer(cfg, run_dir).fit()
    return {"pair": pair, "method": method, "cm": cm, "seed": seed, "config": str(path.relative_to(ROOT)),
            "overrides": overrides, "beta": cfg.cm.beta, "iterations": cfg.train.iterations,
            **result.to_dict(), "rules": result.selection_rules(), "wall_seconds": time.perf_counter() - t0}


def _name(pair: str, method: str, cm: bool, seed: int) -> str:
    return f"{pair}-{method}{'-cm' if cm else ''}-seed{seed}"


def _skip_held(todo: list[tuple], run_root: str | None) -> list[tuple]:
    """``todo`` without the runs whose directory another live process holds (a sweep still running,
    or a run started by hand): one line each; they are done by a rerun once that process has ended."""
    from supercm.fileio import lock_holder
    from supercm.train import LOCK

    if run_root is None:
        return todo
    keep = []
    for t in todo:
        run_dir = Path(run_root) / _name(*t)
        holder = lock_holder(run_dir / LOCK)
        if holder is None:
            keep.append(t)
        else:
            print(f"skipping {run_dir}: in use by process {holder} (another sweep or run); rerun this command "
                  f"after it ends to include it", file=sys.stderr)
    return keep


def _key(r: dict) -> tuple:
    return (r["pair"], r["method"], r["cm"], r["seed"], tuple(r["overrides"]))


def _fmt(values: dict) -> str:
    """An arm's ``{seed: accuracy}`` as "mean ± std" in percent (the mean alone for one seed)."""
    from supercm.analysis.compare import summarize

    s = summarize(values.values())
    return f"{100 * s.mean:.2f} ± {100 * s.std:.2f}" if s.n > 1 else f"{100 * s.mean:.2f}"


def table(records: list[dict], half_width: float = DECIDED) -> str:
    from supercm.analysis.compare import paired

    lines = ["Target test accuracy % (mean ± std over seeds) under each selection rule; gain = + SuperCM − base, "
             "paired by seed (its 95 % interval mean ± t(n−1)·sd/√n, wins/seeds, paired t-test p).", ""]
    pairs = [p for p in PAIRS if any(r["pair"] == p for r in records)]
    pairs += sorted({r["pair"] for r in records} - set(pairs))
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    for rule, label in RULES:
        if not any(r["rules"].get(rule) is not None for r in records):
            continue  # runs recorded before the rule existed
        lines += [f"**Rule: {label}**", "", "| pair | method | base | + SuperCM | gain | 95 % CI (t) | wins | p |",
                  "|---|---|---|---|---|---|---|---|"]
        for pair in pairs:
            for method in methods:
                arms = {cm: _arm(records, pair, method, cm, rule) for cm in (False, True)}
                if not arms[False] and not arms[True]:
                    continue
                base = _fmt(arms[False]) if arms[False] else "–"
                cm = _fmt(arms[True]) if arms[True] else "–"
                if arms[False] and arms[True]:
                    d = paired(arms[False], arms[True])
                    gain, ci, wins, p = f"{100 * d.gain:+.2f}", _ci(d), f"{d.wins}/{d.n}", f"{d.p_value:.3g}"
                else:
                    gain = ci = wins = p = "–"
                lines.append(f"| {pair} | {method} | {base} | {cm} | {gain} | {ci} | {wins} | {p} |")
        lines += _benchmark_averages(records, rule, methods)
        lines.append("")
    return "\n".join(lines + against_source_only(records, pairs, methods) + arm_table(records, pairs, methods)
                     + gains_table(records, pairs, methods) + precision_table(records, pairs, methods, half_width)
                     + runs_to_add_table(records, pairs, methods, half_width)
                     + regret_table(records))


def _arm(records: list[dict], pair: str, method: str, cm: bool, rule: str) -> dict:
    """``{seed: target test accuracy under rule}`` of one arm (runs that lack the rule left out)."""
    return {r["seed"]: r["rules"][rule] for r in records if r["pair"] == pair and r["method"] == method
            and r["cm"] == cm and r["rules"].get(rule) is not None}


def _ci(d) -> str:
    lo, hi = d.t_ci
    return "–" if lo != lo else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"


def against_source_only(records: list[dict], pairs: list[str], methods: list[str]) -> list[str]:
    """Each adapting method (each arm) − source only without SuperCM, paired by seed, under every rule that
    reads no target label: does the baseline reproduce a gain over source only before SuperCM is judged?"""
    from supercm.analysis.compare import paired

    lines = ["**Against source only** (method − source only without SuperCM, paired by seed; points, 95 % t "
             "interval, wins)", "", "| rule | pair | method | gain | 95 % CI (t) | wins |", "|---|---|---|---|---|---|"]
    rows = 0
    for rule, label in RULES:
        for pair in pairs:
            reference = _arm(records, pair, "source_only", False, rule)
            for method in methods:
                for cm in (False, True):
                    if (method, cm) == ("source_only", False):
                        continue
                    d = paired(reference, _arm(records, pair, method, cm, rule))
                    if d.n:
                        rows += 1
                        name = method + (" + SuperCM" if cm else "")
                        lines.append(f"| {label} | {pair} | {name} | {100 * d.gain:+.2f} | {_ci(d)} | {d.wins}/{d.n} |")
    return lines + [""] if rows else []


def comparisons(methods: list[str]) -> list[tuple[str, tuple[str, bool], tuple[str, bool]]]:
    """``(label, baseline arm, treatment arm)`` for each comparison the precision table judges: each
    adapting method − source only (does the baseline adapt?), then each method + SuperCM − the method."""
    out = [(f"{LABELS.get(m, m)} − source only", ("source_only", False), (m, False))
           for m in methods if m != "source_only"]
    return out + [(f"{LABELS.get(m, m)} + SuperCM − {LABELS.get(m, m)}", (m, False), (m, True)) for m in methods]


def _rules(records: list[dict]) -> list[tuple[str, str]]:
    """``(rule, short label)`` of the rules some run in ``records`` records."""
    return [(r, label.split(" ")[0]) for r, label in RULES if any(x["rules"].get(r) is not None for x in records)]


def arm_table(records: list[dict], pairs: list[str], methods: list[str]) -> list[str]:
    """Every arm's target test accuracy (mean ± std over its seeds) with the rules side by side: one row
    per pair × method × {without, with SuperCM}."""
    rules = _rules(records)
    lines = ["**Every arm under every rule** (target test accuracy %, mean ± std over seeds)", "",
             "| pair | arm | seeds | " + " | ".join(label for _, label in rules) + " |", "|---|---|---|" + "---|" * len(rules)]
    rows = 0
    for pair in pairs:
        for method in methods:
            for cm in (False, True):
                arms = [_arm(records, pair, method, cm, rule) for rule, _ in rules]
                if not any(arms):
                    continue
                rows += 1
                cells = [_fmt(values) if values else "–" for values in arms]
                seeds = max(len(v) for v in arms)
                name = LABELS.get(method, method) + (" + SuperCM" if cm else "")
                lines.append(f"| {pair} | {name} | {seeds} | " + " | ".join(cells) + " |")
    return lines + [""] if rows else []


def gains_table(records: list[dict], pairs: list[str], methods: list[str]) -> list[str]:
    """Each comparison of the Decided? table, plus each adapting method + SuperCM − source only, with the
    rules side by side: the paired gain in points, its 95 % t interval and wins/seeds."""
    from supercm.analysis.compare import paired

    rules = _rules(records)
    comps = comparisons(methods) + [(f"{LABELS.get(m, m)} + SuperCM − source only", ("source_only", False), (m, True))
                                    for m in methods if m != "source_only"]
    lines = ["**Paired gains under every rule** (points, paired by seed: mean gain [95 % t interval] wins/seeds)", "",
             "| pair | comparison | " + " | ".join(label for _, label in rules) + " |", "|---|---|" + "---|" * len(rules)]
    rows = 0
    for pair in pairs:
        for label, a, b in comps:
            cells = []
            for rule, _ in rules:
                d = paired(_arm(records, pair, *a, rule), _arm(records, pair, *b, rule))
                if not d.n:
                    cells.append("–")
                    continue
                lo, hi = d.t_ci
                ci = "" if lo != lo else f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                cells.append(f"{100 * d.gain:+.1f}{ci} {d.wins}/{d.n}")
            if any(c != "–" for c in cells):
                rows += 1
                lines.append(f"| {pair} | {label} | " + " | ".join(cells) + " |")
    return lines + [""] if rows else []


def _precision(records: list[dict], pair: str, a: tuple[str, bool], b: tuple[str, bool], rules: list[tuple[str, str]],
               half_width: float) -> tuple[list[str], list[int | None], set[int]]:
    """One row of the Decided? table: per rule the half-width cell, the seeds that would reach ±``half_width``
    at the paired differences' sd so far (None under 2 seeds), and the paired seed counts seen."""
    from supercm.analysis.compare import paired, seeds_for_half_width

    cells, needed, ns = [], [], set()
    for rule, _ in rules:
        d = paired(_arm(records, pair, *a, rule), _arm(records, pair, *b, rule))
        if d.n < 2:
            cells.append("–")
            needed.append(None)
            continue
        ns.add(d.n)
        m = seeds_for_half_width(100 * d.sd, half_width)
        needed.append(m)
        if 100 * d.half_width <= half_width:
            cells.append(f"**±{100 * d.half_width:.2f}**")
        else:
            cells.append(f"±{100 * d.half_width:.2f} ({m if m is not None else '> 100000'})")
    return cells, needed, ns


def precision_table(records: list[dict], pairs: list[str], methods: list[str], half_width: float = DECIDED) -> list[str]:
    """Is each comparison decided? Per pair × comparison × rule: the half-width of the paired gain's 95 % t
    interval now, and the seeds it would need to reach ±``half_width`` points at the sd of its paired
    differences so far (:func:`supercm.analysis.compare.seeds_for_half_width`); the last column is the
    seeds at which every rule would reach it."""
    rules = _rules(records)
    lines = [(f"**Decided?** Half-width of each paired gain's 95 % t interval (points, t(n−1)·sd/√n) under each rule; "
              f"**bold**: within ±{half_width:g}; otherwise, in brackets, the seeds it needs for ±{half_width:g} at the "
              f"sd of its paired differences so far (the smallest m with t(m−1)·sd/√m ≤ {half_width:g})"), "",
             "| pair | comparison | seeds | " + " | ".join(label for _, label in rules) + " | seeds for every rule |",
             "|---|---|---|" + "---|" * (len(rules) + 1)]
    rows = 0
    for pair in pairs:
        for label, a, b in comparisons(methods):
            cells, needed, ns = _precision(records, pair, a, b, rules, half_width)
            if not ns:
                continue
            rows += 1
            total = "–" if None in needed else str(max(needed))
            lines.append(f"| {pair} | {label} | {'/'.join(map(str, sorted(ns)))} | " + " | ".join(cells) + f" | {total} |")
    return lines + [""] if rows else []


def runs_to_add_table(records: list[dict], pairs: list[str], methods: list[str], half_width: float = DECIDED) -> list[str]:
    """What deciding every comparison of the Decided? table would cost: each arm must reach the most seeds
    any of its comparisons needs under every rule (paired by seed, so seeds 0…m−1), and the runs to add are
    the seeds it lacks; per pair, their sum. An arm in a comparison with fewer than 2 paired seeds (no sd
    yet) shows "–", and its pair's sum is a lower bound (marked ≥)."""
    rules = _rules(records)
    needs: dict[tuple[str, tuple[str, bool]], list[int | None]] = {}  # (pair, arm) -> each comparison's need
    for pair in pairs:
        for _, a, b in comparisons(methods):
            if not all(any(_arm(records, pair, *x, rule) for rule, _ in rules) for x in (a, b)):
                continue  # an arm not run: the comparison is not being made (the Decided? table has no row)
            _, needed, ns = _precision(records, pair, a, b, rules, half_width)
            m = None if (not ns or None in needed) else max(needed)
            for arm in (a, b):
                needs.setdefault((pair, arm), []).append(m)
    if not needs:
        return []
    target = {key: None if None in ms else max(ms) for key, ms in needs.items()}
    lines = [(f"**Runs to add** for ±{half_width:g} under every rule at the sd so far: each arm to the most seeds any of "
              "its comparisons above needs (seeds 0…m−1, paired by seed)"), "",
             "| pair | arm | seeds | seeds needed | runs to add |", "|---|---|---|---|---|"]
    for pair in pairs:
        arms = [(arm, m) for (p, arm), m in target.items() if p == pair]
        if not arms:
            continue
        total, bound = 0, False
        for (method, cm), m in arms:
            have = max(len(_arm(records, pair, method, cm, rule)) for rule, _ in rules)
            name = LABELS.get(method, method) + (" + SuperCM" if cm else "")
            if m is None:
                bound = True
                lines.append(f"| {pair} | {name} | {have} | – | – |")
                continue
            total += max(0, m - have)
            lines.append(f"| {pair} | {name} | {have} | {m} | {max(0, m - have)} |")
        lines.append(f"| {pair} | every arm | | | {'≥ ' if bound else ''}{total:,} |")
    return lines + [""]


def regret_table(records: list[dict]) -> list[str]:
    """Each label-free rule's regret against the oracle over all runs (points of target test accuracy)."""
    from supercm.analysis.compare import selection_regret

    regret = selection_regret([r["rules"] for r in records], LABEL_FREE)
    labels = dict(RULES)
    lines = [("**Regret against the oracle** (oracle − rule, points of target test accuracy, per run; over every "
              "run above that records the rule)"), "", "| rule | runs | mean regret | max regret | within 1 point |",
             "|---|---|---|---|---|"]
    for rule, g in regret.items():
        if g.n:
            lines.append(f"| {labels[rule]} | {g.n} | {100 * g.mean:.2f} | {100 * g.max:.2f} | "
                         f"{round(g.within_1_point * g.n)}/{g.n} |")
    return lines + [""]


def _benchmark_averages(records: list[dict], rule: str, methods: list[str]) -> list[str]:
    """One row per Office benchmark and method: the mean over its tasks of the per-task means (the
    field's "avg" column), for the benchmarks whose every task has both arms."""
    import statistics

    rows = []
    for bench in BENCHMARKS:
        tasks = OFFICE_PAIRS[bench]
        for method in methods:
            means = {}
            for cm in (False, True):
                per_task = [[r["rules"][rule] for r in records if r["pair"] == t and r["method"] == method
                             and r["cm"] == cm and r["rules"].get(rule) is not None] for t in tasks]
                if tasks and all(per_task):
                    means[cm] = statistics.fmean(statistics.fmean(v) for v in per_task)
            if len(means) == 2:
                rows.append(f"| {bench} avg ({len(tasks)} tasks) | {method} | {100 * means[False]:.2f} | "
                            f"{100 * means[True]:.2f} | {100 * (means[True] - means[False]):+.2f} | – | – |")
    return rows


def positive_int(text: str) -> int:
    from supercm.cli import _positive_int  # ≥ 1, or argparse's one-line usage error

    return _positive_int(text)


def positive_points(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of points > 0, got {text}")
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", default=None, choices=PAIRS)
    ap.add_argument("--benchmark", choices=BENCHMARKS, help="every task of an Office benchmark (instead of --pairs)")
    ap.add_argument("--run-root", help="keep each run in its own folder here (resumable); default: in memory")
    ap.add_argument("--methods", nargs="+", default=list(METHODS[:4]), choices=METHODS)
    ap.add_argument("--seeds", type=positive_int, default=3)
    ap.add_argument("--arms", nargs="+", default=["base", "cm"], choices=["base", "cm"])
    ap.add_argument("--data-root", help="data root holding the fetched datasets (supercm fetch-data all)")
    ap.add_argument("--workers", type=positive_int, default=None, help="parallel runs (default: CPU count; 1 with --benchmark)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "uda_accuracy.jsonl"))
    ap.add_argument("--table-only", action="store_true", help="rewrite the table from --out's runs; train nothing")
    ap.add_argument("--half-width", type=positive_points, default=DECIDED,
                    help=f"paired 95 %% interval half-width (points) that counts as decided (default {DECIDED:g})")
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    a = ap.parse_args()
    if a.benchmark and a.pairs:
        ap.error("give --benchmark or --pairs, not both")
    a.pairs = list(OFFICE_PAIRS[a.benchmark]) if a.benchmark else (a.pairs or list(DIGIT_PAIRS[:3]))
    a.workers = a.workers or (1 if a.benchmark else os.cpu_count() or 1)
    overrides = list(a.overrides) + ([f"data.root={a.data_root}"] if a.data_root else [])
    out = Path(a.out)
    done = {_key(json.loads(line)) for line in out.read_text().splitlines()} if out.exists() else set()
    todo = [(p, m, cm, s) for p in a.pairs for m in a.methods for cm in [arm == "cm" for arm in a.arms]
            for s in range(a.seeds) if (p, m, cm, s, tuple(overrides)) not in done]
    if a.table_only:
        todo = []
    print(f"{len(done)} runs already in {out}; {len(todo)} to go with {a.workers} workers", file=sys.stderr)
    kept = _skip_held(todo, a.run_root)
    todo, failed = kept, len(todo) - len(kept)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(a.workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(run_one, *t, overrides, a.run_root): t for t in todo}
        for f in as_completed(futures):
            try:
                r = f.result()
            except Exception as exc:  # one run's failure is one line; the others go on
                failed += 1
                print(f"{_name(*futures[f])}: {'skipped' if 'is in use' in str(exc) else 'failed'}: "
                      f"{' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
                continue
            with out.open("a") as fh:
                fh.write(json.dumps(r) + "\n")
            val = r["rules"]["best_validation"]
            print(f"{r['pair']} {r['method']}{' + SuperCM' if r['cm'] else ''} seed {r['seed']}: "
                  f"source-val rule {'–' if val is None else f'{100 * val:.2f}'}", file=sys.stderr)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    records = [r for r in records if tuple(r["overrides"]) == tuple(overrides)]
    md = table(records, a.half_width)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)
    if failed:
        sys.exit(f"{failed} run(s) skipped or failed (above); rerun the same command to do them")


if __name__ == "__main__":
    main()
