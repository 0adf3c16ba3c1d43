"""The analyses (issue 11): proxy A-distance, pictures, comparison reports, tuning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from supercm.analysis import flawed_proxy_a_distance, pad_from_error, proxy_a_distance
from supercm.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["train.iterations=30", "train.eval_every=10", "train.progress=false", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A CE run and a SuperCM run on the built-in digits, 30 iterations each (a few seconds)."""
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for name, beta in (("ce", 0.0), ("cm", 1.0)):
        d = base / name
        assert main(["train", str(ROOT / "configs" / "digits.yaml"), *TINY, f"cm.beta={beta}", "--run-dir", str(d)]) == 0
        out[name] = d
    return out


# ----------------------------------------------------------------------------- proxy A-distance
def test_pad_is_zero_for_identical_distributions_of_very_unequal_sizes():
    """Same law, 2,817 vs 795 samples (Office-31's Amazon vs Webcam sizes): no classifier beats
    chance on held-out balanced data, so ε ≈ ½ and PAD = 2(1 − 2ε) ≈ 0. The circulating estimator
    scores the majority answer: ε ≈ 795/3612 = 0.22, PAD ≈ 2(1 − 0.44) ≈ 1.1."""
    rng = np.random.default_rng(1)
    src, tgt = rng.normal(size=(2817, 32)), rng.normal(size=(795, 32))
    r = proxy_a_distance(src, tgt)
    # Noise floor: a test part of 2·239 samples has sd(ε) ≈ 0.023, sd(PAD) ≈ 0.09 per repeat.
    assert 0 <= r.mean < 0.3, r
    assert r.n_per_domain == 795 and len(r.values) == 5
    assert flawed_proxy_a_distance(src, tgt) > 0.8


def test_pad_is_two_for_disjoint_distributions():
    """Gaussians 6 standard deviations apart along every axis: a linear probe errs with
    probability ≈ Φ(−6·√d/2) ≈ 0, so PAD = 2."""
    rng = np.random.default_rng(2)
    r = proxy_a_distance(rng.normal(size=(400, 8)), rng.normal(size=(150, 8)) + 6.0)
    assert r.mean == pytest.approx(2.0, abs=0.02) and r.std < 0.02


def test_pad_is_deterministic_for_a_seed_and_lies_in_0_2():
    rng = np.random.default_rng(3)
    src, tgt = rng.normal(size=(300, 6)), rng.normal(size=(200, 6)) + 0.3  # partly overlapping
    a, b = proxy_a_distance(src, tgt, seed=7), proxy_a_distance(torch.tensor(src), torch.tensor(tgt), seed=7)
    assert a.values == b.values
    assert proxy_a_distance(src, tgt, seed=8).values != a.values
    assert all(0 <= v <= 2 for v in a.values) and 0 < a.mean < 2


def test_pad_clamps_an_error_above_one_half():
    """ε and 1 − ε carry the same information: a probe that is always wrong separates perfectly."""
    assert pad_from_error(1.0) == 2.0 and pad_from_error(0.0) == 2.0
    assert pad_from_error(0.7) == pytest.approx(pad_from_error(0.3)) == pytest.approx(0.8)


def test_pad_rejects_features_of_different_widths():
    with pytest.raises(ValueError, match="differ in width"):
        proxy_a_distance(np.zeros((50, 3)), np.zeros((50, 4)))


def test_pad_cli_writes_a_number_from_the_selected_weights(runs, tmp_path, capsys):
    out = tmp_path / "pad.json"
    assert main(["pad", str(runs["cm"]), "--reference", str(runs["ce"]), "--repeats", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for role in ("run", "reference"):
        assert res[role]["weights"] == "best_model.pt"
        assert 0 <= res[role]["pad_mean"] <= 2 and len(res[role]["pad_values"]) == 2
    assert "PAD difference" in capsys.readouterr().out


def test_pad_cli_errors_in_one_line_on_a_target_of_another_shape(runs, capsys, monkeypatch):
    """digits runs take vectors of 64; a target dataset of 1×8×8 images is refused with one line."""
    from supercm.data import DATASETS, ArrayDataset

    def images(root=None):
        x, y = torch.zeros(20, 1, 8, 8), torch.zeros(20, dtype=torch.long)
        return ArrayDataset("images", x, y, x, y, num_classes=1)

    monkeypatch.setitem(DATASETS, "images", images)
    assert main(["pad", str(runs["ce"]), "--target", "images"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "have shape (1, 8, 8) but the run was trained on (64,)" in err
    from supercm.analysis.runs import to_input_shape

    with pytest.raises(ValueError, match="cannot read samples of width 10 as square images"):
        to_input_shape(torch.zeros(2, 10), (3, 28, 28))
    assert to_input_shape(torch.zeros(2, 64), (3, 28, 28)).shape == (2, 3, 28, 28)


def test_best_model_holds_the_best_validation_weights(runs):
    """best_model.pt is written when validation improves: its iteration is summary's best_iteration."""
    summary = json.loads((runs["cm"] / "summary.json").read_text())
    state = torch.load(runs["cm"] / "best_model.pt", weights_only=True)
    assert state["iteration"] == summary["best_iteration"] and state["val"] == summary["best_val_accuracy"]
