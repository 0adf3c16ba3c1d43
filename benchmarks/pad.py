"""Proxy A-distance of CE vs CE + SuperCM features on a real pair of digit domains.

    python benchmarks/pad.py --data-root /tmp/supercm-data --runs-dir /tmp/supercm-pad-runs --seeds 3

Source: the mnist10k test split (2,000 MNIST digits, 3×28×28 in [−1, 1]). Target:
scikit-learn's optdigits (all 1,797 8×8 digits, values 0..16 scaled to [−1, 1]),
brought to MNIST's layout — bilinear resize to 20×20, a 4-pixel border of
background (−1) as MNIST centres its digits in 20×20 boxes, the channel repeated to
3. A real second digit domain (optdigits → MNIST), no download.

Each seed trains configs/cpu/mnist10k-supervised{,-cm}.yaml (CE, CE + SuperCM) into
``--runs-dir`` (runs already there are reused), reads each run's best-validation
weights, extracts features deterministically (eval mode, every sample, no
augmentation) and measures on the *same* features:

* ``proxy_a_distance`` (balanced, standardised, C tuned on validation, ε held out, 5 repeats);
* ``flawed_proxy_a_distance`` (the circulating estimator: unbalanced, raw, one split);
* the same-domain floor: mnist10k train vs test features with the correct estimator.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, command_line, machine_info, machine_line, markdown_table, set_threads, write_results

ARMS = (("CE", "mnist10k-supervised"), ("CE + SuperCM", "mnist10k-supervised-cm"))


def optdigits_as_mnist() -> torch.Tensor:
    """All 1,797 sklearn digits as (N, 3, 28, 28) in [−1, 1], digit in the central 20×20 like MNIST."""
    from supercm.data import load_dataset

    d = load_dataset("digits", image=True)
    x = torch.cat([d.train_x, d.test_x])  # (N, 1, 8, 8), background −1
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    x = F.pad(x, (4, 4, 4, 4), value=-1.0)
    return x.expand(-1, 3, -1, -1).contiguous()


def train_if_missing(run_dir: Path, config: Path, seed: int, data_root: str | None) -> None:
    from supercm.config import load_config
    from supercm.train import Trainer

    if (run_dir / "summary.json").exists():
        return
    overrides = [f"train.seed={seed}", "train.progress=false", "train.tensorboard=false"]
    if data_root:
        overrides.append(f"data.root={data_root}")
    t0 = time.perf_counter()
    Trainer(load_config(config, overrides), run_dir).fit()
    print(f"trained {run_dir} in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", help="holds mnist10k (supercm fetch-data mnist10k --root DIR)")
    ap.add_argument("--runs-dir", default="/tmp/supercm-pad-runs")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out-dir", help="results directory (default benchmarks/results)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    info = machine_info()

    from supercm.analysis import flawed_proxy_a_distance, proxy_a_distance
    from supercm.analysis.runs import extract_features, load_run

    target_x = optdigits_as_mnist()
    rows, records = [], []
    for seed in range(args.seeds):
        for arm, stem in ARMS:
            run_dir = Path(args.runs_dir) / f"{stem}-seed{seed}"
            train_if_missing(run_dir, ROOT / "configs" / "cpu" / f"{stem}.yaml", seed, args.data_root)
            run = load_run(run_dir, data_root=args.data_root)
            train_idx = torch.cat([run.split.labeled, run.split.unlabeled])
            acc = json.loads((run_dir / "summary.json").read_text())["test_accuracy_at_best_val"]
            rec = {"arm": arm, "seed": seed, "run_dir": str(run_dir), "weights": run.checkpoint, "iteration": run.iteration,
                   "test_accuracy_at_best_val": acc}
            for layer in ("features", "logits"):
                test = extract_features(run.model, run.data.test_x, layer=layer)
                train = extract_features(run.model, run.data.train_x[train_idx], layer=layer)
                digits = extract_features(run.model, target_x, layer=layer)
                pad = proxy_a_distance(test, digits, repeats=args.repeats, seed=seed)
                floor = proxy_a_distance(train, test, repeats=args.repeats, seed=seed)
                rec[layer] = {
                    "pad": pad.mean, "pad_std": pad.std, "pad_values": list(pad.values), "pad_Cs": list(pad.Cs),
                    "flawed_pad": flawed_proxy_a_distance(test, digits, seed=seed),
                    "same_domain_pad": floor.mean, "same_domain_pad_std": floor.std,
                    "same_domain_flawed_pad": flawed_proxy_a_distance(train, test, seed=seed),
                    "n_source": int(test.shape[0]), "n_target": int(digits.shape[0]), "n_train": int(train.shape[0]),
                    "width": int(test.shape[1]),
                }
            records.append(rec)
            f = rec["features"]
            print(f"seed {seed} {arm} (features): PAD {f['pad']:.3f} | flawed {f['flawed_pad']:.3f} | same domain "
                  f"{f['same_domain_pad']:.3f}, flawed {f['same_domain_flawed_pad']:.3f}", file=sys.stderr, flush=True)
    def ms(values: list[float]) -> str:
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"

    for layer in ("features", "logits"):
        for arm, _ in ARMS:
            r = [x for x in records if x["arm"] == arm]
            rows.append([layer, arm, len(r), f"{100 * statistics.mean(x['test_accuracy_at_best_val'] for x in r):.2f}",
                         *(ms([x[layer][k] for x in r]) for k in ("pad", "flawed_pad", "same_domain_pad", "same_domain_flawed_pad"))])
    per_seed = [[x["arm"], x["seed"], x["iteration"], *(f"{x[layer]['pad']:.3f} ± {x[layer]['pad_std']:.3f}" for layer in ("features", "logits")),
                 f"{x['features']['flawed_pad']:.3f}", f"{x['features']['same_domain_pad']:.3f}",
                 f"{x['features']['same_domain_flawed_pad']:.3f}"] for x in records]
    n = records[0]["features"]
    md = "\n\n".join([
        (f"# Proxy A-distance: mnist10k test ({n['n_source']}) vs optdigits in MNIST layout ({n['n_target']}); "
         f"same domain: mnist10k train ({n['n_train']}) vs test ({n['n_source']})"),
        machine_line(info) + f"\n\ncommand: `{command_line()}`",
        "Mean ± std over seeds; each PAD (ours) is itself a mean over repeats. Both estimators on the same features.",
        markdown_table(["layer", "arm", "seeds", "test % (best val)", "PAD MNIST→optdigits (ours)", "(flawed)",
                        "PAD same domain (ours)", "(flawed)"], rows),
        "Per seed (PAD: mean ± std over repeats):",
        markdown_table(["arm", "seed", "selected iteration", "PAD features", "PAD logits", "flawed (features)",
                        "same domain (features)", "same domain flawed (features)"], per_seed),
    ])
    write_results("pad", {"machine": info, "command": command_line(), "records": records}, md, args.out_dir)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
