"""The Clustering Module against its equations (SPEC §1–3)."""

from __future__ import annotations

import math

import pytest
import torch

from supercm import ClusteringModule, cm_loss, cm_loss_terms


def reference_terms(x, gamma, mu, alpha=1.0, eps=1e-8):
    """E1..E4 computed element by element, straight from SPEC §2 (float64, Python loops)."""
    x, gamma, mu = x.double(), gamma.double(), mu.double()
    n, d = x.shape
    k = gamma.shape[1]
    e1 = sum(((x[i] - sum(gamma[i, c] * mu[c] for c in range(k))) ** 2).sum() for i in range(n))
    e2 = sum(sum(gamma[i, c] * (1 - gamma[i, c]) for i in range(n)) * (mu[c] @ mu[c]) for c in range(k))
    gtg = gamma.T @ gamma
    e3 = -sum(gtg[a, b] * (mu[a] @ mu[b]) for a in range(k) for b in range(k) if a != b)
    alphas = alpha if isinstance(alpha, torch.Tensor) else torch.full((k,), float(alpha), dtype=torch.float64)
    e4 = sum((1 - alphas[c].double()) * torch.log(gamma[:, c].mean() + eps) for c in range(k))
    return e1 / (n * d), e2 / (n * d), e3 / (n * d), torch.as_tensor(e4, dtype=torch.float64)


def random_inputs(n, d, k, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    logits = torch.randn(n, k, generator=g, dtype=dtype) * 2
    mu = torch.randn(k, d, generator=g, dtype=dtype)
    return x, logits, mu


@pytest.mark.parametrize("n,d,k", [(1, 3, 2), (7, 5, 3), (12, 4, 10)])
@pytest.mark.parametrize("alpha", [1.0, 0.5, "vector"])
def test_loss_terms_equal_direct_reference(n, d, k, alpha):
    x, logits, mu = random_inputs(n, d, k)
    gamma = logits.softmax(1)
    if alpha == "vector":
        alpha = torch.linspace(0.2, 3.0, k)
    terms = cm_loss_terms(x, gamma, mu, alpha)
    ref = reference_terms(x, gamma, mu, alpha)
    for got, want in zip(terms, ref):
        torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cm_loss(x, gamma, mu, alpha), sum(ref).to(torch.float64), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [2, 10, 1000])
def test_soft_kmeans_identity(k):
    """E1 + E2 + E3 = Σ_i Σ_k γ_ik ‖x_i − μ_k‖² (SPEC §2), signs of E2 and E3 included."""
    n, d = 9, 6
    x, logits, mu = random_inputs(n, d, k, seed=k)
    gamma = logits.softmax(1)
    t = cm_loss_terms(x, gamma, mu)
    soft_kmeans = (gamma * torch.cdist(x, mu).pow(2)).sum() / (n * d)
    torch.testing.assert_close(t.e1 + t.e2 + t.e3, soft_kmeans, rtol=1e-9, atol=1e-12)
    assert t.e4 == 0
    # The signs are not interchangeable: flipping either breaks the identity.
    assert not torch.allclose(t.e1 - t.e2 + t.e3, soft_kmeans)
    assert not torch.allclose(t.e1 + t.e2 - t.e3, soft_kmeans)


def test_alpha_adds_exactly_e4():
    x, logits, mu = random_inputs(10, 4, 5)
    gamma = logits.softmax(1)
    base = cm_loss(x, gamma, mu, 1.0)
    for alpha in (0.3, 2.0, torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0])):
        a = alpha if isinstance(alpha, torch.Tensor) else torch.full((5,), alpha, dtype=torch.float64)
        e4 = ((1 - a.double()) * torch.log(gamma.mean(0) + 1e-8)).sum()
        torch.testing.assert_close(cm_loss(x, gamma, mu, alpha) - base, e4, rtol=1e-10, atol=1e-12)


def test_reconstruction_argument_changes_nothing():
    x, logits, mu = random_inputs(6, 4, 3)
    gamma = logits.softmax(1)
    torch.testing.assert_close(cm_loss(x, gamma, mu, reconstruction=gamma @ mu), cm_loss(x, gamma, mu))


def test_gradcheck_features_logits_centroids():
    x, logits, mu = random_inputs(5, 3, 4)
    alpha = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)

    def f(x, logits, mu):
        return cm_loss(x, logits.softmax(1), mu, alpha)

    inputs = tuple(t.clone().requires_grad_(True) for t in (x, logits, mu))
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_module_forward_matches_definition():
    head = ClusteringModule(6, 4, temperature=0.5).double()
    x = torch.randn(8, 6, dtype=torch.float64)
    head.update_centroids(x[:4], torch.tensor([0, 1, 2, 3]))
    out = head(x)
    logits = (x @ head.encoder.weight.T + head.encoder.bias) / 0.5
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.responsibilities, logits.softmax(1))
    torch.testing.assert_close(out.reconstruction, logits.softmax(1) @ head.centroids)
    torch.testing.assert_close(head.loss(x, out), cm_loss(x, out.responsibilities, head.centroids))


@pytest.mark.parametrize("rule", ["paper", "mean", "ema"])
def test_no_gradient_reaches_supervised_centroids(rule):
    head = ClusteringModule(5, 3, centroids=rule)
    assert all(p is not head.centroids for p in head.parameters())
    x = torch.randn(6, 5, requires_grad=True)
    head.update_centroids(x[:3], torch.tensor([0, 1, 2]))
    assert not head.centroids.requires_grad
    out = head(x)
    head.loss(x, out).backward()
    assert head.centroids.grad is None
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert head.encoder.weight.grad.abs().sum() > 0


def test_learned_centroids_are_a_parameter_and_get_gradient():
    head = ClusteringModule(5, 3, centroids="learned")
    assert any(p is head.centroids for p in head.parameters())
    before = head.centroids.detach().clone()
    head.update_centroids(torch.randn(3, 5), torch.tensor([0, 1, 2]))  # a no-op for this rule
    torch.testing.assert_close(head.centroids.detach(), before)
    x = torch.randn(6, 5)
    head.loss(x, head(x)).backward()
    assert head.centroids.grad is not None and head.centroids.grad.abs().sum() > 0


def test_unlabeled_cm_loss_has_gradient_wrt_trained_parameters():
    """The CM loss on unlabeled samples alone trains the backbone and the encoder."""
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh())
    head = ClusteringModule(8, 3)
    x_lab, y_lab, x_unl = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(5, 4)
    head.update_centroids(backbone(x_lab).detach(), y_lab)
    f_unl = backbone(x_unl)
    head.loss(f_unl, head(f_unl)).backward()
    for name, p in [*backbone.named_parameters(), *head.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------- centroid rules

BATCHES = [  # (labels,) of successive batches; class 3 is absent at first, class 0 absent later
    torch.tensor([0, 1, 1, 2]),
    torch.tensor([1, 2, 2, 2, 0]),
    torch.tensor([3, 1, 3]),
    torch.tensor([2, 3, 1, 1, 3, 3]),
]


def _batches(d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(len(y), d, generator=g, dtype=torch.float64), y) for y in BATCHES]


def _class_mean(x, y, c):
    return x[y == c].mean(0)


def test_paper_rule_by_hand():
    k, d = 4, 4
    head = ClusteringModule(d, k, centroids="paper").double()
    mu = torch.zeros(k, d, dtype=torch.float64)
    for tau, (x, y) in enumerate(_batches(d), start=1):
        head.update_centroids(x, y)
        for c in range(k):
            if (y == c).any():
                mu[c] = (tau - 1) / tau * mu[c] + _class_mean(x, y, c) / tau
        torch.testing.assert_close(head.centroids, mu)
    assert int(head.num_updates) == len(BATCHES)
    # Class 3 first appears at τ = 3: it starts at m/3, shrunk toward zero (SPEC §3).
    x3, y3 = _batches(d)[2]
    head2 = ClusteringModule(d, k, centroids="paper").double()
    for x, y in _batches(d)[:3]:
        head2.update_centroids(x, y)
    torch.testing.assert_close(head2.centroids[3], _class_mean(x3, y3, 3) / 3)


def test_mean_rule_is_exact_running_mean():
    k, d = 4, 4
    head = ClusteringModule(d, k, centroids="mean").double()
    seen_x, seen_y = [], []
    for x, y in _batches(d):
        head.update_centroids(x, y)
        seen_x.append(x)
        seen_y.append(y)
        xs, ys = torch.cat(seen_x), torch.cat(seen_y)
        for c in range(k):
            want = _class_mean(xs, ys, c) if (ys == c).any() else torch.zeros(d, dtype=torch.float64)
            torch.testing.assert_close(head.centroids[c], want)
    torch.testing.assert_close(head.class_counts, torch.bincount(torch.cat(seen_y), minlength=k))


def test_ema_rule_by_hand():
    k, d, m = 4, 4, 0.9
    head = ClusteringModule(d, k, centroids="ema", momentum=m).double()
    mu = torch.zeros(k, d, dtype=torch.float64)
    seen = [False] * k
    for x, y in _batches(d):
        head.update_centroids(x, y)
        for c in range(k):
            if (y == c).any():
                mu[c] = m * mu[c] + (1 - m) * _class_mean(x, y, c) if seen[c] else _class_mean(x, y, c)
                seen[c] = True
        torch.testing.assert_close(head.centroids, mu)


def test_reset_centroids():
    head = ClusteringModule(3, 2, centroids="mean")
    head.update_centroids(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    head.reset_centroids()
    assert head.centroids.abs().sum() == 0 and head.class_counts.sum() == 0 and head.num_updates == 0


def test_centroid_state_round_trips_through_state_dict():
    a = ClusteringModule(3, 2, centroids="mean")
    a.update_centroids(torch.randn(4, 3), torch.tensor([0, 1, 0, 0]))
    b = ClusteringModule(3, 2, centroids="mean")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3)
    a.update_centroids(x, torch.tensor([1, 1]))
    b.update_centroids(x, torch.tensor([1, 1]))
    torch.testing.assert_close(a.centroids, b.centroids)


# ----------------------------------------------------------------- dtypes, sizes, devices


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("k", [2, 1000])
def test_dtypes_and_sizes(dtype, k):
    d = 16
    head = ClusteringModule(d, k).to(dtype)
    x = torch.randn(33, d, dtype=dtype, requires_grad=True)
    y = torch.arange(33) % k
    head.update_centroids(x, y)
    out = head(x)
    assert out.logits.dtype == dtype and out.logits.shape == (33, k) and out.reconstruction.shape == (33, d)
    loss = head.loss(x, out)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad.float()).all()
    # Half precision agrees with a float64 evaluation of the same numbers.
    ref = cm_loss(x.detach().double(), out.responsibilities.detach().double(), head.centroids.double())
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    assert math.isclose(loss.item(), ref.item(), rel_tol=tol, abs_tol=tol)


def test_batch_of_one():
    head = ClusteringModule(4, 3)
    x = torch.randn(1, 4)
    head.update_centroids(x, torch.tensor([2]))
    assert torch.isfinite(head.loss(x, head(x)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    cpu = ClusteringModule(8, 5, centroids="mean")
    gpu = ClusteringModule(8, 5, centroids="mean").cuda()
    gpu.load_state_dict(cpu.state_dict())
    x, y = torch.randn(20, 8), torch.arange(20) % 5
    cpu.update_centroids(x, y)
    gpu.update_centroids(x.cuda(), y.cuda())
    torch.testing.assert_close(gpu.centroids.cpu(), cpu.centroids)
    torch.testing.assert_close(gpu.loss(x.cuda(), gpu(x.cuda())).cpu(), cpu.loss(x, cpu(x)), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    head = ClusteringModule(4, 3)
    with pytest.raises(ValueError, match="unknown centroid rule 'kmeans'"):
        ClusteringModule(4, 3, centroids="kmeans")
    with pytest.raises(ValueError, match="num_classes must be ≥ 2"):
        ClusteringModule(4, 1)
    with pytest.raises(ValueError, match="temperature"):
        ClusteringModule(4, 3, temperature=0)
    with pytest.raises(ValueError, match="momentum"):
        ClusteringModule(4, 3, centroids="ema", momentum=1.0)
    with pytest.raises(ValueError, match="must be 2-D"):
        head(torch.randn(2, 4, 1))
    with pytest.raises(ValueError, match="expected 4"):
        head(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        head.update_centroids(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        head.update_centroids(torch.randn(2, 4), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="3 labels for 2 feature rows"):
        head.update_centroids(torch.randn(2, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer class indices"):
        head.update_centroids(torch.randn(2, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        head.update_centroids(torch.tensor([[0.0, float("nan"), 0, 0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        cm_loss(torch.tensor([[float("inf"), 0.0]]), torch.ones(1, 2) / 2, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="centroids has 3 columns, expected 2"):
        cm_loss(torch.randn(4, 2), torch.ones(4, 2) / 2, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="responsibilities has 3 rows, expected 4"):
        cm_loss(torch.randn(4, 2), torch.ones(3, 2) / 2, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="empty"):
        cm_loss(torch.randn(0, 2), torch.ones(0, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"alpha must be a scalar or have shape \(2,\)"):
        cm_loss(torch.randn(4, 2), torch.ones(4, 2) / 2, torch.zeros(2, 2), torch.ones(3))


# ----------------------------------------------------------------- data parallel


def _ddp_worker(rank, world, init_file, out_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(world)]
    ys = [torch.tensor([0, 1, 1, 2, 0, 1]), torch.tensor([2, 2, 3, 1, 1, 2])]
    head = ClusteringModule(4, 4, centroids="paper").double()
    head.update_centroids(xs[rank], ys[rank])
    torch.save(head.centroids, f"{out_file}.{rank}")
    dist.destroy_process_group()


def test_distributed_update_equals_update_on_the_union(tmp_path):
    """Every rank ends with the centroids of the union of all ranks' labeled batches."""
    import torch.multiprocessing as mp

    world = 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path / "mu")), nprocs=world)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(world)]
    ys = [torch.tensor([0, 1, 1, 2, 0, 1]), torch.tensor([2, 2, 3, 1, 1, 2])]
    single = ClusteringModule(4, 4, centroids="paper").double()
    single.update_centroids(torch.cat(xs), torch.cat(ys))
    for r in range(world):
        torch.testing.assert_close(torch.load(f"{tmp_path / 'mu'}.{r}", weights_only=True), single.centroids)
