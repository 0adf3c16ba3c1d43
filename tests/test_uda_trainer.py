"""Domain adaptation in the one trainer: DANN / MCC / BNM ± SuperCM and stacks, source-only centroids,
target labels never read, named selection rules, the field's optimiser and schedule, exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from supercm.config import ConfigError, from_dict
from supercm.data import UNLABELED, ArrayDataset, DomainPair
from supercm.methods import METHODS, check_terms
from supercm.train import CHECKPOINT, EVALS, METRICS, Trainer, lr_factor

UDA = {
    "data": {"name": "digits", "target": "digits", "num_validation": 50, "augmentation": {"noise_std": 0.05}},
    "model": {"backbone": "mlp", "options": {"width": 32, "depth": 1, "dropout": 0.1}},
    "method": {"name": "dann", "options": {"hidden": 16}},
    "optim": {"name": "sgd", "lr": 0.01, "weight_decay": 1e-3, "schedule": "annealed", "backbone_lr_mult": 0.5},
    "train": {"iterations": 30, "batch_labeled": 16, "batch_unlabeled": 16, "eval_every": 10,
              "progress": False, "tensorboard": False, "ema_decay": 0.0},
}


def uda(**dotted):
    return from_dict(UDA).replace(**dotted)


STACKS = [
    ("supervised", []), ("dann", []), ("mcc", []), ("bnm", []),
    ("dann", [{"name": "mcc"}]), ("dann", [{"name": "bnm", "weight": 0.5}]),
]


@pytest.mark.parametrize("method,regularisers", STACKS)
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_every_uda_method_and_stack_trains_with_and_without_supercm(pair, method, regularisers, beta):
    t = Trainer(uda(**{"method.name": method, "method.options": {}, "regularisers": regularisers, "cm.beta": beta}),
                None, dataset=pair)
    logs = [t.train_step() for _ in range(4)]
    assert all(math.isfinite(float(v)) for log in logs for v in log.values())
    assert ("cm" in logs[-1]) == (beta > 0)
    assert ("base" in logs[-1]) == (method != "supervised")
    for r in regularisers:
        assert r["name"] in logs[-1]


@pytest.mark.parametrize("name", ["dann", "mcc", "bnm", "supercm"])
def test_each_uda_loss_has_a_nonzero_gradient_into_the_backbone(pair, monkeypatch, name):
    """Through the trainer's own step: the term's loss alone, differentiated w.r.t. the backbone."""
    cfg = uda(**({"cm.beta": 0.3, "method.name": "supervised", "method.options": {}} if name == "supercm"
                 else {"method.name": name, "method.options": {}}))
    t = Trainer(cfg, None, dataset=pair)
    t.train_step()
    term = t.term("cm") if name == "supercm" else t.method
    grads = {}
    original = term.loss

    def spy(batch):
        loss = original(batch)
        params = list(batch.model.backbone.parameters())
        grads["backbone"] = torch.autograd.grad(loss, params, retain_graph=True)
        if name == "dann":
            grads["disc"] = torch.autograd.grad(loss, list(term.discriminator.parameters()), retain_graph=True)
        return loss

    monkeypatch.setattr(term, "loss", spy)
    t.train_step()
    assert sum(float(g.abs().sum()) for g in grads["backbone"]) > 0
    if name == "dann":
        assert sum(float(g.abs().sum()) for g in grads["disc"]) > 0
        disc_params = {id(p) for p in term.discriminator.parameters()}
        optimised = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
        assert disc_params <= optimised  # the trainer optimises the module the method owns


def test_dann_reverses_the_gradient_into_the_features(pair, monkeypatch):
    """d L_DANN / d features = −λ(i) × the gradient without reversal (the discriminator's is not reversed)."""
    from supercm.losses import dann_lambda

    t = Trainer(uda(**{"method.options": {"hidden": 16}}), None, dataset=pair)
    for _ in range(3):
        t.train_step()
    seen = {}
    original = t.method.loss

    def spy(batch):
        loss = original(batch)
        feats = batch.features
        (g_rev,) = torch.autograd.grad(loss, feats, retain_graph=True)
        disc = t.method.discriminator
        plain = disc(feats).reshape(-1)
        n = batch.num_labeled
        ref = 0.5 * (torch.nn.functional.binary_cross_entropy_with_logits(plain[:n], torch.ones_like(plain[:n]))
                     + torch.nn.functional.binary_cross_entropy_with_logits(plain[n:], torch.zeros_like(plain[n:])))
        (g_plain,) = torch.autograd.grad(ref, feats, retain_graph=True)
        seen.update(rev=g_rev, plain=g_plain, lam=dann_lambda(batch.iteration))
        return loss

    monkeypatch.setattr(t.method, "loss", spy)
    t.train_step()
    assert seen["lam"] > 0
    torch.testing.assert_close(seen["rev"], -seen["lam"] * seen["plain"], rtol=1e-4, atol=1e-8)


def test_supercm_centroids_come_from_source_features_only(pair, monkeypatch):
    t = Trainer(uda(**{"cm.beta": 0.5, "method.name": "supervised", "method.options": {}}), None, dataset=pair)
    seen = {}
    original = t.term("cm").loss

    def spy(batch):
        seen["f_s"], seen["y_s"] = batch.features_labeled.detach().clone(), batch.y_labeled.clone()
        seen["f_t"] = batch.features_unlabeled.detach().clone()
        return original(batch)

    monkeypatch.setattr(t.term("cm"), "loss", spy)
    t.train_step()
    mu = t.model.head.centroids
    for k in range(10):  # first update (τ = 1): μ_k is the mean of the source features of class k
        if (seen["y_s"] == k).any():
            torch.testing.assert_close(mu[k], seen["f_s"][seen["y_s"] == k].mean(0))
    assert (t.y_train[t.split.unlabeled] == UNLABELED).all()  # target rows carry no label


def test_target_training_labels_never_reach_training_or_selection(pair, tmp_path):
    """Permuting the target's training labels leaves a run bit-identical (metrics, evaluations, weights)."""
    g = torch.Generator().manual_seed(1)
    shuffled = DomainPair(pair.name, pair.source, ArrayDataset(
        pair.target.name, pair.target.train_x, pair.target.train_y[torch.randperm(pair.target.train_y.numel(), generator=g)],
        pair.target.test_x, pair.target.test_y, 10, {}))
    assert not torch.equal(shuffled.target.train_y, pair.target.train_y)
    cfg = uda(**{"cm.beta": 0.3, "regularisers": [{"name": "mcc"}]})
    a = Trainer(cfg, tmp_path / "a", dataset=pair)
    ra = a.fit()  # one after the other: dropout draws from the global torch RNG, seeded by each Trainer
    b = Trainer(cfg, tmp_path / "b", dataset=shuffled)
    rb = b.fit()
    for name in (METRICS, EVALS):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert {k: v for k, v in ra.to_dict().items() if k != "seconds"} == {k: v for k, v in rb.to_dict().items() if k != "seconds"}


def test_three_named_selection_rules(pair, tmp_path):
    t = Trainer(uda(**{"train.iterations": 40}), tmp_path / "r", dataset=pair)
    res = t.fit()
    evals = [json.loads(line) for line in (tmp_path / "r" / EVALS).read_text().splitlines()]
    assert all(e["test"] is not None for e in evals)  # the oracle needs every evaluation's target test accuracy
    best_val = max(evals, key=lambda e: e["val"])  # validation = held-out *source* samples
    rules = res.selection_rules()
    assert {k: rules[k] for k in ("last", "best_validation", "oracle_test_selected")} == {
        "last": evals[-1]["test"], "best_validation": best_val["test"], "oracle_test_selected": max(e["test"] for e in evals)}
    assert set(rules) - {"last", "best_validation", "oracle_test_selected"} == {"dev", "snd", "entropy", "im"}  # tests/test_selection.py
    assert res.oracle_iteration == max(evals, key=lambda e: e["test"])["iteration"]
    src_val = set(t.split.validation.tolist())
    assert src_val and max(src_val) < pair.source.train_y.numel()  # validation rows are source rows
    assert not src_val & set(t.split.labeled.tolist())


def test_uda_run_resumes_exactly(pair, tmp_path):
    import yaml

    cfg = uda(**{"cm.beta": 0.3, "regularisers": [{"name": "bnm"}], "train.iterations": 30,
                 "train.checkpoint_every": 15})
    full = Trainer(cfg, tmp_path / "full", dataset=pair)
    full.fit()
    half = Trainer(cfg.replace(**{"train.iterations": 15}), tmp_path / "half", dataset=pair)
    half.fit()
    (tmp_path / "half" / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    resumed = Trainer.resume(tmp_path / "half", dataset=pair)
    resumed.fit()
    assert (tmp_path / "full" / METRICS).read_text() == (tmp_path / "half" / METRICS).read_text()
    for a, b in zip(full.method.state_dict().values(), resumed.method.state_dict().values()):
        assert torch.equal(a, b)  # the discriminator too
    assert (tmp_path / "half" / CHECKPOINT).exists()


def test_sgd_nesterov_annealed_schedule_and_backbone_multiplier(pair):
    t = Trainer(uda(), None, dataset=pair)
    opt = t.optimizer
    assert isinstance(opt, torch.optim.SGD) and all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
    lrs0 = [g["lr"] for g in opt.param_groups]
    assert lrs0 == pytest.approx([0.005, 0.01, 0.01])  # backbone × 0.5, head, the discriminator
    for _ in range(5):
        t.train_step()
    factor = (1 + 0.001 * 5) ** -0.75
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr * factor for lr in lrs0])
    assert lr_factor(t.cfg.optim, 1000) == pytest.approx(2 ** -0.75)


def test_uda_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="method.name"):
        from_dict({"method": {"name": "supercm"}})
    with pytest.raises(ConfigError, match=r"regularisers\[0\].name"):
        from_dict({"regularisers": [{"name": "supercm"}]})
    with pytest.raises(ConfigError, match=r"regularisers\[0\].name"):  # the registry's check, above config
        check_terms(from_dict({"regularisers": [{"name": "flexmatch"}]}))
    with pytest.raises(ConfigError, match="optim.name"):
        from_dict({"optim": {"name": "rmsprop"}})
    with pytest.raises(ConfigError, match="train.batch_unlabeled"):
        from_dict({"data": {"target": "mnistm_style"}, "train": {"batch_unlabeled": 0}})


def test_demo_uda_prints_the_three_arms_under_named_rules(pair, monkeypatch, capsys):
    """`supercm demo uda` end to end on a small pair (the real one is fetched from the registries)."""
    import supercm.data
    import supercm.demo as demo
    from supercm.cli import main

    monkeypatch.setattr(supercm.data, "fetch", lambda name, root: None)
    monkeypatch.setattr(demo, "_uda_pair", lambda root: pair)
    small = {**demo.UDA_DEMO_CONFIG, "model": {"backbone": "mlp", "options": {"width": 16, "depth": 1}},
             "data": {**demo.UDA_DEMO_CONFIG["data"], "num_validation": 50}}
    monkeypatch.setattr(demo, "UDA_DEMO_CONFIG", small)
    assert main(["demo", "uda", "--seeds", "2", "--iterations", "20", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "| source only | 0 |" in out and "| DANN | 0 |" in out and "| DANN + SuperCM | 0.3 |" in out
    assert "target test % (source-val rule)" in out and "oracle % (test-selected, not a result)" in out
    assert "DANN + SuperCM vs DANN (source-val rule)" in out
    assert "a shortened schedule: λ_p and η_p run over 20 iterations" in out


@pytest.mark.parametrize("stem,method,beta", [("source_only", "supervised", 0.0), ("dann", "dann", 0.0),
                                              ("dann-cm", "dann", 0.3)])
def test_demo_uda_runs_the_shipped_configs_but_for_their_length(stem, method, beta):
    """The demo's arms are configs/uda/mnist10k-to-mnistm_style-{source_only,dann,dann-cm}.yaml with
    train.iterations (and the logging cadence) shortened: a change to the configs must reach the demo."""
    from pathlib import Path

    import supercm.demo as demo
    from supercm.config import load_config

    shipped = load_config(Path(__file__).resolve().parents[1] / "configs" / "uda" / f"mnist10k-to-mnistm_style-{stem}.yaml")
    arm = from_dict(demo.UDA_DEMO_CONFIG).replace(**{
        "method.name": method, "method.options": demo.UDA_DEMO_DANN if method == "dann" else {}, "cm.beta": beta})
    assert shipped.train.iterations == demo.UDA_FULL_ITERATIONS
    for section in ("data", "model", "optim"):
        assert getattr(arm, section) == getattr(shipped, section), section
    assert (arm.cm.beta, arm.cm.centroids, arm.cm.features) == (shipped.cm.beta, shipped.cm.centroids, shipped.cm.features)
    assert arm.method.name == shipped.method.name
    term = METHODS[method]  # the options as the term reads them, defaults filled in
    assert term.Options(**arm.method.options) == term.Options(**shipped.method.options)
    assert (arm.train.batch_labeled, arm.train.batch_unlabeled) == (shipped.train.batch_labeled, shipped.train.batch_unlabeled)
