"""What FixMatch's strong augmentation costs per step on the CPU (issue 20: at most 0.3 × a small-CNN step at 28 px).

    python benchmarks/strong_augment_cost.py --data-root /tmp/supercm-data [--reps 20]

On ``configs/cpu/mnist10k-fixmatch.yaml`` (small CNN, 16 labeled + 112 unlabeled images of 3×28×28,
one thread), measured interleaved, per step:

- ``strong view``: FixMatch's strong view of the unlabeled batch (a fresh weak crop, then RandAugment
  with 2 operations + Cutout), as the trainer's step computes it (``FixMatch.strong_view``);
- ``CE step``: a whole training step of the CE baseline on the same joined batch (16 + 112, the
  unlabeled rows only through BatchNorm): the small-CNN step the budget refers to;
- ``FixMatch step``: a whole FixMatch training step (training pass, strong view, strong pass, backward).

Reported: seconds of each, and the ratios strong view / CE step and strong view / FixMatch step
(median and quartiles over the repetitions).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


from supercm.config import load_config  # noqa: E402
from supercm.methods import Batch  # noqa: E402
from supercm.train import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    common.set_threads(args.threads)
    root = [f"data.root={args.data_root}"] if args.data_root else []
    quiet = ["train.progress=false", "train.tensorboard=false"]
    cfg = load_config(ROOT / "configs" / "cpu" / "mnist10k-fixmatch.yaml", [*root, *quiet])
    fixmatch = Trainer(cfg, None)
    ce = Trainer(cfg.replace(**{"method.name": "supervised", "method.options": {}}), None)
    term = fixmatch.method

    # A batch as the step builds it: the unlabeled rows of the training set, the trainer's generator.
    n_l, n_u = cfg.train.batch_labeled, cfg.train.batch_unlabeled
    x_raw = fixmatch.x_train[: n_l + n_u]
    batch = Batch(fixmatch.model, fixmatch._aug(x_raw), x_raw, n_l, fixmatch.y_train[:n_l], fixmatch._aug,
                  generator=fixmatch.aug_generator)
    arms = {
        "strong view": lambda: term.strong_view(batch),
        "CE step": ce.train_step,
        "FixMatch step": fixmatch.train_step,
    }
    times = common.interleaved_times(arms, reps=args.reps, warmup=2)
    data = {
        "command": common.command_line(), "machine": common.machine_info(),
        "batch": {"labeled": n_l, "unlabeled": n_u, "image": list(x_raw.shape[1:])},
        "seconds": {k: common.summarize(v) for k, v in times.items()},
        "strong_over_ce_step": common.ratio_summary(times["strong view"], times["CE step"]),
        "strong_over_fixmatch_step": common.ratio_summary(times["strong view"], times["FixMatch step"]),
    }
    rows = [[k, f"{1000 * s['median']:.1f} [{1000 * s['q1']:.1f}–{1000 * s['q3']:.1f}]"] for k, s in data["seconds"].items()]
    md = "\n".join([
        *common.markdown_heading("FixMatch's strong augmentation on the CPU (issue 20)", data), "",
        f"Batch {n_l} + {n_u} images of {'×'.join(map(str, x_raw.shape[1:]))}, small CNN, {args.threads} thread(s), "
        f"{args.reps} interleaved repetitions (median [quartiles]).", "",
        common.markdown_table(["per step", "ms"], rows), "",
        f"strong view / CE step: **{common.fmt_ratio(data['strong_over_ce_step'])}**; "
        f"strong view / FixMatch step: {common.fmt_ratio(data['strong_over_fixmatch_step'])}",
    ])
    common.write_results("strong_augment_cost", data, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
