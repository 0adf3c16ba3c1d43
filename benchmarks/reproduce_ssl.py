"""Does the trainer reproduce another commit's SSL runs bit for bit? (CPU, same config, same seed.)

    # at the reference commit (e.g. in a worktree of it):
    PYTHONPATH=/path/to/old/src python benchmarks/reproduce_ssl.py --out old.json --data-root R
    # at the new commit:
    python benchmarks/reproduce_ssl.py --out new.json --compare old.json --data-root R

Every CPU config (``configs/cpu``: 5 base methods × without / with SuperCM) and the digits
config with each centroid rule and centroid-feature mode is trained for a short schedule
in-process; the run's full training log (every logged scalar at every iteration), its
evaluations and its result are recorded. ``--compare`` reports, per run, whether the logs
are identical and otherwise the largest relative difference of any logged value.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("supervised", "pseudo_label", "vat", "pi_model", "mean_teacher")


def runs(iterations: int) -> list[tuple[str, str | None, list[str]]]:
    short = [f"train.iterations={iterations}", "train.eval_every=20", "train.log_every=1", "method.rampup=20",
             "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=0"]
    out = []
    for method in METHODS:
        for cm in ("", "-cm"):
            out.append((f"mnist10k-{method}{cm}", str(ROOT / "configs" / "cpu" / f"mnist10k-{method}{cm}.yaml"), short))
    digits = str(ROOT / "configs" / "digits.yaml")
    for rule in ("paper", "mean", "ema", "learned"):
        for feats in ("reuse", "eval_pass"):
            out.append((f"digits-{rule}-{feats}", digits,
                        [*short, "cm.beta=0.5", f"cm.centroids={rule}", f"cm.features={feats}",
                         "method.name=pi_model", "method.delta=1.0"]))
    return out


def run(name: str, path: str, overrides: list[str], data_root: str | None) -> dict:
    import torch

    from supercm.config import load_config
    from supercm.train import Trainer

    torch.set_num_threads(1)
    extra = [f"data.root={data_root}"] if data_root and name.startswith("mnist10k") else []
    cfg = load_config(path, [*overrides, *extra])
    with tempfile.TemporaryDirectory() as d:
        result = Trainer(cfg, Path(d) / "run").fit().to_dict()
        metrics = [json.loads(line) for line in (Path(d) / "run" / "metrics.jsonl").read_text().splitlines()]
        evals = [json.loads(line) for line in (Path(d) / "run" / "eval.jsonl").read_text().splitlines()]
    result.pop("seconds")
    return {"name": name, "metrics": metrics, "evals": evals, "result": result}


def max_rel_diff(a, b) -> float:
    """Largest relative difference between two nested structures of numbers (inf if shapes differ)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return float("inf")
        return max((max_rel_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return float("inf")
        return max((max_rel_diff(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if a == b:
            return 0.0
        return abs(a - b) / max(abs(a), abs(b), 1e-12)
    return 0.0 if a == b else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--compare", help="a JSON file written by this script at another commit")
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--data-root")
    a = ap.parse_args()
    records = []
    for name, path, overrides in runs(a.iterations):
        records.append(run(name, path, overrides, a.data_root))
        print(f"{name}: test at best val {records[-1]['result']['test_accuracy_at_best_val']:.4f}", file=sys.stderr)
    Path(a.out).write_text(json.dumps(records))
    if a.compare:
        old = {r["name"]: r for r in json.loads(Path(a.compare).read_text())}
        print("| run | identical | max relative difference |\n|---|---|---|")
        for r in records:
            o = old.get(r["name"])
            # Result fields added since the reference commit (e.g. the UDA oracle) are not compared.
            diff = float("inf") if o is None else max_rel_diff(
                {"metrics": o["metrics"], "evals": o["evals"], "result": o["result"]},
                {"metrics": r["metrics"], "evals": r["evals"], "result": {k: r["result"].get(k) for k in o["result"]}})
            print(f"| {r['name']} | {'yes' if diff == 0 else 'no'} | {diff:.3g} |")


if __name__ == "__main__":
    main()
