"""FixMatch, FreeMatch, their strong augmentation and SuperCM's pseudo-labeled centroids (issue 20).

Every check of a method runs through the trainer's own step (``Trainer.train_step``): the term's
functions are wrapped to record what the step computed, and the record is checked against a
direct computation from the step's own tensors.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from process_group import gloo_group, spawn
from torchvision.transforms.v2 import functional as TF

from supercm.config import ConfigError, from_dict
from supercm.data import load_dataset
from supercm.data.randaugment import FIXMATCH_OPS, RandAugment, _apply
from supercm.methods import check_terms
from supercm.methods import fixmatch as fixmatch_module
from supercm.methods import freematch as freematch_module
from supercm.methods.fixmatch import FixMatch
from supercm.methods.supercm import SuperCM
from supercm.train import Trainer

CONFIG = {
    "data": {"num_labeled": 50, "num_validation": 100, "augmentation": {"crop_pad": 1}},
    "model": {"backbone": "cnn", "options": {"width": 8, "convs_per_block": 1}},
    "cm": {"beta": 0.3},
    "method": {"name": "fixmatch", "delta": 1.0},
    "train": {"iterations": 8, "batch_labeled": 10, "batch_unlabeled": 30, "eval_every": 4, "checkpoint_every": 4,
              "progress": False, "tensorboard": False, "ema_decay": 0.0},
}


def config(**dotted):
    return from_dict(CONFIG).replace(**dotted)


@pytest.fixture(scope="module")
def images():
    return load_dataset("digits", image=True)  # (N, 1, 8, 8) in [−1, 1]


def record(monkeypatch, owner, name, log):
    """Wrap ``owner.name`` so each call appends (args, kwargs, result) to ``log``; returns ``log``."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        log.append((args, kwargs, out))
        return out

    monkeypatch.setattr(owner, name, wrapper)
    return log


# --------------------------------------------------------------------------- RandAugment


def _op_batch(name, n=6, c=3, h=20, w=24, seed=0):  # ≥ 256 pixels: PIL's equalize leaves smaller images alone
    g = torch.Generator().manual_seed(seed)
    x8 = (torch.randint(0, 256, (n, c, h, w), generator=g) ** 2 // 400 + 30).to(torch.uint8)  # skewed, in [30, 192]
    op = torch.full((n,), FIXMATCH_OPS.index(name))
    u = torch.linspace(0.02, 0.97, n)
    return x8, x8.float() / 255, op, u


@pytest.mark.parametrize("name,reference", [
    ("brightness", lambda x, u: TF.adjust_brightness(x, 0.05 + 0.9 * u)),
    ("color", lambda x, u: TF.adjust_saturation(x, 0.05 + 0.9 * u)),
    ("contrast", lambda x, u: TF.adjust_contrast(x, 0.05 + 0.9 * u)),
    ("sharpness", lambda x, u: TF.adjust_sharpness(x, 0.05 + 0.9 * u)),
    ("solarize", lambda x, u: TF.solarize(x, 256 * u / 255)),
    ("autocontrast", lambda x, u: TF.autocontrast(x)),
    ("posterize", lambda x, u: TF.posterize((x * 255).round().to(torch.uint8), int(4 + 4 * u)).float() / 255),
    ("equalize", lambda x, u: TF.equalize((x * 255).round().to(torch.uint8)).float() / 255),
    ("identity", lambda x, u: x),
])
def test_each_operation_with_its_own_magnitude_per_image_is_torchvisions(name, reference):
    """One batched call, a different magnitude per image, equals torchvision's op image by image."""
    _, x, op, u = _op_batch(name)
    out = _apply(x, op, u)
    for i in range(x.shape[0]):
        torch.testing.assert_close(out[i], reference(x[i], float(u[i])), atol=2e-6, rtol=1e-5)
    if name != "identity":
        assert not torch.equal(out, x)


def test_translation_shifts_by_the_drawn_fraction_and_fills_black():
    _, x, op, _ = _op_batch("translate_x", n=2, w=10)
    out = _apply(x, op, torch.tensor([1.0, 0.0]))  # v = +1 and −1: 0.3 × 10 = 3 pixels either way
    torch.testing.assert_close(out[0, ..., :7], x[0, ..., 3:])
    assert (out[0, ..., 7:] == 0).all()
    torch.testing.assert_close(out[1, ..., 3:], x[1, ..., :7])
    assert (out[1, ..., :3] == 0).all()


@pytest.mark.parametrize("dtype,channels,size", [(torch.uint8, 3, (13, 9)), (torch.float32, 1, (28, 28)),
                                                 (torch.float32, 3, (8, 8))])
def test_randaugment_rows_are_the_whole_batchs_draws(dtype, channels, size):
    """Two halves drawn with rows/of equal the whole batch drawn at once, bit for bit, and leave the
    generator where the whole batch does (what resume and torchrun rely on); the same seed gives
    the same views, another seed others; every image is changed (Cutout at least, almost always)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randint(0, 256, (12, channels, *size), generator=g).to(torch.uint8) if dtype == torch.uint8
         else torch.rand(12, channels, *size, generator=g) * 2 - 1)
    aug = RandAugment(num_ops=2, cutout=0.5)
    kw = {} if dtype == torch.uint8 else {"value_range": (-1.0, 1.0)}
    whole_g = torch.Generator().manual_seed(7)
    whole = aug(x, whole_g, **kw)
    half_g = [torch.Generator().manual_seed(7) for _ in range(2)]
    halves = [aug(x[:6], half_g[0], slice(0, 6), 12, **kw), aug(x[6:], half_g[1], slice(6, 12), 12, **kw)]
    assert torch.equal(torch.cat(halves), whole)
    assert all(torch.equal(h.get_state(), whole_g.get_state()) for h in half_g)
    assert torch.equal(aug(x, torch.Generator().manual_seed(7), **kw), whole)
    assert not torch.equal(aug(x, torch.Generator().manual_seed(8), **kw), whole)
    assert whole.dtype == torch.float32 and whole.shape == x.shape
    lo, hi = (0.0, 1.0) if dtype == torch.uint8 else (-1.0, 1.0)
    assert whole.min() >= lo and whole.max() <= hi


# --------------------------------------------------------------------------- FixMatch through the step


def test_fixmatch_mask_labels_and_loss_through_the_trainers_step(images, monkeypatch):
    """The mask is 1[max softmax(weak) ≥ τ], the labels its argmax, the weak view the training
    pass's unlabeled rows; the strong view differs from it; the loss is the masked CE of the strong
    pass. τ = 0.165 so that some rows of an untrained model pass and some do not."""
    t = Trainer(config(**{"method.options": {"threshold": 0.165}, "cm.beta": 0.0}), None, dataset=images)
    labels_log = record(monkeypatch, FixMatch, "pseudo_labels", [])
    strong_log = record(monkeypatch, FixMatch, "strong_view", [])
    logits_log = record(monkeypatch, FixMatch, "strong_logits", [])
    loss_log = record(monkeypatch, FixMatch, "loss", [])
    seen_mask = []
    for _ in range(3):
        t.train_step()
        (_, batch), _, (labels, mask) = labels_log[-1]
        p = batch.logits_unlabeled.detach().softmax(1)
        assert torch.equal(mask, (p.max(1).values >= 0.165).float())
        assert torch.equal(labels, p.argmax(1))
        strong = strong_log[-1][2]
        assert strong.shape == batch.x_unlabeled.shape
        assert (strong - batch.x_unlabeled).flatten(1).abs().amax(1).min() > 0  # every row differs
        want = (F.cross_entropy(logits_log[-1][2], labels, reduction="none") * mask).mean()
        torch.testing.assert_close(loss_log[-1][2], want)
        seen_mask.append(mask)
    mask = torch.cat(seen_mask)
    assert 0 < mask.sum() < mask.numel()


@pytest.mark.parametrize("method,function", [("fixmatch", "masked_cross_entropy"), ("freematch", "fairness_loss")])
def test_each_new_loss_reaches_the_backbone_through_the_trainers_step(images, monkeypatch, method, function):
    """FixMatch's strong-view CE and FreeMatch's fairness term, each as computed inside the step,
    have a non-zero gradient in the backbone's first convolution."""
    t = Trainer(config(**{"method.name": method, "method.options": {"threshold": 0.0} if method == "fixmatch"
                          else {"fairness_weight": 0.01}}), None, dataset=images)
    first = t.model.backbone.features[0].weight if hasattr(t.model.backbone, "features") else \
        next(p for p in t.model.backbone.parameters() if p.dim() == 4)
    norms = []
    owner = fixmatch_module if function == "masked_cross_entropy" else freematch_module
    original = getattr(owner, function)

    def wrapper(*args, **kwargs):
        value = original(*args, **kwargs)
        (g,) = torch.autograd.grad(value, first, retain_graph=True, allow_unused=True)
        norms.append(0.0 if g is None else float(g.norm()))
        return value

    monkeypatch.setattr(owner, function, wrapper)
    for _ in range(2):
        t.train_step()
    assert len(norms) == 2 and min(norms) > 0, norms


# --------------------------------------------------------------------------- FreeMatch through the step


def test_freematch_state_thresholds_and_mask_equal_a_direct_computation(images, monkeypatch):
    m = 0.2  # a short memory, so that the thresholds of an untrained model separate rows
    t = Trainer(config(**{"method.name": "freematch", "method.options": {"ema": m}}), None, dataset=images)
    term = t.method
    k = 10
    assert torch.equal(term.p_model, torch.full((k,), 0.1)) and float(term.time_p) == pytest.approx(0.1)
    labels_log = record(monkeypatch, type(term), "pseudo_labels", [])
    passed = []
    for _ in range(4):
        before = [term.time_p.clone(), term.p_model.clone(), term.label_hist.clone()]
        t.train_step()
        (_, batch), _, (labels, mask) = labels_log[-1]
        p = batch.logits_unlabeled.detach().float().softmax(1)
        conf, pred = p.max(1)
        time_p = m * before[0] + (1 - m) * conf.mean()
        p_model = m * before[1] + (1 - m) * p.mean(0)
        hist = torch.bincount(pred, minlength=k).float()
        label_hist = m * before[2] + (1 - m) * hist / hist.sum()
        torch.testing.assert_close(term.time_p, time_p)
        torch.testing.assert_close(term.p_model, p_model)
        torch.testing.assert_close(term.label_hist, label_hist)
        tau_c = p_model / p_model.max() * time_p
        assert torch.equal(labels, pred)
        assert torch.equal(mask, (conf >= tau_c[pred]).float())
        passed.append(mask)
    mask = torch.cat(passed)
    assert 0 < mask.sum() < mask.numel()  # the thresholds separate rows


def test_fairness_loss_is_the_papers_on_the_confident_rows():
    """−H(SumNorm(p̃/h), SumNorm(p̄/h̄)) over the masked rows, written directly (row selection)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 5, generator=g) * 2
    mask = (torch.rand(20, generator=g) < 0.6).float()
    p_model = torch.softmax(torch.randn(5, generator=g), 0)
    label_hist = torch.tensor([0.3, 0.0, 0.2, 0.25, 0.25])
    got = freematch_module.fairness_loss(logits, mask, p_model, label_hist)
    sel = logits[mask.bool()].softmax(1)
    h = torch.bincount(sel.argmax(1), minlength=5).float() / sel.shape[0]
    a = torch.where(label_hist > 0, p_model / label_hist, torch.tensor(0.0))
    b = torch.where(h > 0, sel.mean(0) / h, torch.tensor(0.0))
    want = (a / a.sum() * torch.log(b / b.sum() + 1e-12)).sum()
    torch.testing.assert_close(got, want)
    assert float(freematch_module.fairness_loss(logits, torch.zeros(20), p_model, label_hist)) == 0.0


# --------------------------------------------------------------------------- SuperCM's pseudo-labeled centroids


@pytest.mark.parametrize("method", ["freematch", "fixmatch"])
def test_labeled_plus_pseudo_centroids_equal_a_direct_computation(images, monkeypatch, method):
    """``m_k`` = the weighted mean of the labeled features of class k and the unlabeled ones
    pseudo-labeled k with their mask as weight, folded in by the paper's rule (τ = update count)."""
    options = {"threshold": 0.165} if method == "fixmatch" else {"ema": 0.2}
    t = Trainer(config(**{"method.name": method, "method.options": options, "cm.centroid_source": "labeled+pseudo"}),
                None, dataset=images)
    head = t.model.head
    loss_log = record(monkeypatch, SuperCM, "loss", [])
    masks = []
    for _ in range(3):
        mu, tau = head.centroids.clone(), int(head.num_updates) + 1
        t.train_step()
        (_, batch), _, _ = loss_log[-1]
        labels, weights = batch.pseudo_labels
        feats = batch.features.detach()
        y = torch.cat([batch.y_labeled, labels])
        w = torch.cat([torch.ones(batch.num_labeled), weights])
        want = mu.clone()
        for c in range(head.num_classes):
            total = w[y == c].sum()
            if total > 0:
                m = (w[y == c, None] * feats[y == c]).sum(0) / total
                want[c] = (tau - 1) / tau * mu[c] + m / tau
        torch.testing.assert_close(head.centroids, want)
        masks.append(weights)
    mask = torch.cat(masks)
    assert 0 < mask.sum() < mask.numel()  # some unlabeled rows count, some do not


def test_centroid_source_is_checked(images):
    with pytest.raises(ConfigError, match="cm.centroid_source"):
        config(**{"cm.centroid_source": "pseudo"})
    with pytest.raises(ConfigError, match="pseudo-labels"):  # the terms' registry: checked above the config layer
        check_terms(config(**{"cm.centroid_source": "labeled+pseudo", "method.name": "vat"}))
    with pytest.raises(ConfigError, match="reuse"):
        config(**{"cm.centroid_source": "labeled+pseudo", "cm.features": "eval_pass"})
    with pytest.raises(ValueError, match="needs images"):
        Trainer(config(**{"data.augmentation": None, "model.backbone": "mlp", "model.options": {}}), None,
                dataset=load_dataset("digits")).train_step()


# --------------------------------------------------------------------------- resume and data parallel


def _resume(images, tmp_path, tamper=None):
    import yaml

    cfg = config(**{"method.name": "freematch", "cm.centroid_source": "labeled+pseudo"})
    full = Trainer(cfg, tmp_path / "full", dataset=images)
    full.fit()
    half = Trainer(cfg.replace(**{"train.iterations": 4}), tmp_path / "half", dataset=images)
    half.fit()
    if tamper is not None:
        state = torch.load(tmp_path / "half" / "checkpoint.pt", weights_only=True)
        tamper(state)
        torch.save(state, tmp_path / "half" / "checkpoint.pt")
    (tmp_path / "half" / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    resumed = Trainer.resume(tmp_path / "half", dataset=images)
    resumed.fit()
    return full, resumed


def test_freematch_with_pseudo_centroids_resumes_exactly(images, tmp_path):
    """Stopped at a checkpoint and resumed: the same metrics, weights, centroids and FreeMatch EMAs,
    bit for bit (the strong views are drawn from the checkpointed generator)."""
    full, resumed = _resume(images, tmp_path)
    assert (tmp_path / "full" / "metrics.jsonl").read_text() == (tmp_path / "half" / "metrics.jsonl").read_text()
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for name in ("time_p", "p_model", "label_hist"):
        assert torch.equal(getattr(full.method, name), getattr(resumed.method, name)), name


@pytest.mark.parametrize("lost", ["ema_state", "aug_generator"])
def test_the_freematch_resume_test_fails_when_its_state_is_lost(images, tmp_path, lost):
    def tamper(state):
        if lost == "ema_state":
            # The terms' states in summation order (SuperCM's holds nothing; FreeMatch's holds its EMAs).
            state["terms"] = [{k: torch.full_like(v, 0.1) for k, v in ts.items()} for ts in state["terms"]]
        else:
            state["aug_generator"] = torch.Generator().manual_seed(123).get_state()

    _resume(images, tmp_path, tamper)
    assert (tmp_path / "full" / "metrics.jsonl").read_text() != (tmp_path / "half" / "metrics.jsonl").read_text()


DDP = {"method.name": "freematch", "cm.centroid_source": "labeled+pseudo", "train.iterations": 6,
       "train.batch_unlabeled": 32, "train.sync_batchnorm": True, "optim.name": "sgd", "optim.lr": 0.05}


def _ddp_worker(rank, world, init_file, run_dir, out_dir):
    with gloo_group(rank, world, init_file) as hold:
        t = hold(Trainer(config(**DDP), run_dir if rank == 0 else None, dataset=load_dataset("digits", image=True)))
        t.fit()
        torch.save({k: v.clone() for k, v in t.method.state_dict().items()} | {"centroids": t.model.head.centroids},
                   os.path.join(out_dir, f"rank{rank}.pt"))


def test_two_processes_train_freematch_like_one_process(tmp_path, images):
    """2 gloo processes (half the global batch each) and 1: the same logged losses (FixMatch CE,
    fairness, CM with pseudo-labeled centroids), the same FreeMatch EMAs and centroids on every rank:
    the strong views, the EMAs and the fairness term all see the global batch."""
    spawn(_ddp_worker, 2, str(tmp_path / "store"), str(tmp_path / "ddp"), str(tmp_path))
    one = Trainer(config(**DDP), tmp_path / "one", dataset=images)
    one.fit()
    ddp = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert len(ddp) == len(single) == 6
    for a, b in zip(ddp, single):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["iteration"], key)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, value in one.method.state_dict().items():
        for r in ranks:
            torch.testing.assert_close(r[name], value, rtol=1e-5, atol=1e-7)
    assert torch.equal(ranks[0]["centroids"], ranks[1]["centroids"])
    torch.testing.assert_close(ranks[0]["centroids"], one.model.head.centroids, rtol=1e-5, atol=1e-6)


def test_pseudo_label_gives_the_authors_pseudo_labeled_centroid_rows(images, monkeypatch):
    """Pseudo-Label (the authors' form) pseudo-labels the rows with max p > τ; with
    cm.centroid_source=labeled+pseudo those are what SuperCM's centroids take in (the authors' variant)."""
    from supercm.methods.pseudo_label import PseudoLabel

    t = Trainer(config(**{"method.name": "pseudo_label", "method.options": {"threshold": 0.165},
                          "cm.centroid_source": "labeled+pseudo", "data.augmentation": None}), None, dataset=images)
    labels_log = record(monkeypatch, PseudoLabel, "pseudo_labels", [])
    loss_log = record(monkeypatch, SuperCM, "loss", [])
    t.train_step()
    (_, batch), _, (labels, weights) = labels_log[-1]
    p = batch.logits_unlabeled.detach().softmax(1)
    assert torch.equal(labels, p.argmax(1)) and torch.equal(weights, (p.max(1).values > 0.165).float())
    assert loss_log[-1][0][1].pseudo_labels is labels_log[-1][2]
    assert 0 < weights.sum() < weights.numel()
