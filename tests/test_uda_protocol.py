"""The DANN paper's digit protocol in the product (issue 17 §1): the published digit networks, the
discriminator as options, the schedules over training progress p = i/T, and the field's source only
(the model sees the source rows alone), each through the trainer's own step."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from supercm.config import ConfigError, from_dict
from supercm.data import ArrayDataset, DomainPair, load_dataset
from supercm.losses import DomainDiscriminator, dann_lambda, dann_lambda_progress
from supercm.methods import check_terms
from supercm.models import build_backbone
from supercm.schedules import lr_factor
from supercm.train import Trainer


@pytest.fixture(scope="module")
def pair():
    """Digits (8×8, one channel) as the source, the other half of digits with inverted, rescaled
    intensities as the target."""
    d = load_dataset("digits")
    perm = torch.randperm(d.train_y.numel(), generator=torch.Generator().manual_seed(0))
    src, tgt = perm[: perm.numel() // 2], perm[perm.numel() // 2:]
    shift = lambda x: 0.5 * (x.max() - x) + 0.3  # noqa: E731
    source = ArrayDataset("digits-src", d.train_x[src], d.train_y[src], d.test_x, d.test_y, 10, {})
    target = ArrayDataset("digits-shifted", shift(d.train_x[tgt]), d.train_y[tgt], shift(d.test_x), d.test_y, 10, {})
    return DomainPair("digits-src->digits-shifted", source, target)


@pytest.fixture(scope="module")
def image_pair():
    """A 3×28×28 pair (random images; the target brighter), for the digit networks."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 3, 28, 28, generator=g)
    y = torch.arange(200) % 10
    source = ArrayDataset("img-src", x[:100], y[:100], x[:40], y[:40], 10, {})
    target = ArrayDataset("img-tgt", 0.5 + 0.5 * x[100:], y[100:], 0.5 + 0.5 * x[160:], y[160:], 10, {})
    return DomainPair("img-src->img-tgt", source, target)


BASE = {
    "data": {"name": "digits", "target": "digits", "num_validation": 50, "augment": False},
    "model": {"backbone": "mlp", "options": {"width": 32, "depth": 1}},
    "method": {"name": "dann", "options": {"hidden": 16}},
    "optim": {"name": "sgd", "lr": 0.01, "schedule": "annealed"},
    "train": {"iterations": 20, "batch_labeled": 16, "batch_unlabeled": 16, "eval_every": 10,
              "progress": False, "tensorboard": False, "ema_decay": 0.0},
}


def cfg(**dotted):
    return from_dict(BASE).replace(**dotted)


# --------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("shape,features", [((3, 28, 28), 768), ((1, 28, 28), 768), ((1, 32, 32), 48 * 5 * 5)])
def test_ganin_mnist_has_the_published_shape(shape, features):
    """conv5×5(32)–ReLU–pool2–conv5×5(48)–ReLU–pool2, no padding: 28 → 24 → 12 → 8 → 4, 48·4·4 = 768."""
    net = build_backbone("ganin_mnist", shape)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == \
        [(shape[0], 32, (5, 5), (0, 0)), (32, 48, (5, 5), (0, 0))]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert sum(p.numel() for p in net.parameters()) == shape[0] * 32 * 25 + 32 + 32 * 48 * 25 + 48
    x = torch.randn(4, *shape, requires_grad=True)
    y = net(x)
    assert y.shape == (4, features) == (4, net.out_features)
    y.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 32, 32), (1, 32, 32)])
def test_dtn_has_the_published_shape(shape):
    """Three conv5×5 stride-2 blocks (64, 128, 256; BN, channel dropout 0.1/0.3/0.5), 4×4 → Linear 512."""
    net = build_backbone("dtn", shape)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == \
        [(w, (5, 5), (2, 2), (2, 2)) for w in (64, 128, 256)]
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout2d)] == [0.1, 0.3, 0.5]
    linear = next(m for m in net.modules() if isinstance(m, nn.Linear))
    assert (linear.in_features, linear.out_features) == (256 * 4 * 4, 512)
    x = torch.randn(4, *shape, requires_grad=True)
    y = net(x)
    assert y.shape == (4, 512) and torch.isfinite(y).all()
    y.square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_digit_backbones_refuse_vectors_with_the_key():
    with pytest.raises(ValueError, match="image input"):
        build_backbone("ganin_mnist", (64,))
    with pytest.raises(ConfigError, match="model.options"):
        from_dict({"model": {"backbone": "dtn", "options": {"width": 3}}})


# --------------------------------------------------------------------------- the discriminator
def _layout(disc: nn.Module) -> list:
    return [(type(m).__name__, getattr(m, "out_features", getattr(m, "p", None))) for m in disc]


def test_discriminator_options_build_the_layers_they_name():
    assert _layout(DomainDiscriminator(64)) == [("Linear", 1024), ("BatchNorm1d", None), ("ReLU", None),
                                                 ("Linear", 1024), ("BatchNorm1d", None), ("ReLU", None), ("Linear", 1)]
    ganin = DomainDiscriminator(768, hidden=100, depth=1, batch_norm=False)
    assert _layout(ganin) == [("Linear", 100), ("ReLU", None), ("Linear", 1)]
    assert sum(p.numel() for p in ganin.parameters()) == 768 * 100 + 100 + 100 + 1
    assert _layout(DomainDiscriminator(8, hidden=5, depth=3, batch_norm=False, dropout=0.5)) == \
        [("Linear", 5), ("ReLU", None), ("Dropout", 0.5)] * 3 + [("Linear", 1)]
    assert DomainDiscriminator(8, hidden=5, depth=3)(torch.randn(4, 8)).shape == (4,)


def test_dann_options_reach_the_discriminator_the_trainer_optimises(pair):
    t = Trainer(cfg(**{"method.options": {"hidden": 100, "depth": 1, "batch_norm": False, "dropout": 0.2}}),
                None, dataset=pair)
    disc = t.method.discriminator
    assert _layout(disc) == [("Linear", 100), ("ReLU", None), ("Dropout", 0.2), ("Linear", 1)]
    assert disc[0].in_features == t.model.head.in_features
    assert {id(p) for p in disc.parameters()} <= {id(p) for g in t.optimizer.param_groups for p in g["params"]}


def test_dann_defaults_are_unchanged():
    """tllib's 2 × 1024 BatchNorm discriminator and the per-iteration λ stay the defaults."""
    from supercm.methods.dann import DANN

    o = DANN.Options()
    assert (o.hidden, o.depth, o.batch_norm, o.dropout, o.lambda_schedule) == (1024, 2, True, 0.0, "iteration")


# --------------------------------------------------------------------------- schedules over progress
@pytest.mark.parametrize("p", [0.0, 0.05, 0.1, 0.37, 1.0])
def test_lambda_over_progress_is_the_papers(p):
    assert dann_lambda_progress(p) == pytest.approx(2 / (1 + math.exp(-10 * p)) - 1, abs=1e-12)
    assert dann_lambda_progress(p, 10.0) == pytest.approx(dann_lambda(int(p * 1000), 100.0), abs=1e-12)


def test_dann_lambda_in_the_trainer_follows_p_equals_i_over_T(pair, monkeypatch):
    import supercm.methods.dann as dann_module

    T = 20
    seen = []
    real = dann_module.dann_loss
    monkeypatch.setattr(dann_module, "dann_loss", lambda d, fs, ft, lam: seen.append(lam) or real(d, fs, ft, lam))
    t = Trainer(cfg(**{"method.options": {"hidden": 16, "lambda_schedule": "progress"}, "train.iterations": T}),
                None, dataset=pair)
    for _ in range(5):
        t.train_step()
    assert seen == pytest.approx([2 / (1 + math.exp(-10 * i / T)) - 1 for i in range(5)], abs=1e-12)


@pytest.mark.parametrize("i", [0, 1, 50, 99, 100])
def test_lr_over_progress_is_the_papers(i):
    optim = from_dict({"optim": {"schedule": "progress"}}).optim
    assert lr_factor(optim, i, 100) == pytest.approx((1 + 10 * i / 100) ** -0.75, abs=1e-12)


@pytest.mark.parametrize("i", [0, 1, 50, 99, 100, 120])
def test_cosine_lr_is_fixmatchs(i):
    """FixMatch / USB: η = η0 cos(7πk / 16K), the factor clamped at the run's end."""
    optim = from_dict({"optim": {"schedule": "cosine"}}).optim
    assert lr_factor(optim, i, 100) == pytest.approx(math.cos(7 * math.pi * min(i, 100) / (16 * 100)), abs=1e-12)


def test_trainers_logged_lr_follows_the_cosine(pair):
    T, lr0 = 8, 0.01
    t = Trainer(cfg(**{"optim.schedule": "cosine", "train.iterations": T}), None, dataset=pair)
    logged = [float(t.train_step()["lr"]) for _ in range(T)]
    assert logged == pytest.approx([lr0 * math.cos(7 * math.pi * (i + 1) / (16 * T)) for i in range(T)], abs=1e-12)


def test_lr_over_progress_needs_the_run_length():
    optim = from_dict({"optim": {"schedule": "progress"}}).optim
    with pytest.raises(ValueError, match="train.iterations"):
        lr_factor(optim, 3)


def test_trainers_logged_lr_is_eta_p(pair):
    """After step i (0-based) the optimiser holds the lr of step i + 1: η0 (1 + 10 (i+1)/T)^−0.75."""
    T, lr0 = 8, 0.01
    t = Trainer(cfg(**{"optim.schedule": "progress", "train.iterations": T}), None, dataset=pair)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(lr0)
    logged = [float(t.train_step()["lr"]) for _ in range(T)]
    assert logged == pytest.approx([lr0 * (1 + 10 * (i + 1) / T) ** -0.75 for i in range(T)], abs=1e-12)
    assert logged[-1] == pytest.approx(lr0 * 11 ** -0.75)


def test_schedule_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"'optim.schedule' must be one of step, annealed, progress, cosine"):
        from_dict({"optim": {"schedule": "linear"}})
    with pytest.raises(ConfigError, match="method.options.lambda_schedule"):
        check_terms(from_dict({"method": {"name": "dann", "options": {"lambda_schedule": "linear"}}}))
    with pytest.raises(ConfigError, match="method.options.depth"):
        check_terms(from_dict({"method": {"name": "dann", "options": {"depth": 0}}}))


# --------------------------------------------------------------------------- the field's source only
def _bn_stats_after_one_step(trainer: Trainer, monkeypatch) -> tuple[dict, dict, torch.Tensor, int]:
    """One trainer step; the model's BatchNorm statistics after it and those a copy gets from ``x``
    rows of the step's batch, for x = the source rows and x = the joined batch."""
    before = copy.deepcopy(trainer.model)
    captured = {}
    real = trainer._batch

    def spy():
        b = real()
        captured.update(x=b.x.clone(), n=b.num_labeled)
        return b

    monkeypatch.setattr(trainer, "_batch", spy)
    trainer.train_step()

    def stats(model):
        return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}

    refs = {}
    for name, rows in (("source", captured["x"][: captured["n"]]), ("joined", captured["x"])):
        m = copy.deepcopy(before).train()
        with torch.no_grad():
            m(rows)
        refs[name] = stats(m)
    return stats(trainer.model), refs, captured["x"], captured["n"]


def test_source_only_feeds_only_source_rows_by_default(pair, monkeypatch):
    """The field's source only: the BatchNorm statistics after a step are those of the source rows."""
    t = Trainer(cfg(**{"method.name": "supervised", "method.options": {}}), None, dataset=pair)
    got, refs, x, n = _bn_stats_after_one_step(t, monkeypatch)
    assert x.shape[0] > n  # a target batch was drawn (same random streams as the joined variant)
    for k in got:
        torch.testing.assert_close(got[k], refs["source"][k], rtol=0, atol=0)
    assert any(not torch.equal(got[k], refs["joined"][k]) for k in got if "mean" in k)


def test_source_only_joined_is_the_named_option(pair, monkeypatch):
    t = Trainer(cfg(**{"method.name": "supervised", "method.options": {"forward": "joined"}}), None, dataset=pair)
    got, refs, _, _ = _bn_stats_after_one_step(t, monkeypatch)
    for k in got:
        torch.testing.assert_close(got[k], refs["joined"][k], rtol=0, atol=0)


def test_source_only_with_supercm_or_ssl_keeps_the_joined_batch(pair, monkeypatch):
    """auto: SuperCM reads the target features, and SSL runs stay as they were."""
    t = Trainer(cfg(**{"method.name": "supervised", "method.options": {}, "cm.beta": 0.3}), None, dataset=pair)
    got, refs, _, _ = _bn_stats_after_one_step(t, monkeypatch)
    for k in got:
        torch.testing.assert_close(got[k], refs["joined"][k], rtol=0, atol=0)
    ssl = from_dict({**BASE, "data": {"name": "digits", "num_labeled": 50, "num_validation": 50, "augment": False},
                     "method": {"name": "supervised"}})
    t = Trainer(ssl, None)
    got, refs, _, _ = _bn_stats_after_one_step(t, monkeypatch)
    for k in got:
        torch.testing.assert_close(got[k], refs["joined"][k], rtol=0, atol=0)


def test_source_only_labeled_with_a_target_loss_is_refused_with_the_key(pair):
    t = Trainer(cfg(**{"method.name": "supervised", "method.options": {"forward": "labeled"},
                       "regularisers": [{"name": "mcc"}]}), None, dataset=pair)
    with pytest.raises(ConfigError, match=r"method.options.forward.*'mcc'"):
        t.train_step()


def test_dann_on_the_digit_protocol_sends_target_gradient_into_the_backbone(image_pair, monkeypatch):
    """Ganin's network and discriminator, λ over progress: the target half of L_DANN alone has a
    non-zero gradient into the backbone once λ_p > 0 (at p = 0 it is exactly zero)."""
    c = from_dict({**BASE, "data": {**BASE["data"], "num_validation": 20},
                   "model": {"backbone": "ganin_mnist", "options": {}},
                   "method": {"name": "dann", "options": {"hidden": 100, "depth": 1, "batch_norm": False,
                                                           "lambda_schedule": "progress"}},
                   "optim": {"name": "sgd", "lr": 0.01, "schedule": "progress"}})
    t = Trainer(c, None, dataset=image_pair)
    norms = []
    real = t.method.loss

    def spy(batch):
        loss = real(batch)
        disc, n = t.method.discriminator, batch.num_labeled
        from supercm.losses.grl import grad_reverse
        logits_t = disc(grad_reverse(batch.features[n:], t.method.lambda_at(batch)))
        bce_t = nn.functional.binary_cross_entropy_with_logits(logits_t, torch.zeros_like(logits_t))
        grads = torch.autograd.grad(bce_t, list(batch.model.backbone.parameters()), retain_graph=True)
        norms.append(sum(float(g.abs().sum()) for g in grads))
        return loss

    monkeypatch.setattr(t.method, "loss", spy)
    for _ in range(3):
        t.train_step()
    assert norms[0] == 0 and norms[1] > 0 and norms[2] > 0


# --------------------------------------------------------------------------- where L_CM is applied
@pytest.mark.parametrize("rows", ["all", "labeled"])
def test_supercm_rows_decides_which_features_its_loss_pulls(pair, monkeypatch, rows):
    """cm.rows (issue 17 §3's ablation): "all" (the paper) pulls every row of [source ; target] toward the
    centroids; "labeled" takes L_CM over the source rows alone, equal to the direct computation on them,
    and sends the target features no gradient."""
    from supercm.cm import cm_loss

    t = Trainer(cfg(**{"cm.beta": 0.3, "cm.rows": rows}), None, dataset=pair)
    term, seen = t.term("cm"), {}
    real = term.loss

    def spy(batch):
        loss = real(batch)
        head, n = batch.model.head, batch.num_labeled
        grad = torch.autograd.grad(loss, batch.output.features, retain_graph=True)[0]
        x = batch.features if rows == "all" else batch.features[:n]
        direct = cm_loss(x, batch.output.responsibilities[: x.shape[0]], head.centroids, head.alpha)  # γ: the encoder's
        seen.update(loss=loss.detach(), direct=direct.detach(), grad=grad, n=n)
        return loss

    monkeypatch.setattr(term, "loss", spy)
    t.train_step()
    torch.testing.assert_close(seen["loss"], seen["direct"])
    source_grad, target_grad = seen["grad"][: seen["n"]], seen["grad"][seen["n"]:]
    assert source_grad.abs().sum() > 0
    assert (target_grad.abs().sum() > 0) == (rows == "all")


def test_supercm_rows_is_checked_with_the_key():
    with pytest.raises(ConfigError, match=r"'cm.rows' must be 'all' or 'labeled', got 'target'"):
        from_dict({"cm": {"rows": "target"}})
