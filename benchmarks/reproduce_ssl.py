"""Does the trainer reproduce another commit's SSL and UDA runs bit for bit? (CPU, same config, same seed.)

    # at the reference commit (e.g. in a worktree of it):
    PYTHONPATH=/path/to/old/src python benchmarks/reproduce_ssl.py --out old.json --data-root R
    # at the new commit:
    python benchmarks/reproduce_ssl.py --out new.json --compare old.json --data-root R

Every CPU config (``configs/cpu``: 5 base methods × without / with SuperCM) and the digits
config with each centroid rule and centroid-feature mode is trained for a short schedule
in-process. With ``--uda`` the domain-adaptation set is added: source only, DANN and DANN + MCC +
SuperCM on two offline pairs (mnist10k → mnistm_style, synth_digits → mnist10k; these need
``--data-root``), and DANN + SuperCM on an Office-31 layout written by the script (deterministic
images, ResNet-18 with random weights at 32 px). Each run's full training log (every logged scalar at every iteration), its
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


UDA_PAIRS = ("mnist10k-to-mnistm_style", "synth_digits-to-mnist10k")
UDA_METHODS = ("source_only", "dann", "dann+mcc-cm")


def uda_runs(iterations: int, office_root: Path) -> list[tuple[str, str | None, list[str]]]:
    short = [f"train.iterations={iterations}", "train.eval_every=20", "train.log_every=1", "train.progress=false",
             "train.tensorboard=false", "train.checkpoint_every=0"]
    out = [(f"uda-{pair}-{method}", str(ROOT / "configs" / "uda" / f"{pair}-{method}.yaml"), short)
           for pair in UDA_PAIRS for method in UDA_METHODS]
    office = json.dumps({"size": 40, "crop": 32, "cache_dir": str(office_root / "cache"), "progress": False})
    out.append(("uda-office31-A-to-W-dann-cm", str(ROOT / "configs" / "uda" / "office31-A-to-W-dann-cm.yaml"),
                [*short[:1], "train.eval_every=5", *short[2:], f"data.root={office_root}", "data.num_validation=31",
                 f"data.options={office}", "model.backbone=resnet18",
                 'model.options={"weights": "none", "bottleneck": 32}', "train.batch_labeled=8",
                 "train.batch_unlabeled=8", "train.device=cpu"]))
    return out


def write_office31(root: Path, per_class: int = 2) -> None:
    """A deterministic Office-31 tree (amazon and webcam, every class): colour says the class, plus noise."""
    import numpy as np
    from PIL import Image

    from supercm.data.images import OFFICE31_CLASSES

    for d, domain in enumerate(("amazon", "webcam")):
        for k, c in enumerate(OFFICE31_CLASSES):
            for i in range(per_class):
                rng = np.random.default_rng([d, k, i])
                colour = np.array([(k * 70) % 256, (k * 130 + 40) % 256, (k * 200 + 90) % 256])
                pixels = np.clip(colour + rng.normal(0, 20 + 10 * d, (24, 30, 3)), 0, 255).astype(np.uint8)
                path = root / "office31" / domain / "images" / c / f"frame_{i:04d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path, quality=95)


def run(name: str, path: str, overrides: list[str], data_root: str | None) -> dict:
    import torch

    from supercm.config import load_config
    from supercm.train import Trainer

    torch.set_num_threads(1)
    offline = name.startswith("mnist10k") or (name.startswith("uda-") and "office31" not in name)
    extra = [f"data.root={data_root}"] if data_root and offline else []
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
    ap.add_argument("--uda", action="store_true", help="add the domain-adaptation runs (offline pairs and Office-31)")
    ap.add_argument("--only", choices=("ssl", "uda"), help="run one set only (--only uda implies --uda)")
    a = ap.parse_args()
    records = []
    with tempfile.TemporaryDirectory() as office:
        todo = [] if a.only == "uda" else runs(a.iterations)
        if a.uda or a.only == "uda":
            write_office31(Path(office))
            todo += uda_runs(a.iterations, Path(office))
        for name, path, overrides in todo:
            records.append(run(name, path, overrides, a.data_root))
            print(f"{name}: test at best val {records[-1]['result']['test_accuracy_at_best_val']}", file=sys.stderr)
    Path(a.out).write_text(json.dumps(records))
    if a.compare:
        old = {r["name"]: r for r in json.loads(Path(a.compare).read_text())}
        print("| run | identical | max relative difference |\n|---|---|---|")
        for r in records:
            o = old.get(r["name"])
            # Fields added since the reference commit (e.g. the UDA oracle, the label-free selection scores in
            # eval.jsonl and their choices in the result) are not compared; every field the reference has is.
            diff = float("inf") if o is None else max_rel_diff(
                {"metrics": o["metrics"], "evals": o["evals"], "result": o["result"]},
                {"metrics": r["metrics"], "evals": [{k: e.get(k) for k in oe} for e, oe in zip(r["evals"], o["evals"])]
                 + r["evals"][len(o["evals"]):], "result": {k: r["result"].get(k) for k in o["result"]}})
            print(f"| {r['name']} | {'yes' if diff == 0 else 'no'} | {diff:.3g} |")


if __name__ == "__main__":
    main()
