"""Target test accuracy against iterations, averaged over seeds, from the run directories of a UDA sweep.

    python benchmarks/uda_accuracy.py ... --run-root RUNS          # keeps each run's eval.jsonl
    python benchmarks/uda_curves.py RUNS --pair mnist10k-to-mnistm_style --arms source_only dann dann-cm

Reads ``RUNS/<pair>-<arm>-seed<k>/eval.jsonl`` (one line per evaluation: iteration, source-validation
accuracy ``val``, target test accuracy ``test``) and prints a Markdown table: per arm, the mean ± std over
seeds of the target test accuracy (and the source-validation accuracy) at every evaluation, so one can
see where the curves flatten (issue 17 §1). Target labels are read here for reporting only, as the
oracle column of the sweep does; no selection rule uses them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def curves(root: Path, pair: str, arm: str) -> dict[int, dict[str, list[float]]]:
    """``{iteration: {"test": [...], "val": [...]}}`` over the seeds found for ``pair``/``arm``."""
    out: dict[int, dict[str, list[float]]] = {}
    for run in sorted(root.glob(f"{pair}-{arm}-seed*")):
        if not run.name.removeprefix(f"{pair}-{arm}-seed").isdigit() or not (run / "eval.jsonl").exists():
            continue
        for line in (run / "eval.jsonl").read_text().splitlines():
            e = json.loads(line)
            row = out.setdefault(int(e["iteration"]), {"test": [], "val": []})
            row["test"].append(100 * e["test"])
            row["val"].append(100 * e["val"])
    return out


def _fmt(v: list[float]) -> str:
    return f"{statistics.fmean(v):.1f} ± {statistics.stdev(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}"


def table(root: Path, pair: str, arms: list[str]) -> str:
    data = {arm: curves(root, pair, arm) for arm in arms}
    iterations = sorted({i for c in data.values() for i in c})
    if not iterations:
        raise SystemExit(f"no run of {pair} with arms {', '.join(arms)} under {root} (expected {pair}-ARM-seedK/eval.jsonl)")
    lines = ["| arm | seeds | " + " | ".join(str(i) for i in iterations) + " |",
             "|---|---|" + "---|" * len(iterations)]
    for arm, c in data.items():
        n = max((len(r["test"]) for r in c.values()), default=0)
        for key, label in (("test", "target test %"), ("val", "source val %")):
            cells = [_fmt(c[i][key]) if i in c else "–" for i in iterations]
            lines.append(f"| {arm}, {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_root", type=Path)
    ap.add_argument("--pair", required=True)
    ap.add_argument("--arms", nargs="+", default=["source_only", "dann", "dann-cm"])
    a = ap.parse_args(argv)
    if not a.run_root.is_dir():
        sys.exit(f"uda_curves: {a.run_root} is not a directory; give the --run-root of a uda_accuracy.py sweep")
    print(table(a.run_root, a.pair, a.arms))


if __name__ == "__main__":
    main()
