"""The command line and the shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supercm.cli import main
from supercm.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_every_shipped_config_is_valid():
    paths = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(paths) >= 140
    for p in paths:
        load_config(p)


def test_paper_configs_double_the_papers_beta_and_delta():
    """The authors' CE is halved; with Adam that equals doubling β and δ (configs/generate.py)."""
    cfg = load_config(ROOT / "configs" / "paper" / "cifar10-600-vat-cm.yaml")
    assert cfg.cm.beta == pytest.approx(2 * 0.631) and cfg.method.delta == pytest.approx(2 * 5.62)
    assert cfg.optim.lr == pytest.approx(3.59e-4) and cfg.model.backbone == "wrn28_2"
    base = load_config(ROOT / "configs" / "paper" / "cifar10-600-vat.yaml")
    assert base.cm.beta == 0 and base.method.name == "vat"
    assert load_config(ROOT / "configs" / "paper" / "cifar100-2500-supervised-cm.yaml").model.backbone == "wrn28_8"


def test_train_writes_a_run_and_refuses_to_overwrite_it(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", str(ROOT / "configs" / "digits.yaml"), "train.iterations=20", "train.eval_every=10",
            "train.progress=false", "train.tensorboard=false", "--run-dir", str(run)]
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 20
    capsys.readouterr()
    assert main(args) == 2
    assert "already holds a run (checkpoint.pt); continue it with 'supercm train --resume" in capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text()) == summary  # nothing was overwritten
    assert main(["train", "--resume", str(run)]) == 0  # a finished run resumes to the same result
    assert json.loads((run / "summary.json").read_text())["iterations"] == 20


def test_config_errors_exit_cleanly(capsys):
    assert main(["train", str(ROOT / "configs" / "digits.yaml"), "cm.betta=1"]) == 2
    assert "unknown config key 'cm.betta'" in capsys.readouterr().err
    assert main(["train", "missing.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_missing_dataset_names_the_fetch_command(tmp_path, capsys):
    assert main(["train", "data.name=mnist10k", f"data.root={tmp_path}", "--run-dir", str(tmp_path / "r")]) == 2
    assert "supercm fetch-data mnist10k" in capsys.readouterr().err


def test_demo_prints_its_table(capsys):
    assert main(["demo", "--seeds", "2", "--iterations", "30", "--workers", "1", "--betas", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "| CE (baseline) | 0 |" in out and "| CE + SuperCM | 0.3 |" in out and "gain on test" in out


def test_quickstart_example_runs_and_learns():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().rsplit(" ", 1)[-1]) > 0.9


def test_docstring_examples_run():
    import doctest

    import supercm.cm

    failures, tried = doctest.testmod(supercm.cm)
    assert tried >= 5 and failures == 0
