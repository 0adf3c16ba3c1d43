"""How much of the unlabeled batch FixMatch / FreeMatch train on, against iterations (issue 20).

    python benchmarks/mask_rate.py fixmatch 1000 100 [key=value ...] > benchmarks/results/mask_rate_fixmatch.jsonl

Trains ``configs/cpu/mnist10k-<method>.yaml`` (seed 0, ``data.root=/tmp/supercm-data``, one
thread, weight-EMA off) for ``iterations`` steps and prints one JSON line every ``every`` steps:
the mean mask rate (fraction of unlabeled rows whose weak-view confidence passes the threshold)
over those steps, the threshold (FixMatch's τ; FreeMatch's global τ_t), the labeled CE and the
validation accuracy at that step.
"""

import json
import sys
import time

import torch

from supercm.config import load_config
from supercm.train import Trainer

torch.set_num_threads(1)
method, its, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
extra = sys.argv[4:]
cfg = load_config(f"configs/cpu/mnist10k-{method}.yaml", ["data.root=/tmp/supercm-data", "train.progress=false",
                  "train.tensorboard=false", f"train.iterations={its}", "train.ema_decay=0", *extra])
t = Trainer(cfg, None)
t0 = time.perf_counter()
rates = []
for i in range(its):
    logs = t.train_step(log_terms=True)
    rates.append(float(logs["mask_rate"]))
    if (i + 1) % every == 0:
        r = t.evaluate_now()
        print(json.dumps({"iteration": i + 1, "seconds": round(time.perf_counter() - t0),
                          "mask_rate_mean_last": round(sum(rates[-every:]) / every, 3),
                          "tau": round(float(logs.get("tau", cfg.method.options.get("threshold", 0))), 3),
                          "ce": round(float(logs["ce"]), 3), "val": r["val"]}), flush=True)
