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


def test_paper_configs_double_beta_but_not_the_base_weight():
    """The authors halve CE *and* every base loss (both averaged over the whole joined batch), while
    L_CM covers the whole batch: in this project's form only β doubles (configs/generate.py)."""
    cfg = load_config(ROOT / "configs" / "paper" / "cifar10-600-vat-cm.yaml")
    assert cfg.cm.beta == pytest.approx(2 * 0.631, rel=1e-3) and cfg.method.delta == pytest.approx(5.623, rel=1e-3)
    assert cfg.optim.lr == pytest.approx(3.589e-4, rel=1e-3) and cfg.model.backbone == "wrn28_2"
    assert cfg.method.options["variant"] == "authors"
    base = load_config(ROOT / "configs" / "paper" / "cifar10-600-vat.yaml")
    # The baseline arm takes the authors' own values, not Oliver et al.'s defaults.
    assert base.cm.beta == 0 and base.method.name == "vat" and base.method.delta == pytest.approx(0.3913, rel=1e-3)
    assert base.optim.lr == pytest.approx(3.589e-4, rel=1e-3) and base.method.options["variant"] == "authors"
    pl = load_config(ROOT / "configs" / "paper" / "mnist-100-pseudo_label-cm.yaml")
    assert pl.cm.beta == pytest.approx(2 * 3.020, rel=1e-3) and pl.method.delta == pytest.approx(0.1862, rel=1e-3)
    assert load_config(ROOT / "configs" / "paper" / "mnist-100-pseudo_label.yaml").method.delta == pl.method.delta
    vat4k = load_config(ROOT / "configs" / "paper" / "cifar10-4000-vat.yaml")  # its own values in the authors' code
    assert vat4k.method.delta == pytest.approx(1.449, rel=1e-3) and vat4k.optim.lr == pytest.approx(3.001e-3, rel=1e-3)
    ce = load_config(ROOT / "configs" / "paper" / "mnist-100-supervised.yaml")
    assert (ce.train.batch_labeled, ce.train.batch_unlabeled) == (100, 0) and ce.optim.lr == pytest.approx(1.38e-3, rel=1e-3)
    assert ce.model.options["bn_momentum"] == 0.1
    assert load_config(ROOT / "configs" / "paper" / "cifar100-2500-supervised-cm.yaml").model.backbone == "wrn28_8"


def test_shipped_configs_are_what_the_generator_writes(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate", ROOT / "configs" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    monkeypatch.setattr(gen, "HERE", tmp_path)
    gen.main()
    for p in sorted(tmp_path.rglob("*.yaml")):
        shipped = ROOT / "configs" / p.relative_to(tmp_path)
        assert shipped.read_text() == p.read_text(), f"{shipped} is stale: run python configs/generate.py"


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


def test_overrides_may_follow_an_option(tmp_path, capsys):
    """`supercm train CONFIG --run-dir X key=value` is a run, not "unrecognized arguments": argparse fills the
    overrides list once, before the option, and hands the rest back; they join it in the order given."""
    from supercm.cli import _parse, build_parser

    cfg = str(ROOT / "configs" / "digits.yaml")
    args = _parse(build_parser(), ["train", cfg, "cm.beta=1", "--run-dir", "r", "cm.beta=2", "train.seed=3"])
    assert (args.config, args.run_dir, args.overrides) == (cfg, "r", ["cm.beta=1", "cm.beta=2", "train.seed=3"])
    args = _parse(build_parser(), ["tune", cfg, "--trials", "2", "train.iterations=5"])
    assert args.overrides == ["train.iterations=5"] and args.trials == 2
    # through main: the override after --run-dir reaches the config (and is checked there)
    assert main(["train", cfg, "--run-dir", str(tmp_path / "r"), "cm.betta=1"]) == 2
    assert "unknown config key 'cm.betta'" in capsys.readouterr().err
    # what is not key=value is still refused on one line, and nothing was made
    for stray in (["stray"], ["--bogus"], ["cm.beta=1", "-x"]):
        assert main(["train", cfg, "--run-dir", str(tmp_path / "s"), *stray]) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [f"supercm: error: unrecognized arguments: {' '.join(stray)} (see 'supercm --help')"]
    assert not (tmp_path / "s").exists()


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


def test_quickstart_example_shows_what_supercm_does():
    """Cross-entropy alone classifies the quickstart's blobs too; what SuperCM adds is compact
    class clusters (two blobs per class pulled to one centroid): spread at most half of CE's."""
    import re
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True, text=True,
                         check=True).stdout
    acc = dict(re.findall(r"(CE(?: \+ SuperCM)?) (\d\.\d+)", out.splitlines()[0]))
    spread = dict(re.findall(r"(CE(?: \+ SuperCM)?) (\d\.\d+)", out.splitlines()[1]))
    assert float(acc["CE + SuperCM"]) > 0.9
    assert float(spread["CE + SuperCM"]) < 0.5 * float(spread["CE"]), out


def test_docstring_examples_run():
    import doctest

    import supercm.cm

    failures, tried = doctest.testmod(supercm.cm)
    assert tried >= 5 and failures == 0
