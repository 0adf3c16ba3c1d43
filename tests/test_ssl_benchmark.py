"""The SSL accuracy benchmark's table: paired gains over the same seeds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("ssl_accuracy", ROOT / "benchmarks" / "ssl_accuracy.py")
ssl_accuracy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ssl_accuracy)


def row(method, cm, seed, test, val=0.5):
    return {"dataset": "d", "method": method, "cm": cm, "seed": seed, "overrides": [],
            "test_accuracy_at_best_val": test, "best_val_accuracy": val, "wall_seconds": 10.0}


def test_table_pairs_seeds_and_reports_gain():
    rows = [row("vat", False, s, t) for s, t in enumerate([0.80, 0.82, 0.78])]
    rows += [row("vat", True, s, t) for s, t in enumerate([0.90, 0.91, 0.90])]
    md = ssl_accuracy.table(rows)
    line = next(l for l in md.splitlines() if "| VAT |" in l)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "80.00 ± 2.00" and cells[3] == "90.33 ± 0.58"
    assert cells[4] == "+10.33" and cells[5] == "3/3"
    assert float(cells[6]) < 0.05


def test_every_benchmark_config_exists():
    for d in ("mnist10k", "fashion_mnist"):
        for m in ssl_accuracy.METHODS:
            for cm in (False, True):
                assert ssl_accuracy.config_path(d, m, cm).exists()


def test_the_pseudo_centroid_arm_is_paired_with_the_base_and_curves_are_averaged():
    rows = [row("fixmatch", False, s, t) for s, t in enumerate([0.95, 0.96, 0.94])]
    rows += [{**row("fixmatch", True, s, t), "arm": "cm_pseudo"} for s, t in enumerate([0.97, 0.98, 0.96])]
    for r, tests in zip(rows, [[0.9, 0.95]] * 3 + [[0.96, 0.98]] * 3):
        r["curve"] = [{"iteration": i, "seconds": 5.0 * i, "val": 0.5, "test_at_best_val": t}
                      for i, t in zip((100, 200), tests)]
    md = ssl_accuracy.table(rows)
    line = next(l for l in md.splitlines() if "labeled + pseudo" in l)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "95.00 ± 1.00" and cells[3] == "97.00 ± 1.00" and cells[4] == "+2.00" and cells[5] == "3/3"
    base_only = next(l for l in md.splitlines() if "| FixMatch |" in l)  # no "+ SuperCM" arm was run
    assert base_only.split("|")[4].strip() == "–"
    curves = ssl_accuracy.curve_table(rows)
    assert "| d | FixMatch | 90.00 ± 0.00 | 95.00 ± 0.00 | not reached |" in curves
    assert "| d | FixMatch + SuperCM (pseudo centroids) | 96.00 ± 0.00 | 98.00 ± 0.00 | iteration 200 (1000 s) |" in curves


def test_a_run_records_its_curve_through_the_trainer():
    """run_one trains a config through the real Trainer and records, at every evaluation, the test
    accuracy of the validation-selected model so far (the curve the time-to-accuracy table reads).
    It broke silently once when the trainer's selection state moved to ``trainer.selection``."""
    r = ssl_accuracy.run_one("mnist10k", "fixmatch", "cm_pseudo", 0,
                             ["data.name=digits", "data.options.image=true", "data.num_validation=100", "train.iterations=4",
                              "train.eval_every=2", "train.ema_decay=0", "train.batch_unlabeled=16"])
    assert [c["iteration"] for c in r["curve"]] == [2, 4]
    assert r["curve"][-1]["test_at_best_val"] == r["test_accuracy_at_best_val"]
    assert all(0.0 <= c["val"] <= 1.0 and c["seconds"] >= 0 for c in r["curve"])
    assert r["centroid_source"] == "labeled+pseudo" and r["arm"] == "cm_pseudo" and r["beta"] > 0
