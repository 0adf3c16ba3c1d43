"""Comparison reports over seeds: mean ± std, bootstrap confidence intervals, paired tests.

Runs are grouped by their configuration without the keys that do not change what is
learned (:data:`IGNORED_KEYS`: the seed, the device, the progress bar, TensorBoard),
so the seeds of one configuration form one group. For a metric with values
x_1..x_n over seeds:

* mean x̄ and sample standard deviation s = √(Σ(x_i − x̄)² / (n − 1));
* a percentile bootstrap confidence interval of the mean: resample the n seeds with
  replacement B times (a seeded generator), take the α/2 and 1 − α/2 quantiles of
  the resampled means;
* a selection rule's *regret* against the oracle (:func:`selection_regret`): per run, the target test
  accuracy of the iterate the oracle picked minus that of the iterate the rule picked (≥ 0 by the
  oracle's definition), summarised over runs as mean, max and the share of runs within 1 point;
* between a baseline group b and a treatment group t, *paired by seed* (the seed
  fixes the split and the initialisation, so d_i = t_i − b_i removes their share of
  the variance): the mean gain d̄, the number of seeds where t wins, and the paired
  t-test p-value, from t = d̄ / (s_d / √n) with n − 1 degrees of freedom, and the 95 % t interval
  d̄ ± h with half-width h = t_{0.975}(n − 1) · s_d / √n;
* how many seeds a comparison needs (:func:`seeds_for_half_width`): the smallest m with
  t_{0.975}(m − 1) · s_d / √m ≤ h* for a target half-width h*, taking the s_d measured so far as the
  planning value (a projection, not a promise: s_d itself moves as seeds are added).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import read_yaml_file

#: Config keys that do not change the learned model; a group is a config without them.
IGNORED_KEYS = ("train.seed", "train.device", "train.progress", "train.tensorboard")
#: Fields of a run's summary.json (or of a results-file row) that are results, not settings: every
#: field of the trainer's result (:class:`supercm.train.RunResult`), the benchmarks' ``rules`` and
#: timings. A results row is grouped by its other fields (its configuration) only.
RESULT_FIELDS = (
    "best_iteration", "best_val_accuracy", "test_accuracy_at_best_val", "final_val_accuracy", "final_test_accuracy",
    "ema_best_val_accuracy", "ema_test_accuracy_at_best_val", "seconds", "wall_seconds", "iterations",
    "oracle_test_accuracy", "oracle_iteration", "rules", "curve",
)
#: Name endings that mark a result field a future trainer or benchmark may add.
RESULT_SUFFIXES = ("_accuracy", "_iteration", "_seconds", "_loss")


def is_result_field(key: str) -> bool:
    return key in RESULT_FIELDS or key.endswith(RESULT_SUFFIXES)
#: Metrics reported by default, as (field, heading).
DEFAULT_METRICS = (("test_accuracy_at_best_val", "test % (best val)"), ("best_val_accuracy", "val %"),
                   ("final_test_accuracy", "test % (last)"))


@dataclass(frozen=True)
class Summary:
    """Mean, sample std, bootstrap CI ``(low, high)`` of the mean, and n."""

    mean: float
    std: float
    ci: tuple[float, float]
    n: int


@dataclass(frozen=True)
class Paired:
    """Treatment − baseline over the seeds both groups hold."""

    gain: float
    ci: tuple[float, float]
    wins: int
    n: int
    p_value: float  # NaN when undefined (n < 2 or all differences equal)
    seeds: tuple
    t_ci: tuple[float, float] = (math.nan, math.nan)  # mean ± t(n−1)·sd/√n: honest with few seeds, where the bootstrap is too narrow
    sd: float = math.nan  # sample std of the paired differences (NaN for n < 2)

    @property
    def half_width(self) -> float:
        """Half-width t(n−1)·sd/√n of :attr:`t_ci` (NaN for n < 2)."""
        lo, hi = self.t_ci
        return (hi - lo) / 2


@dataclass
class Record:
    """One run: its group, its seed and its metrics."""

    group: tuple  # hashable description of the configuration
    seed: int
    metrics: dict
    source: str = ""


def bootstrap_ci(values: Iterable[float], *, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded; a single value gives (v, v))."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    a = (1 - confidence) / 2
    return (float(np.quantile(means, a)), float(np.quantile(means, 1 - a)))


def summarize(values: Iterable[float], *, confidence: float = 0.95, seed: int = 0) -> Summary:
    v = [float(x) for x in values]
    if not v:
        return Summary(math.nan, math.nan, (math.nan, math.nan), 0)
    return Summary(statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0,
                   bootstrap_ci(v, confidence=confidence, seed=seed), len(v))


def paired(baseline: Mapping, treatment: Mapping, *, confidence: float = 0.95, seed: int = 0) -> Paired:
    """Compare ``{seed: value}`` maps over their common seeds (paired t-test, two-sided)."""
    from scipy import stats

    seeds = tuple(sorted(set(baseline) & set(treatment)))
    b = [float(baseline[s]) for s in seeds]
    t = [float(treatment[s]) for s in seeds]
    d = [x - y for x, y in zip(t, b)]
    if not d:
        return Paired(math.nan, (math.nan, math.nan), 0, 0, math.nan, seeds)
    p = math.nan
    mean = statistics.mean(d)
    t_ci, sd = (math.nan, math.nan), math.nan
    if len(d) > 1:
        sd = statistics.stdev(d)
        half = float(stats.t.ppf((1 + confidence) / 2, len(d) - 1)) * sd / math.sqrt(len(d))
        t_ci = (mean - half, mean + half)
        if statistics.pstdev(d) > 0:
            p = float(stats.ttest_rel(t, b).pvalue)
    return Paired(mean, bootstrap_ci(d, confidence=confidence, seed=seed), sum(x > 0 for x in d),
                  len(d), p, seeds, t_ci, sd)


def seeds_for_half_width(sd: float, half_width: float, *, confidence: float = 0.95, limit: int = 100_000) -> int | None:
    """The smallest number of seeds m ≥ 2 whose paired t interval, t_{(1+c)/2}(m − 1) · sd / √m, is no
    wider than ``half_width`` on each side, for paired differences of standard deviation ``sd``; None
    when more than ``limit`` seeds would be needed (or ``sd`` is NaN). The left side falls as m grows
    (t falls and √m rises), so the answer is the first m where it crosses ``half_width``."""
    from scipy import stats

    if not half_width > 0:
        raise ValueError(f"half_width must be > 0, got {half_width}")
    if math.isnan(sd):
        return None
    m = np.arange(2, limit + 1)
    ok = stats.t.ppf((1 + confidence) / 2, m - 1) * sd / np.sqrt(m) <= half_width
    return int(m[ok.argmax()]) if ok.any() else None


@dataclass(frozen=True)
class Regret:
    """A rule's regret against the oracle over ``n`` runs, in accuracy (×100 for points)."""

    mean: float
    max: float
    within_1_point: float  # share of runs with regret ≤ 0.01
    n: int


def selection_regret(runs: Iterable[Mapping[str, float | None]], rules: Iterable[str], *,
                     oracle: str = "oracle_test_selected") -> dict[str, Regret]:
    """Each rule's :class:`Regret` over ``runs`` (each a ``{rule: target test accuracy}`` map, as
    :meth:`~supercm.logs.RunResult.selection_rules` gives); a run that lacks the rule or the oracle is
    left out of that rule's summary."""
    runs = list(runs)
    out = {}
    for rule in rules:
        gaps = [r[oracle] - r[rule] for r in runs if r.get(rule) is not None and r.get(oracle) is not None]
        if gaps:
            out[rule] = Regret(statistics.mean(gaps), max(gaps), sum(g <= 0.01 + 1e-12 for g in gaps) / len(gaps), len(gaps))
        else:
            out[rule] = Regret(math.nan, math.nan, math.nan, 0)
    return out


def fmt_mean_std(s: Summary, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` (scaled, e.g. to percent); a single value alone; ``–`` for none."""
    if s.n == 0:
        return "–"
    if s.n == 1:
        return f"{scale * s.mean:.{digits}f}"
    return f"{scale * s.mean:.{digits}f} ± {scale * s.std:.{digits}f}"


def fmt_p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.3g}"


# ----------------------------------------------------------------------------- reading runs
def _flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _freeze(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


def run_record(run_dir: str | Path) -> Record:
    """A run directory's group (its config.yaml without :data:`IGNORED_KEYS`), seed and summary.json."""
    run_dir = Path(run_dir)
    cfg_path, summary_path = run_dir / "config.yaml", run_dir / "summary.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    if not summary_path.is_file():
        raise FileNotFoundError(f"{run_dir} has not finished (no summary.json)")
    flat = _flatten(read_yaml_file(cfg_path) or {})  # a damaged file is one line naming it
    seed = flat.get("train.seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{cfg_path}: train.seed must be a whole number, got {seed!r}")
    group = tuple(sorted((k, _freeze(v)) for k, v in flat.items() if k not in IGNORED_KEYS))
    try:
        summary = json.loads(summary_path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{summary_path} is not valid JSON (cut short?); train the run to its end again with "
                         f"'supercm train --resume {run_dir}'") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{summary_path} is not a run's summary (a JSON object)")
    return Record(group, seed, summary, str(run_dir))


def results_records(path: str | Path, group_by: Iterable[str] | None = None) -> list[Record]:
    """Rows of a JSON-lines results file (e.g. benchmarks/results/ssl_accuracy.jsonl). A row's group is
    its ``group_by`` fields (default: every field but ``seed`` and the :data:`RESULT_FIELDS`)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"results file {str(p)!r} is a folder; give a JSON-lines file (one run per line)")
    if not p.is_file():
        raise FileNotFoundError(f"results file {str(p)!r} does not exist")
    records = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ValueError(f"{p}:{i} is not a JSON line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{p}:{i} is not a JSON object (one run per line, with a 'seed')")
        if "seed" not in row:
            raise ValueError(f"{p}:{i} has no 'seed' field")
        seed = row["seed"]
        if isinstance(seed, str) and seed.strip().lstrip("-").isdigit():
            seed = int(seed)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{p}:{i}: 'seed' must be a whole number, got {row['seed']!r}")
        if group_by:
            unknown = [k for k in group_by if k not in row]
            if unknown:
                raise ValueError(f"{p}:{i} has no field {unknown[0]!r} to group by (--group-by); its fields: "
                                 f"{', '.join(row)}")
        keys = list(group_by) if group_by else [k for k in row if k != "seed" and not is_result_field(k)]
        group = tuple((k, _freeze(row.get(k))) for k in keys)
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        records.append(Record(group, seed, metrics, f"{p}:{i}"))
    return records


def group_names(groups: Iterable[tuple]) -> dict[tuple, str]:
    """A short name per group: the settings in which it differs from the others (``k=v, ...``)."""
    groups = list(dict.fromkeys(groups))
    if len(groups) == 1:
        d = dict(groups[0])
        name = ", ".join(f"{k}={d[k]}" for k in ("data.name", "method.name", "cm.beta", "dataset", "method", "cm") if k in d)
        return {groups[0]: name or "all"}
    dicts = [dict(g) for g in groups]
    keys = sorted({k for d in dicts for k in d})
    varying = [k for k in keys if len({_freeze(d.get(k)) for d in dicts}) > 1]
    return {g: ", ".join(f"{k}={d.get(k)}" for k in varying) for g, d in zip(groups, dicts)}


@dataclass
class Report:
    """Grouped records with their summaries and (optionally) one paired comparison."""

    names: dict  # group → name
    by_group: dict  # group → {seed: Record}
    metrics: tuple  # (field, heading) pairs
    summaries: dict  # (group, field) → Summary
    comparison: dict | None = None  # field → Paired, for (baseline, treatment)
    baseline: str | None = None
    treatment: str | None = None

    def markdown(self) -> str:
        head = ["group", "seeds", *[f"{h}" for _, h in self.metrics], *[f"{h} 95% CI" for _, h in self.metrics[:1]]]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        single = [name for g, name in self.names.items() if len(self.by_group[g]) == 1]
        for g, name in self.names.items():
            s = [self.summaries[(g, f)] for f, _ in self.metrics]
            lo, hi = s[0].ci
            ci = "–" if s[0].n == 0 else "– (one run)" if s[0].n == 1 else f"[{100 * lo:.2f}, {100 * hi:.2f}]"
            lines.append("| " + " | ".join([name, str(len(self.by_group[g])), *map(fmt_mean_std, s), ci]) + " |")
        if single:
            lines += ["", f"{len(single)} of {len(self.names)} group(s) hold a single run: its value is shown alone, "
                          f"with no std or confidence interval (one seed says nothing about the spread)."]
        if self.comparison:
            lines += ["", f"Paired by seed: **{self.treatment}** − **{self.baseline}**", "",
                      "| metric | seeds | gain | 95% CI | wins | paired t-test p |", "|---|---|---|---|---|---|"]
            for f, h in self.metrics:
                c = self.comparison[f]
                lines.append(f"| {h} | {c.n} | {100 * c.gain:+.2f} | [{100 * c.ci[0]:+.2f}, {100 * c.ci[1]:+.2f}] "
                             f"| {c.wins}/{c.n} | {fmt_p(c.p_value)} |")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["group", "metric", "n", "mean", "std", "ci_low", "ci_high", "paired_gain", "paired_ci_low",
                    "paired_ci_high", "wins", "p_value"])
        for g, name in self.names.items():
            for f, _ in self.metrics:
                s = self.summaries[(g, f)]
                row = [name, f, s.n, s.mean, s.std, *s.ci]
                if self.comparison and name == self.treatment:
                    c = self.comparison[f]
                    row += [c.gain, *c.ci, c.wins, c.p_value]
                else:
                    row += ["", "", "", "", ""]
                w.writerow(row)
        return buf.getvalue()


def compare(
    records: list[Record],
    *,
    metrics: tuple = DEFAULT_METRICS,
    baseline: str | None = None,
    treatment: str | None = None,
    confidence: float = 0.95,
    seed: int = 0,
) -> Report:
    """Group ``records``, summarise each metric per group, and pair ``treatment`` with ``baseline``
    (group names as :func:`group_names` gives them) when both are named."""
    if not records:
        raise ValueError("nothing to compare: no runs given")
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ValueError(f"--confidence must be a level in (0, 1), e.g. 0.95; got {confidence:g}")
    by_group: dict[tuple, dict] = {}
    for r in records:
        seeds = by_group.setdefault(r.group, {})
        if r.seed in seeds:
            raise ValueError(f"two runs of one configuration with seed {r.seed}: {seeds[r.seed].source} and {r.source}")
        seeds[r.seed] = r
    names = group_names(by_group)
    metrics = tuple(m for m in metrics if any(m[0] in r.metrics for r in records)) or metrics
    summaries = {
        (g, f): summarize([r.metrics[f] for r in runs.values() if r.metrics.get(f) is not None], confidence=confidence, seed=seed)
        for g, runs in by_group.items() for f, _ in metrics
    }
    report = Report(names, by_group, metrics, summaries)
    if (baseline is None) != (treatment is None):
        raise ValueError("name both --baseline and --treatment, or neither")
    if baseline is not None:
        lookup = {n: g for g, n in names.items()}
        for n in (baseline, treatment):
            if n not in lookup:
                raise ValueError(f"no group named {n!r}; the groups are: {'; '.join(repr(x) for x in lookup)}")
        b, t = by_group[lookup[baseline]], by_group[lookup[treatment]]
        report.comparison = {
            f: paired({s: r.metrics[f] for s, r in b.items() if r.metrics.get(f) is not None},
                      {s: r.metrics[f] for s, r in t.items() if r.metrics.get(f) is not None},
                      confidence=confidence, seed=seed)
            for f, _ in metrics
        }
        report.baseline, report.treatment = baseline, treatment
    return report
