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
