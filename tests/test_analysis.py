"""The analyses (issue 11): proxy A-distance, pictures, comparison reports, tuning."""

from __future__ import annotations

import json
import math
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


# ----------------------------------------------------------------------------- compare
def _fake_run(path: Path, seed: int, beta: float, test: float, val: float, device: str = "cpu") -> Path:
    """A finished run directory written by hand: config.yaml and summary.json."""
    import yaml

    from supercm.config import load_config

    cfg = load_config(None, [f"cm.beta={beta}", f"train.seed={seed}", f"train.device={device}"])
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (path / "summary.json").write_text(json.dumps(
        {"best_iteration": 100, "best_val_accuracy": val, "test_accuracy_at_best_val": test, "final_val_accuracy": val,
         "final_test_accuracy": test - 0.01, "seconds": 1.0, "iterations": 1000}))
    return path


def test_compare_groups_by_config_and_matches_scipy(tmp_path, capsys):
    """Groups ignore seed and device; mean and sample std as numpy's; the paired p-value is
    scipy's ttest_rel on the seeds both groups hold (seed 3 has no partner and is left out)."""
    from scipy import stats

    base = {0: 0.80, 1: 0.82, 2: 0.78, 3: 0.90}
    treat = {0: 0.85, 1: 0.88, 2: 0.80}
    dirs = [_fake_run(tmp_path / f"ce{s}", s, 0.0, t, 0.5, device="cpu" if s % 2 else "cuda") for s, t in base.items()]
    dirs += [_fake_run(tmp_path / f"cm{s}", s, 1.0, t, 0.6) for s, t in treat.items()]
    md_path, csv_path = tmp_path / "r.md", tmp_path / "r.csv"
    args = ["compare", *map(str, dirs), "--baseline", "cm.beta=0.0", "--treatment", "cm.beta=1.0",
            "--markdown", str(md_path), "--csv", str(csv_path)]
    assert main(args) == 0
    assert capsys.readouterr().out == md_path.read_text()
    import csv

    rows = {(r["group"], r["metric"]): r for r in csv.DictReader(csv_path.open())}
    b = rows[("cm.beta=0.0", "test_accuracy_at_best_val")]
    assert int(b["n"]) == 4
    assert float(b["mean"]) == pytest.approx(np.mean(list(base.values())))
    assert float(b["std"]) == pytest.approx(np.std(list(base.values()), ddof=1))
    assert float(b["ci_low"]) <= float(b["mean"]) <= float(b["ci_high"])
    t = rows[("cm.beta=1.0", "test_accuracy_at_best_val")]
    want = stats.ttest_rel([treat[s] for s in (0, 1, 2)], [base[s] for s in (0, 1, 2)]).pvalue
    assert float(t["p_value"]) == pytest.approx(want)
    assert float(t["paired_gain"]) == pytest.approx(np.mean([0.05, 0.06, 0.02]))
    assert t["wins"] == "3"
    assert "80.00 ± 2.00" not in md_path.read_text()  # 4 seeds: (0.80, 0.82, 0.78, 0.90)
    assert f"{100 * np.mean(list(base.values())):.2f} ± {100 * np.std(list(base.values()), ddof=1):.2f}" in md_path.read_text()


def test_paired_t_interval_is_mean_plus_minus_t_sd_over_root_n():
    """The t interval the UDA tables report (issue 17: gain's 95 % interval narrower than ±1.5 points)."""
    from scipy import stats

    from supercm.analysis.compare import paired

    base = {0: 0.60, 1: 0.57, 2: 0.64, 3: 0.59}
    treat = {0: 0.67, 1: 0.63, 2: 0.72, 3: 0.66, 9: 0.99}  # seed 9 has no partner
    d = np.array([0.07, 0.06, 0.08, 0.07])
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    r = paired(base, treat)
    assert r.n == 4 and r.t_ci == pytest.approx((lo, hi), abs=1e-12)
    assert r.t_ci[0] < r.ci[0] <= r.ci[1] < r.t_ci[1]  # 4 seeds: the bootstrap interval is the narrower
    assert all(math.isnan(x) for x in paired({0: 0.5}, {0: 0.6}).t_ci)


def test_seeds_for_half_width_is_the_first_m_whose_t_interval_fits():
    """m seeds give the half-width t_{0.975}(m − 1)·sd/√m; the answer is the smallest m where it is ≤ h."""
    from scipy import stats

    from supercm.analysis.compare import paired, seeds_for_half_width

    def hw(sd, m):
        return stats.t.ppf(0.975, m - 1) * sd / math.sqrt(m)

    # sd = h: t(5)/√6 = 1.050 > 1 ≥ t(6)/√7 = 0.925, so 7 seeds
    assert seeds_for_half_width(1.5, 1.5) == 7
    for sd, h in [(2.0, 1.5), (5.3, 1.5), (14.36, 1.5), (0.4, 1.5), (3.0, 0.5)]:
        m = seeds_for_half_width(sd, h)
        assert hw(sd, m) <= h and (m == 2 or hw(sd, m - 1) > h), (sd, h, m)
    # for many seeds t → z: about (1.96·sd/h)² seeds
    assert seeds_for_half_width(20.0, 1.0) == pytest.approx((1.96 * 20) ** 2, rel=0.01)
    assert seeds_for_half_width(0.0, 1.5) == 2 and seeds_for_half_width(math.nan, 1.5) is None
    assert seeds_for_half_width(1e6, 1.5) is None  # more than the limit
    with pytest.raises(ValueError, match="half_width must be > 0"):
        seeds_for_half_width(1.0, 0.0)
    # Paired carries the sd the projection reads, and the half-width it checks
    base, treat = {0: 0.60, 1: 0.57, 2: 0.64, 3: 0.59}, {0: 0.67, 1: 0.63, 2: 0.72, 3: 0.66}
    r = paired(base, treat)
    d = np.array([0.07, 0.06, 0.08, 0.07])
    assert r.sd == pytest.approx(d.std(ddof=1)) and r.half_width == pytest.approx(hw(d.std(ddof=1), 4))
    assert seeds_for_half_width(r.sd, r.half_width * (1 + 1e-9)) == 4  # the seeds run reach the interval they gave
    assert math.isnan(paired({0: 0.5}, {0: 0.6}).sd)


def test_compare_bootstrap_is_seeded_and_errors_are_one_line(tmp_path, capsys):
    from supercm.analysis.compare import bootstrap_ci

    v = list(np.random.default_rng(0).uniform(size=10))
    assert bootstrap_ci(v, seed=1, resamples=500) == bootstrap_ci(v, seed=1, resamples=500) != bootstrap_ci(v, seed=2, resamples=500)
    lo, hi = bootstrap_ci(v)
    assert min(v) <= lo < np.mean(v) < hi <= max(v)
    d = _fake_run(tmp_path / "a", 0, 0.0, 0.8, 0.5)
    assert main(["compare", str(d), "--baseline", "x", "--treatment", "y"]) == 2
    assert "no group named 'x'" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "missing")]) == 2


def test_compare_reads_a_results_file_like_the_ssl_benchmark(tmp_path, capsys):
    rows = [{"dataset": "d", "method": "vat", "cm": cm, "seed": s, "test_accuracy_at_best_val": t, "best_val_accuracy": 0.5}
            for cm, ts in ((False, [0.80, 0.82, 0.78]), (True, [0.90, 0.91, 0.90])) for s, t in enumerate(ts)]
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["compare", "--results", str(f), "--baseline", "cm=False", "--treatment", "cm=True"]) == 0
    out = capsys.readouterr().out
    assert "| cm=False | 3 | 80.00 ± 2.00 |" in out and "| 90.33 ± 0.58 |" in out and "+10.33" in out


# ----------------------------------------------------------------------------- tune
TUNE = ["train.iterations=30", "train.eval_every=10", "train.tensorboard=false"]


def _poison_test_accuracy(monkeypatch):
    """Make every test-set accuracy −1 (digits' test split has 599 samples, validation 200):
    if it reached the objective, a trial's value or a reported intermediate value would be −1."""
    from supercm import evaluation

    real = evaluation.evaluate

    def evaluate(model, x, y, batch_size=1000, **kw):
        return -1.0 if y.numel() == 599 else real(model, x, y, batch_size, **kw)

    monkeypatch.setattr(evaluation, "evaluate", evaluate)


def test_tune_objective_is_the_best_validation_accuracy(tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    import yaml

    from supercm.analysis.tune import tune

    _poison_test_accuracy(monkeypatch)
    r = tune(ROOT / "configs" / "digits.yaml", 2, tmp_path, overrides=TUNE, log=lambda m: None)
    assert r.finished_trials == 2 and (tmp_path / "study.db").is_file()
    for t in r.study.trials:
        run = Path(t.user_attrs["run_dir"])
        summary = json.loads((run / "summary.json").read_text())
        assert t.value == summary["best_val_accuracy"] > 0
        evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
        assert t.intermediate_values == {e["iteration"]: e["val"] for e in evals}
        assert t.user_attrs["test_accuracy_at_best_val"] == -1.0  # recorded, never optimised
    assert set(r.best_params) == {"cm.beta"}  # supervised: no unlabeled loss, so no δ
    best = yaml.safe_load(r.config_path.read_text())
    assert best["cm"]["beta"] == pytest.approx(r.best_params["cm.beta"])


def test_tune_resumes_an_interrupted_study_from_sqlite(tmp_path, monkeypatch, capsys):
    pytest.importorskip("optuna")
    import optuna

    from supercm import train

    real_fit, calls = train.Trainer.fit, []

    def fit(self, on_evaluate=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the machine goes away during the second trial
        return real_fit(self, on_evaluate)

    monkeypatch.setattr(train.Trainer, "fit", fit)
    args = ["tune", str(ROOT / "configs" / "digits.yaml"), *TUNE, "--trials", "3", "--out", str(tmp_path)]
    assert main(args) == 130  # the CLI reports the interruption in one line
    storage = f"sqlite:///{tmp_path.resolve() / 'study.db'}"
    assert len(optuna.load_study(study_name="supercm", storage=storage).trials) == 2  # one done, one cut
    assert main(args) == 0  # the same command again: only the missing trials
    study = optuna.load_study(study_name="supercm", storage=storage)
    states = [t.state for t in study.trials]
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert states.count(optuna.trial.TrialState.COMPLETE) + states.count(optuna.trial.TrialState.PRUNED) == 3
    assert "validation accuracy" in capsys.readouterr().out and (tmp_path / "best.yaml").is_file()


def test_tune_params_parse_and_default_to_beta_and_delta():
    from supercm.analysis.tune import Param, default_space, parse_param
    from supercm.config import ConfigError, load_config

    assert parse_param("cm.beta=log:0.01:10") == Param("cm.beta", "log", 0.01, 10.0)
    assert parse_param("cm.centroids=choice:paper,mean").choices == ("paper", "mean")
    for bad in ("cm.beta", "cm.beta=log:1", "cm.beta=log:0:1", "cm.beta=exp:1:2"):
        with pytest.raises(ConfigError):
            parse_param(bad)
    assert [p.key for p in default_space(load_config(None, ["method.name=vat"]))] == ["cm.beta", "method.delta"]
    assert [p.key for p in default_space(load_config(None))] == ["cm.beta"]


# ----------------------------------------------------------------------------- plot
def test_plot_writes_valid_pngs_side_by_side(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    out = tmp_path / "pics"
    assert main(["plot", str(runs["ce"]), str(runs["cm"]), "--out", str(out), "--max-points", "150"]) == 0
    written = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in written) == ["curves.png", "tsne.png"]
    for name in ("curves.png", "tsne.png"):
        raw = (out / name).read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img[..., :3].std() > 0.01  # something is drawn, not a blank canvas
    # Two panels side by side: wider than tall.
    tsne = matplotlib.image.imread(out / "tsne.png")
    assert tsne.shape[1] > 1.5 * tsne.shape[0]


def test_tsne_places_the_centroids_among_their_classes():
    """Embedding the centroids together with the features puts μ_k inside class k's cloud:
    well-separated Gaussian classes with their means as centroids → each embedded centroid's
    nearest embedded points belong to its own class."""
    pytest.importorskip("matplotlib")
    from supercm.analysis.plot import embed_with_centroids

    rng = np.random.default_rng(0)
    means = rng.normal(scale=8.0, size=(4, 16))
    labels = np.repeat(np.arange(4), 40)
    feats = means[labels] + rng.normal(size=(160, 16))
    pts, cpts = embed_with_centroids(feats, means, seed=0)
    for k, c in enumerate(cpts):
        nearest = np.argsort(((pts - c) ** 2).sum(1))[:10]
        assert (labels[nearest] == k).mean() >= 0.9


def test_pad_of_a_domain_adaptation_run_uses_its_own_source_and_target(tmp_path, capsys):
    """A UDA run's domains are its source and target test sets (here digits → digits: PAD ≈ 0)."""
    run = tmp_path / "uda"
    assert main(["train", "data.name=digits", "data.target=digits", "data.num_validation=50", "method.name=dann",
                 "model.options={width: 16, depth: 1}", "train.iterations=20", "train.eval_every=10",
                 "train.batch_labeled=16", "train.batch_unlabeled=16", "train.progress=false",
                 "train.tensorboard=false", "--run-dir", str(run)]) == 0
    out_json = tmp_path / "pad.json"
    assert main(["pad", str(run), "--repeats", "2", "--json", str(out_json)]) == 0
    r = json.loads(out_json.read_text())["run"]
    assert r["source"] == "digits test (source)" and r["target"] == "digits test (target)"
    assert 0.0 <= r["pad_mean"] < 0.3
    capsys.readouterr()
    assert main(["pad", str(run), "--target", "digits"]) == 2
    assert "drop --target" in capsys.readouterr().err
