"""The label-free selection rules of domain adaptation (issue 17 §2): each score against a direct
computation of its definition, and through the trainer: the rules read no target label, and each
picks the evaluation where its recorded score is largest."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from supercm import label_free
from supercm.config import from_dict
from supercm.data import ArrayDataset, DomainPair
from supercm.evaluation import LABEL_FREE_RULES
from supercm.train import EVALS, Trainer


def _h(p):
    return -sum(x * math.log(x) for x in p if x > 0)


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


LOGITS = torch.tensor([[2.0, 0.1, -1.0], [0.0, 0.0, 0.0], [-3.0, 4.0, 0.5], [1.0, 1.5, 1.2], [0.3, -0.2, 2.5]])


def test_entropy_and_information_maximisation_are_their_definitions():
    p = [_softmax(r) for r in LOGITS.tolist()]
    mean_h = sum(_h(r) for r in p) / len(p)
    marginal = [sum(r[k] for r in p) / len(p) for k in range(3)]
    assert label_free.entropy_score(LOGITS) == pytest.approx(-mean_h, rel=1e-12)
    assert label_free.im_score(LOGITS) == pytest.approx(_h(marginal) - mean_h, rel=1e-12)
    # IM's extremes: one confident class for everyone → 0; confident and balanced → log K.
    same = torch.tensor([[50.0, 0, 0]] * 4)
    balanced = torch.tensor([[50.0, 0, 0], [0, 50.0, 0], [0, 0, 50.0]])
    assert label_free.im_score(same) == pytest.approx(0, abs=1e-12)
    assert label_free.im_score(balanced) == pytest.approx(math.log(3), abs=1e-12)


def test_snd_is_the_mean_entropy_of_each_rows_softmax_over_the_other_rows():
    t = 0.05
    z = [np.asarray(r) / np.linalg.norm(r) for r in (_softmax(r) for r in LOGITS.tolist())]
    entropies = []
    for i, zi in enumerate(z):
        others = [float(zi @ zj) / t for j, zj in enumerate(z) if j != i]  # a point is not its own neighbour
        entropies.append(_h(_softmax(others)))
    assert label_free.snd_score(LOGITS, t) == pytest.approx(sum(entropies) / len(entropies), rel=1e-12)
    # Denser neighbourhoods score higher: two tight clusters beat the same points spread out.
    tight = torch.tensor([[9.0, 0, 0], [9.1, 0, 0], [8.9, 0, 0], [0, 9.0, 0], [0, 9.1, 0], [0, 8.9, 0]])
    assert label_free.snd_score(tight) > label_free.snd_score(LOGITS)


def test_dev_risk_is_the_control_variate_estimator():
    rng = np.random.default_rng(0)
    w, l = rng.gamma(2.0, 0.5, size=200), rng.exponential(1.0, size=200)
    wl = w * l
    eta = -np.sum((wl - wl.mean()) * (w - w.mean())) / np.sum((w - w.mean()) ** 2)
    assert label_free.dev_risk(w, l) == pytest.approx(wl.mean() + eta * w.mean() - eta, rel=1e-12)
    # It is the mean of wl + η(w − 1), and η minimises the spread of those terms (the control variate).
    def spread(e):
        return np.var(wl + e * (w - 1), ddof=1)
    assert label_free.dev_risk(w, l) == pytest.approx(np.mean(wl + eta * (w - 1)), rel=1e-12)
    assert spread(eta) < min(spread(eta - 0.1), spread(eta + 0.1), spread(0.0))
    # Equal weights (no shift): the plain mean loss.
    assert label_free.dev_risk(np.ones(5), [1.0, 2, 3, 4, 5]) == pytest.approx(3.0)


def test_density_ratios_recover_a_known_gaussian_shift():
    """Source N(0, 1), target N(μ, 1): p_T/p_S = exp(μx − μ²/2), and E_source[w] = 1."""
    g = torch.Generator().manual_seed(0)
    mu = 1.0
    xs, xt = torch.randn(3000, 1, generator=g), torch.randn(3000, 1, generator=g) + mu
    query = torch.linspace(-1.5, 2.5, 9).unsqueeze(1)
    w = label_free.density_ratios(xs, xt, query, seed=0)
    truth = np.exp(mu * query[:, 0].numpy() - mu**2 / 2)
    assert np.allclose(np.log(w), np.log(truth), atol=0.25)
    assert label_free.density_ratios(xs, xt, xs, seed=0).mean() == pytest.approx(1.0, abs=0.1)


def test_dev_has_no_score_where_its_weights_cannot_be_resolved():
    """Separable domains (a DANN run that does not align) give density ratios of e^100 and beyond:
    in float64 the control variate's cancellation is then noise, and e^710 overflows. DEV has no
    score there (NaN, which a rule never picks), computed without a floating-point warning, while a
    moderate shift keeps its finite value."""
    g = torch.Generator().manual_seed(0)
    xs, xt = torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g) + 60.0
    logits = torch.randn(50, 3, generator=g)
    labels = torch.randint(0, 3, (50,), generator=g)
    beyond_target = torch.randn(50, 2, generator=g) + 20000.0  # the linear logit extrapolates to ~e^4900
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(label_free.dev_score(xs, xt, beyond_target, logits, labels))
        log_w = label_free.log_density_ratios(xs, xt, beyond_target)
        assert np.isfinite(log_w).all() and log_w.min() > 700  # exp would overflow
        assert np.isinf(label_free.density_ratios(xs, xt, beyond_target)).all()
        # Finite but far beyond float64's resolution of the control variate: no score either.
        assert math.isnan(label_free.dev_score(xs, xt, torch.randn(50, 2, generator=g) + 1000.0, logits, labels))
        moderate = label_free.dev_score(xs, xs + 0.5, xs[:50], logits, labels)
    assert math.isfinite(moderate)


# --------------------------------------------------------------------------- through the trainer


CFG = {
    "data": {"name": "digits", "target": "digits", "num_validation": 100, "augmentation": {"noise_std": 0.05}},
    "model": {"backbone": "mlp", "options": {"width": 32, "depth": 1, "dropout": 0.1}},
    "method": {"name": "dann", "options": {"hidden": 16}},
    "optim": {"name": "sgd", "lr": 0.05, "weight_decay": 1e-3, "schedule": "annealed"},
    "train": {"iterations": 60, "batch_labeled": 16, "batch_unlabeled": 16, "eval_every": 10,
              "checkpoint_every": 30, "progress": False, "tensorboard": False, "ema_decay": 0.0},
}


def _evals(run_dir):
    return [json.loads(line) for line in (run_dir / EVALS).read_text().splitlines()]


def test_each_label_free_rule_picks_the_argmax_of_its_recorded_scores(pair, tmp_path):
    res = Trainer(from_dict(CFG), tmp_path / "r", dataset=pair).fit()
    evals = _evals(tmp_path / "r")
    rules = res.selection_rules()
    for rule in LABEL_FREE_RULES:
        scores = [e[f"score_{rule}"] for e in evals]
        assert all(math.isfinite(s) for s in scores), rule
        best = evals[int(np.argmax(scores))]  # the first evaluation with the largest score
        assert getattr(res, f"{rule}_iteration") == best["iteration"], rule
        assert rules[rule] == best["test"], rule
    assert len({tuple(e[f"score_{r}"] for e in evals) for r in LABEL_FREE_RULES}) == 4  # four different scores
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert all(summary[f"{r}_test_accuracy"] == rules[r] for r in LABEL_FREE_RULES)


def test_label_free_rules_read_no_target_label(pair, tmp_path):
    """Poisoned target labels (training and test): every label-free score and choice is unchanged;
    only the test accuracies move."""
    g = torch.Generator().manual_seed(1)
    t = pair.target
    poisoned = DomainPair(pair.name, pair.source, ArrayDataset(
        t.name, t.train_x, (t.train_y + 1 + torch.randint(0, 9, t.train_y.shape, generator=g)) % 10,
        t.test_x, t.test_y[torch.randperm(t.test_y.numel(), generator=g)], 10, {}))
    ra = Trainer(from_dict(CFG), tmp_path / "a", dataset=pair).fit()
    rb = Trainer(from_dict(CFG), tmp_path / "b", dataset=poisoned).fit()
    ea, eb = _evals(tmp_path / "a"), _evals(tmp_path / "b")
    keys = [f"score_{r}" for r in LABEL_FREE_RULES] + ["iteration", "val"]
    assert [{k: e[k] for k in keys} for e in ea] == [{k: e[k] for k in keys} for e in eb]
    assert [e["test"] for e in ea] != [e["test"] for e in eb]  # the poison reached the test accuracy
    for r in LABEL_FREE_RULES:
        assert getattr(ra, f"{r}_iteration") == getattr(rb, f"{r}_iteration")


def test_label_free_choices_survive_a_resume(pair, tmp_path):
    import yaml

    cfg = from_dict(CFG)
    full = Trainer(cfg, tmp_path / "full", dataset=pair).fit()
    Trainer(cfg.replace(**{"train.iterations": 30}), tmp_path / "half", dataset=pair).fit()
    (tmp_path / "half" / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    resumed = Trainer.resume(tmp_path / "half", dataset=pair).fit()
    assert resumed.selection_rules() == full.selection_rules()
    assert _evals(tmp_path / "half") == _evals(tmp_path / "full")


def test_dev_is_null_without_a_validation_split_and_ssl_has_no_label_free_rule(pair):
    res = Trainer(from_dict(CFG).replace(**{"data.num_validation": 0, "train.iterations": 20}), None,
                  dataset=pair).fit()
    rules = res.selection_rules()
    assert rules["dev"] is None and all(rules[r] is not None for r in ("snd", "entropy", "im"))
    ssl = from_dict({**CFG, "data": {"name": "digits", "num_labeled": 50, "num_validation": 100},
                     "method": {"name": "supervised"}})
    assert set(Trainer(ssl.replace(**{"train.iterations": 10}), None).fit().selection_rules()) == {
        "last", "best_validation"}


def test_regret_against_the_oracle_is_oracle_minus_rule_per_run():
    from supercm.analysis.compare import selection_regret

    runs = [{"oracle_test_selected": 0.80, "snd": 0.795, "dev": 0.70},
            {"oracle_test_selected": 0.60, "snd": 0.55, "dev": None},  # DEV without a validation split
            {"oracle_test_selected": 0.90, "snd": 0.90}]
    r = selection_regret(runs, ["snd", "dev", "im"])
    assert r["snd"].n == 3 and r["snd"].mean == pytest.approx((0.005 + 0.05 + 0) / 3)
    assert r["snd"].max == pytest.approx(0.05) and r["snd"].within_1_point == pytest.approx(2 / 3)
    assert r["dev"].n == 1 and r["dev"].mean == pytest.approx(0.10) and r["dev"].within_1_point == 0
    assert r["im"].n == 0 and math.isnan(r["im"].mean)
