"""Issue 13 §2–3: mixed precision (train.precision) and a step that does not wait for the host.

The CM loss subtracts nearly equal large sums when features sit near their centroids, so it must
run in float32 under autocast; VAT's probe (ξ = 1e-3) is below bfloat16's resolution, so it runs
in float32 too. fp16 runs skip overflowing steps (the gradient scaler's job) instead of stopping,
and the divergence guard reads the device only on logged, evaluation and checkpoint steps.
"""

from __future__ import annotations

import math

import pytest
import torch

from supercm.cm import ClusteringModule, cm_loss, cm_loss_terms


def _near_centroids(n=256, d=128, k=10, noise=0.05, seed=0):
    """Features = their class centroid + small noise, and confident responsibilities: the case where
    L_CM = Σ γ‖x − μ‖² / (n·d) is small while ‖X‖² and Σ γ‖μ‖² are large."""
    g = torch.Generator().manual_seed(seed)
    mu = 3.0 * torch.randn(k, d, generator=g)
    y = torch.arange(n) % k
    x = mu[y] + noise * torch.randn(n, d, generator=g)
    logits = 8.0 * torch.nn.functional.one_hot(y, k).float() + torch.randn(n, k, generator=g)
    return x, logits.softmax(1), mu


def _old_autocast_loss(x, gamma, mu):
    """The loss as computed before issue 13: γμ and Σγ·‖μ‖² as matrix products under autocast
    (so in bfloat16), the rest in float32."""
    recon = gamma @ mu  # bfloat16 under autocast
    kmeans = (x * (x - 2.0 * recon.float())).sum() + (gamma.sum(0) @ (mu * mu).sum(1)).float()
    return kmeans / x.numel()


def test_cm_loss_under_bfloat16_autocast_is_the_float32_loss():
    x, gamma, mu = _near_centroids()
    reference = cm_loss(x.double(), gamma.double(), mu.double()).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = cm_loss(x, gamma, mu)
        terms = cm_loss_terms(x, gamma, mu)
        old = _old_autocast_loss(x, gamma, mu).item()
    assert loss.dtype == torch.float32
    assert abs(loss.item() - reference) / reference < 1e-4
    assert abs(terms.total.item() - reference) / reference < 1e-4
    # What this guards against: the old path was off by tens of percent (0.24 on this case).
    assert abs(old - reference) / reference > 0.05


def test_a_bfloat16_reconstruction_is_recomputed_not_reused():
    x, gamma, mu = _near_centroids()
    reference = cm_loss(x.double(), gamma.double(), mu.double()).item()
    recon_bf16 = (gamma @ mu).bfloat16()
    for fn in (cm_loss, lambda *a, **k: cm_loss_terms(*a, **k).total):
        loss = fn(x, gamma, mu, reconstruction=recon_bf16)
        assert abs(loss.item() - reference) / reference < 1e-4


def test_the_head_under_autocast_gives_float32_responsibilities_and_an_exact_loss():
    """Through ClusteringModule: the encoder runs in bfloat16 (its logits are bfloat16), γ and γμ
    are float32, and L_CM equals a float64 evaluation of the same features, γ and μ."""
    x, _, mu = _near_centroids()
    head = ClusteringModule(x.shape[1], mu.shape[0], check_inputs=False)
    with torch.no_grad():
        head.centroids.copy_(mu)
        head.encoder.weight.copy_(mu / mu.norm(dim=1, keepdim=True) ** 2 * 8)  # confident, near one-hot
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
        loss = head.loss(x, out)
    assert out.logits.dtype == torch.bfloat16
    assert out.responsibilities.dtype == out.reconstruction.dtype == torch.float32
    reference = cm_loss(x.double(), out.responsibilities.double(), mu.double()).item()
    assert abs(loss.item() - reference) / reference < 1e-4
    fp32 = head.loss(x, head(x)).item()  # the whole step in float32: only the encoder's rounding differs
    assert abs(loss.item() - fp32) / fp32 < 0.05


def test_the_head_in_float32_is_unchanged():
    """Outside autocast the head does what it always did (same dtypes, same numbers)."""
    torch.manual_seed(0)
    head = ClusteringModule(16, 4)
    x = torch.randn(32, 16)
    head.update_centroids(x, torch.arange(32) % 4)
    out = head(x)
    gamma = head.encoder(x).softmax(1)
    assert torch.equal(out.responsibilities, gamma)
    assert torch.equal(out.reconstruction, gamma @ head.centroids)
