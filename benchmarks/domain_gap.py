"""Domain gap of the offline UDA pairs (issue 9 §4): source-only vs trained on the target.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/domain_gap.py --data-root /tmp/uda-data

For every pair in ``supercm.data.DOMAIN_PAIRS`` two CE runs of the existing SSL Trainer
(``cm.beta=0``, ``method=supervised``: only labeled batches count) are scored on the
**target's test split**:

* *source-only*: trained on the source's training split;
* *target-trained*: the same protocol on the target's training split (an upper reference; it
  reads target labels, which UDA never may).

Protocol of both: small CNN (``model.backbone=cnn``, width 16, one conv per block), Adam 1e-3,
``--iterations`` (500) iterations of batch 64, ``--labels`` (1,000) class-balanced labeled
images, 100 held out for validation, the dataset's augmentation (crop_pad 2). Reported: the
last iterate's target test accuracy (no selection on the target). The source model's accuracy
on the *source* test split is printed too, to show it learned its own domain. There is no UDA
trainer yet; this only measures how large the shift is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from supercm.config import from_dict
from supercm.data import DOMAIN_PAIRS, ArrayDataset, load_domain_pair
from supercm.train import Trainer, evaluate


def config(labels: int, iterations: int, seed: int):
    return from_dict(
        {
            "data": {"num_labeled": labels, "num_validation": 100},
            "model": {"backbone": "cnn", "options": {"width": 16, "convs_per_block": 1}},
            "cm": {"beta": 0.0},
            "method": {"name": "supervised"},
            "optim": {"lr": 1e-3},
            "train": {
                "iterations": iterations,
                "batch_labeled": 64,
                "batch_unlabeled": 64,
                "eval_every": iterations,
                "ema_decay": 0.0,
                "seed": seed,
                "device": "cpu",
                "progress": False,
                "tensorboard": False,
            },
        }
    )


def run(train: ArrayDataset, test: ArrayDataset, extra_test: ArrayDataset | None, args, seed: int) -> dict:
    data = ArrayDataset(
        f"{train.name}->{test.name}", train.train_x, train.train_y, test.test_x, test.test_y, 10, dict(train.augment)
    )
    trainer = Trainer(config(args.labels, args.iterations, seed), dataset=data)
    result = trainer.fit()
    out = {"target_test": result.final_test_accuracy, "seconds": result.seconds}
    if extra_test is not None:
        out["source_test"] = evaluate(trainer.model, extra_test.test_x, extra_test.test_y)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--pairs", nargs="+", default=list(DOMAIN_PAIRS))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--labels", type=int, default=1000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "domain_gap.json"))
    args = p.parse_args()
    torch.set_num_threads(1)

    rows, target_cache = [], {}
    for name in args.pairs:
        pair = load_domain_pair(name, root=args.data_root)
        src, tgt = [], []
        for seed in range(args.seeds):
            t0 = time.time()
            src.append(run(pair.source, pair.target, pair.source, args, seed))
            key = (pair.target.name, seed)
            if key not in target_cache:
                target_cache[key] = run(pair.target, pair.target, None, args, seed)
            tgt.append(target_cache[key])
            print(
                f"{name} seed {seed}: source-only {src[-1]}, target-trained {tgt[-1]} ({time.time() - t0:.0f} s)",
                flush=True,
            )

        def ms(values):
            return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

        rows.append(
            {
                "pair": name,
                "source_train": len(pair.source.train_y),
                "target_train": len(pair.target.train_y),
                "target_test": len(pair.target.test_y),
                "source_on_source_test": ms([r["source_test"] for r in src]),
                "source_only": ms([r["target_test"] for r in src]),
                "target_trained": ms([r["target_test"] for r in tgt]),
                "runs": {"source_only": src, "target_trained": tgt},
            }
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print("\n| pair | source → source test | source-only → target test | target-trained → target test | gap |")
    print("|---|---|---|---|---|")
    for r in rows:
        f = lambda m: f"{100 * m[0]:.1f} ± {100 * m[1]:.1f}"
        gap = 100 * (r["target_trained"][0] - r["source_only"][0])
        print(
            f"| {r['pair']} | {f(r['source_on_source_test'])} | {f(r['source_only'])} | {f(r['target_trained'])} | {gap:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
