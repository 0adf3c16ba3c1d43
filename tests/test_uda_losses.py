"""The UDA losses (SPEC §6) against their mathematics.

* Gradient reversal R_λ is the identity forward and maps an upstream gradient g to −λ·g
  (checked by autograd against the plain identity, and by ``gradcheck`` on R_λ composed with
  a map whose Jacobian is known).
* λ(i) = 2/(1+e^{−i/1000}) − 1: 0 at 0, ≈0.462 at 1000, ≈0.987 at 5000, monotone, → 1.
* MCC and BNM equal reference computations written here independently (numpy, float64,
  explicit loops; BNM's singular values as √eig(AᵀA), not through an SVD).
* Every loss sends a non-zero gradient into an upstream linear "backbone"; DANN also into the
  discriminator, and the backbone's gradient through the reversal is exactly −λ times the
  gradient of the same loss without it while the discriminator's is unchanged.
* All on the CPU in float32 and float64.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from supercm.losses import (
    BNM_NORMALISATIONS,
    DomainDiscriminator,
    GradientReversal,
    bnm_loss,
    dann_lambda,
    dann_loss,
    grad_reverse,
    mcc_loss,
)

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.float64: {"rtol": 1e-10, "atol": 1e-12}}


# --------------------------------------------------------------------------- gradient reversal


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 2.5])
def test_reversal_is_identity_forward_and_scales_the_gradient_by_minus_lambda(dtype, lam):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g, dtype=dtype, requires_grad=True)
    upstream = torch.randn(5, 7, generator=g, dtype=dtype)
    y = grad_reverse(x, lam)
    assert y.dtype == dtype and torch.equal(y, x)
    (y * upstream).sum().backward()  # dL/dy = upstream
    torch.testing.assert_close(x.grad, -lam * upstream, **TOL[dtype])
    # The module form does the same.
    x.grad = None
    (GradientReversal(lam)(x) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, -lam * upstream, **TOL[dtype])


def test_reversal_gradcheck_against_the_reversed_jacobian():
    # f(x) = W R_λ(x) has forward W x, and the analytic backward of R_λ is −λ Wᵀ g. gradcheck
    # compares the backward with finite differences of the forward, so it must *fail*
    # for λ ≠ −1 and pass for λ = −1 (where R_λ is the true identity gradient).
    w = torch.randn(3, 4, dtype=torch.float64)
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: w @ grad_reverse(v, -1.0), (x,))
    assert not torch.autograd.gradcheck(lambda v: w @ grad_reverse(v, 0.5), (x,), raise_exception=False)


def test_dann_lambda_schedule():
    assert dann_lambda(0) == 0.0
    assert dann_lambda(1000) == pytest.approx(2 / (1 + math.exp(-1)) - 1) == pytest.approx(0.4621, abs=1e-4)
    assert dann_lambda(5000) == pytest.approx(2 / (1 + math.exp(-5)) - 1) == pytest.approx(0.9866, abs=1e-4)
    values = [dann_lambda(i) for i in range(0, 20001, 500)]
    assert all(a < b for a, b in itertools.pairwise(values))
    assert dann_lambda(10**9) == 1.0  # no overflow
    assert dann_lambda(500, scale=500) == dann_lambda(1000)
    with pytest.raises(ValueError):
        dann_lambda(1, scale=0)


# --------------------------------------------------------------------------- references


def mcc_reference(logits: np.ndarray, temperature: float) -> float:
    """MCC written out with loops in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    b, k = z.shape
    p = np.zeros((b, k))
    for i in range(b):
        e = np.exp(z[i] - z[i].max())
        p[i] = e / e.sum()
    h = np.array([-sum(p[i, c] * math.log(p[i, c]) for c in range(k)) for i in range(b)])
    w = 1.0 + np.exp(-h)
    w = w * b / w.sum()
    c = np.zeros((k, k))
    for i in range(b):
        for m in range(k):
            for n in range(k):
                c[m, n] += w[i] * p[i, m] * p[i, n]
    for m in range(k):
        c[m] /= c[m].sum()
    off_diagonal = sum(c[m, n] for m in range(k) for n in range(k) if m != n)
    return off_diagonal / k


def bnm_reference(logits: np.ndarray, normalisation: str) -> float:
    """−(nuclear norm of softmax) normalised; singular values as √eig(AᵀA) or √eig(AAᵀ), the smaller."""
    z = np.asarray(logits, dtype=np.float64)
    a = np.exp(z - z.max(axis=1, keepdims=True))
    a /= a.sum(axis=1, keepdims=True)
    b, k = a.shape
    gram = a.T @ a if k <= b else a @ a.T  # r × r with r = min(B, K)
    sigma = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))
    return -sigma.mean() if normalisation == "mean" else -sigma.sum() / b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 10), (7, 4), (3, 5)])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_mcc_equals_reference(dtype, shape, temperature):
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    got = mcc_loss(logits.to(dtype), temperature)
    assert got.dtype == dtype and got.shape == ()
    assert got.item() == pytest.approx(
        mcc_reference(logits.numpy(), temperature), rel=1e-5 if dtype == torch.float32 else 1e-11
    )


def test_mcc_limits():
    # One confident class per sample → no confusion; identical uniform predictions → 1 − 1/K.
    assert mcc_loss(torch.eye(6) * 200.0).item() == pytest.approx(0.0, abs=1e-12)
    assert mcc_loss(torch.zeros(8, 6, dtype=torch.float64)).item() == pytest.approx(1 - 1 / 6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(32, 10), (6, 10), (10, 10)])
@pytest.mark.parametrize("normalisation", BNM_NORMALISATIONS)
def test_bnm_equals_reference(dtype, shape, normalisation):
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    got = bnm_loss(logits.to(dtype), normalisation=normalisation)
    assert got.dtype == dtype and got.shape == ()
    ref = bnm_reference(logits.numpy(), normalisation)
    assert got.item() == pytest.approx(ref, rel=1e-5 if dtype == torch.float32 else 1e-10)


def test_bnm_default_is_the_authors_mean_and_the_two_differ_by_r_over_b():
    logits = torch.randn(32, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert bnm_loss(logits).item() == bnm_loss(logits, normalisation="mean").item()
    assert bnm_loss(logits, "batch").item() == pytest.approx(bnm_loss(logits, "mean").item() * 10 / 32)
    with pytest.raises(ValueError, match="normalisation"):
        bnm_loss(logits, normalisation="frobenius")


# --------------------------------------------------------------------------- gradients into a backbone


def _backbone(dtype, d_in=12, d_out=10):
    torch.manual_seed(0)
    return torch.nn.Linear(d_in, d_out).to(dtype)


def _nonzero_finite(grad):
    return grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "loss_fn", [mcc_loss, bnm_loss, lambda z: bnm_loss(z, "batch")], ids=["mcc", "bnm", "bnm-batch"]
)
def test_target_losses_send_gradient_into_the_backbone(dtype, loss_fn):
    backbone = _backbone(dtype)
    x = torch.randn(24, 12, generator=torch.Generator().manual_seed(4), dtype=dtype)
    loss = loss_fn(backbone(x))
    loss.backward()
    assert _nonzero_finite(backbone.weight.grad) and _nonzero_finite(backbone.bias.grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lam", [0.25, 1.0])
def test_dann_gradient_reverses_into_backbone_only(dtype, lam):
    g = torch.Generator().manual_seed(5)
    x_s = torch.randn(8, 12, generator=g, dtype=dtype)
    x_t = torch.randn(8, 12, generator=g, dtype=dtype) + 0.5

    def grads(reverse: bool):
        backbone = _backbone(dtype, 12, 16)
        torch.manual_seed(1)
        disc = DomainDiscriminator(16, hidden=32).to(dtype)
        f_s, f_t = backbone(x_s), backbone(x_t)
        if reverse:
            loss = dann_loss(disc, f_s, f_t, lam)
        else:  # the same ½(BCE_s + BCE_t), written without the reversal
            logits = disc(torch.cat([f_s, f_t]))
            loss = 0.5 * (
                F.binary_cross_entropy_with_logits(logits[:8], torch.ones(8, dtype=dtype))
                + F.binary_cross_entropy_with_logits(logits[8:], torch.zeros(8, dtype=dtype))
            )
        loss.backward()
        return loss.detach(), backbone.weight.grad, [p.grad for p in disc.parameters()]

    loss_r, gb_r, gd_r = grads(True)
    loss_p, gb_p, gd_p = grads(False)
    torch.testing.assert_close(loss_r, loss_p, **TOL[dtype])
    assert _nonzero_finite(gb_r) and all(_nonzero_finite(gd) for gd in gd_r)
    torch.testing.assert_close(gb_r, -lam * gb_p, **TOL[dtype])  # extractor: reversed and scaled
    for a, b in zip(gd_r, gd_p):  # discriminator: the ordinary gradient
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_dann_loss_value_and_shapes():
    disc = DomainDiscriminator(4, hidden=8)
    assert disc(torch.randn(3, 4)).shape == (3,)
    # A discriminator that outputs 0 everywhere has BCE = log 2 on both domains.
    for p in disc.parameters():
        torch.nn.init.zeros_(p)
    assert dann_loss(disc, torch.randn(3, 4), torch.randn(5, 4)).item() == pytest.approx(math.log(2))
