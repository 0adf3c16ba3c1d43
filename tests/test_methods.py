"""Base methods: each unlabeled loss trains the student; teachers get no gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from supercm import ClusteringModule
from supercm.config import from_dict
from supercm.data import load_dataset
from supercm.methods import METHODS, StepInputs, build_method
from supercm.methods.pseudo_label import PseudoLabel
from supercm.models import CMClassifier, build_backbone
from supercm.train import Trainer

UNLABELED_METHODS = ["pseudo_label", "vat", "pi_model", "mean_teacher"]


def make_step(method, seed=0, confident=False):
    torch.manual_seed(seed)
    model = CMClassifier(build_backbone("mlp", (6,), width=16, depth=1, dropout=0.2), ClusteringModule(16, 3))
    method.setup(model)
    model.train()
    x_l, y_l = torch.randn(6, 6), torch.tensor([0, 1, 2, 0, 1, 2])
    x_u_raw = torch.randn(8, 6)
    if confident:  # make pseudo-labels pass the threshold
        with torch.no_grad():
            model.head.encoder.weight.mul_(50)
    noise = lambda x: x + 0.1 * torch.randn_like(x)  # noqa: E731  (a stochastic augmentation)
    x_u = noise(x_u_raw)
    out = model(torch.cat([x_l, x_u]))
    return model, StepInputs(model, x_l, y_l, x_u_raw, x_u, out.logits[6:], noise, 0)


@pytest.mark.parametrize("name", UNLABELED_METHODS)
def test_unlabeled_loss_has_nonzero_gradient_wrt_student(name):
    method = build_method(name, {"threshold": 0.5} if name == "pseudo_label" else {})
    model, step = make_step(method, confident=(name == "pseudo_label"))
    loss = method.unlabeled_loss(step)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    assert grads["backbone.net.1.weight"].abs().sum() > 0  # reaches the backbone, not only the head


def test_mean_teacher_teacher_gets_no_gradient_and_tracks_ema():
    method = build_method("mean_teacher", {"decay": 0.9})
    model, step = make_step(method)
    method.unlabeled_loss(step).backward()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    before = [p.detach().clone() for p in method.teacher.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    method.after_step(model)
    for t, b, s in zip(method.teacher.parameters(), before, model.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)


def test_pseudo_label_matches_definition():
    method = PseudoLabel(threshold=0.6)
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.0, 0.0, 5.0]], requires_grad=True)
    step = StepInputs(None, None, None, None, None, logits, None, 0)
    p = logits.detach().softmax(1)
    mask = (p.max(1).values >= 0.6).float()
    want = (F.cross_entropy(logits.detach(), p.argmax(1), reduction="none") * mask).mean()
    torch.testing.assert_close(method.unlabeled_loss(step), want)
    assert mask.tolist() == [1.0, 0.0, 1.0]


def test_extra_passes_leave_batchnorm_statistics_alone():
    for name in ("vat", "pi_model"):
        method = build_method(name)
        model, step = make_step(method)
        bn = model.backbone.net[2]
        before = bn.running_mean.clone(), int(bn.num_batches_tracked)
        method.unlabeled_loss(step)
        assert torch.equal(bn.running_mean, before[0]) and int(bn.num_batches_tracked) == before[1], name
        assert bn.track_running_stats


def test_unknown_method_and_option_errors():
    with pytest.raises(ValueError, match="unknown method 'fixmatch'"):
        build_method("fixmatch")
    with pytest.raises(ValueError, match="unknown option method.options.treshold for method 'pseudo_label'"):
        build_method("pseudo_label", {"treshold": 0.9})


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_each_method_with_and_without_supercm_trains(name, beta, digits):
    cfg = from_dict({
        "data": {"num_labeled": 50, "num_validation": 100},
        "model": {"options": {"width": 16, "depth": 1}},
        "cm": {"beta": beta},
        "method": {"name": name, "delta": 0.5, "rampup": 5},
        "train": {"iterations": 8, "batch_labeled": 10, "batch_unlabeled": 10, "eval_every": 4,
                  "progress": False, "tensorboard": False},
    })
    t = Trainer(cfg, None, dataset=digits)
    logs = [t.train_step() for _ in range(8)]
    assert all(torch.isfinite(torch.as_tensor(float(v))) for l in logs for v in l.values())
    if name != "supervised":
        assert "base" in logs[-1]
    assert ("cm" in logs[-1]) == (beta > 0)


def test_vat_power_iteration_finds_the_float64_direction():
    """The default ξ must give the adversarial direction, not float32 rounding noise (ξ = 1e-6 does)."""
    from supercm.methods.vat import VAT, _kl, _unit

    torch.manual_seed(0)
    model = CMClassifier(build_backbone("cnn", (3, 12, 12), width=8, convs_per_block=1), ClusteringModule(32, 5)).train()
    x = torch.randn(16, 3, 12, 12)
    d0 = _unit(torch.randn_like(x))

    def direction(xi, dtype):
        m, xx = model.to(dtype), x.to(dtype)
        p = m(xx).logits.detach().softmax(1)
        r = (xi * d0.to(dtype)).requires_grad_(True)
        (g,) = torch.autograd.grad(_kl(p, m(xx + r).logits), r)
        return _unit(g.double()).flatten(1)

    reference = direction(1e-6, torch.float64)
    cosine = (direction(VAT.Options().xi, torch.float32) * reference).sum(1)
    assert cosine.median() > 0.95
    noisy = (direction(1e-6, torch.float32) * reference).sum(1)
    assert noisy.median() < 0.5  # why the paper's 1e-6 is not the default
