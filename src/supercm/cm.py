"""The Clustering Module (CM): head, loss and centroid rules of SuperCM.

This file depends on PyTorch only; copy it into any project to use SuperCM
without the rest of the package.

Notation (n samples, d feature dimensions, K classes = clusters)::

    x      (n, d)   features from the backbone
    logits (n, K)   (W x + b) / T            -- the CM encoder; it *is* the classifier
    γ      (n, K)   softmax(logits)          -- responsibilities (soft assignments)
    μ      (K, d)   centroids
    x̃      (n, d)   γ μ                      -- the CM decoder's reconstruction

    E1 =  Σ_i ‖x_i − x̃_i‖²                              reconstruction
    E2 = +Σ_k (Σ_i γ_ik (1 − γ_ik)) ‖μ_k‖²               sparsity
    E3 = −Σ_{k≠l} (ΓᵀΓ)_kl μ_kᵀ μ_l                      cluster merging
    E4 =  Σ_k (1 − α_k) log((1/n) Σ_i γ_ik + ε)          Dirichlet prior
    L_CM = (E1 + E2 + E3) / (n·d) + E4

With α = 1 (SuperCM), E1 + E2 + E3 = Σ_i Σ_k γ_ik ‖x_i − μ_k‖²: a soft k-means
objective whose assignments come from the encoder.

Example::

    >>> import torch
    >>> from supercm import ClusteringModule, cm_loss
    >>> head = ClusteringModule(in_features=16, num_classes=3)
    >>> x, y = torch.randn(8, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    >>> head.update_centroids(x[:6], y[:6])      # labeled features, no gradient
    >>> out = head(x)                            # labeled + unlabeled features
    >>> loss = torch.nn.functional.cross_entropy(out.logits[:6], y[:6]) + 0.2 * head.loss(x, out)
    >>> loss.backward()
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "CENTROID_RULES",
    "CMLossTerms",
    "CMOutput",
    "ClusteringModule",
    "class_sums",
    "cm_loss",
    "cm_loss_terms",
]

#: Names accepted by ``ClusteringModule(centroids=...)``.
CENTROID_RULES = ("paper", "mean", "ema", "learned")


class CMOutput(NamedTuple):
    """What :class:`ClusteringModule` returns.

    logits (n, K): encoder output divided by the temperature; use it as the classifier
        (in the autocast dtype under autocast).
    responsibilities (n, K): γ = softmax(logits), in at least float32.
    reconstruction (n, d): x̃ = γ μ, in at least float32.
    """

    logits: Tensor
    responsibilities: Tensor
    reconstruction: Tensor


class CMLossTerms(NamedTuple):
    """The four terms of the CM loss, already scaled as they enter it.

    ``e1``, ``e2`` and ``e3`` are divided by n·d; ``e4`` is not normalised.
    ``total`` = e1 + e2 + e3 + e4 = L_CM.
    """

    e1: Tensor
    e2: Tensor
    e3: Tensor
    e4: Tensor

    @property
    def total(self) -> Tensor:
        return self.e1 + self.e2 + self.e3 + self.e4


def _autocast_off(t: Tensor) -> contextlib.AbstractContextManager:
    """A region where autocast is off on ``t``'s device (a no-op context when it is not on).

    The loss's identity ``‖X‖² − 2⟨X, Γμ⟩ + Σ_k (Σ_i γ_ik) ‖μ_k‖²`` subtracts nearly equal large
    sums when features sit near their centroids; autocast would run its two products in bfloat16
    (8 bits of mantissa) and the loss would be off by tens of percent, so they run in float32.
    """
    device_type = t.device.type
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # PyTorch < 2.4: no per-device query
        enabled = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    return torch.autocast(device_type, enabled=False) if enabled else contextlib.nullcontext()


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _check_2d(
    name: str, t: Tensor, rows: int | None = None, cols: int | None = None,
    rows_are: str = "one per sample", cols_are: str = "",
) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D, got shape {tuple(t.shape)}; flatten the backbone output "
            f"to (batch, features) first, e.g. with torch.flatten(x, 1)"
        )
    if rows is not None and t.shape[0] != rows:
        raise ValueError(f"{name} has {t.shape[0]} rows, expected {rows} ({rows_are})")
    if cols is not None and t.shape[1] != cols:
        raise ValueError(f"{name} has {t.shape[1]} columns, expected {cols}{f' ({cols_are})' if cols_are else ''}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty: a batch needs at least one sample")


def _check_finite(name: str, t: Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(
            f"{name} contains NaN or Inf; the backbone diverged or the input is corrupt "
            f"(lower the learning rate or check the data)"
        )


def _check_simplex(gamma: Tensor) -> None:
    """Rows of γ must be probability vectors: finite, ≥ 0 and summing to 1 within 1e-2 (loose
    enough for a bfloat16 softmax cast to float64; logits or unnormalised scores are far off)."""
    tol = 1e-2
    g = gamma.detach().float()
    finite = torch.isfinite(g).all()
    off = torch.where(finite, ((g.sum(dim=1) - 1).abs().max() > tol) | (g.min() < -tol), torch.tensor(False, device=g.device))
    if not bool(finite):
        raise ValueError("responsibilities contain NaN or Inf; they must be rows of softmax probabilities")
    if bool(off):
        raise ValueError(
            "responsibilities must be rows on the probability simplex (each ≥ 0, each row summing to 1); "
            "pass softmax(logits), not the logits"
        )


def _check_alpha(alpha: float | Tensor, k: int | None = None) -> None:
    """α must be finite and > 0: a scalar or a (K,) vector."""
    if isinstance(alpha, Tensor):
        if alpha.dim() > 1 or (k is not None and alpha.dim() == 1 and alpha.shape[0] != k):
            raise ValueError(f"alpha must be a scalar or have shape ({k if k is not None else 'K'},), got {tuple(alpha.shape)}")
        a = alpha.detach()
        if not bool((torch.isfinite(a) & (a > 0)).all()):
            raise ValueError(f"alpha must be finite and > 0 everywhere, got {a.tolist()}")
    elif isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number or a tensor, got {type(alpha).__name__}")
    elif not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be finite and > 0, got {alpha}")


def cm_loss_terms(
    features: Tensor,
    responsibilities: Tensor,
    centroids: Tensor,
    alpha: float | Tensor = 1.0,
    *,
    reconstruction: Tensor | None = None,
    eps: float = 1e-8,
    check_inputs: bool = True,
) -> CMLossTerms:
    """The CM loss split into its terms E1..E4 (see the module docstring).

    Args:
        features: x, shape (n, d).
        responsibilities: γ, shape (n, K), rows on the simplex.
        centroids: μ, shape (K, d).
        alpha: Dirichlet concentration, a scalar or a (K,) vector. α = 1 (SuperCM)
            makes E4 vanish.
        reconstruction: γ μ if already computed (the forward pass has it); saves
            the only O(n·K·d) product.
        eps: inside the logarithm of E4.
        check_inputs: validate shapes and finiteness (one host sync on CUDA).

    Cost: O(n·K·d) for γ μ (skipped when ``reconstruction`` is given) plus
    O(n·K + K·d + n·d). No K×K matrix is formed: the off-diagonal sum of E3 is
    ‖Γμ‖²_F minus its diagonal part.

    Half-precision inputs are up-cast to float32 because E3 is a difference of
    two sums of squares, and autocast is switched off inside (it would run γ μ in
    bfloat16 or float16); a half-precision ``reconstruction`` is not reused but
    recomputed in float32. Returns float32 (or float64 for float64 inputs).
    Pass γ in float32 where you can (:class:`ClusteringModule` does): bfloat16
    rounding moves each row's sum off 1 by up to ~K·2⁻⁹, an error the loss
    multiplies by ‖x‖².
    """
    with _autocast_off(features):
        x, gamma, mu, recon, dtype = _prepare(features, responsibilities, centroids, reconstruction, check_inputs)
        n, d = x.shape
        if check_inputs:
            _check_alpha(alpha, gamma.shape[1])

        mu_sq = (mu * mu).sum(dim=1)  # ‖μ_k‖², (K,)
        gamma_sum = gamma.sum(dim=0)  # Σ_i γ_ik
        gamma_sq_sum = (gamma * gamma).sum(dim=0)  # Σ_i γ_ik² = (ΓᵀΓ)_kk

        e1 = (x - recon).pow(2).sum()
        e2 = ((gamma_sum - gamma_sq_sum) * mu_sq).sum()
        # Σ_{k≠l} (ΓᵀΓ)_kl μ_kᵀμ_l = ‖Γμ‖²_F − Σ_k (ΓᵀΓ)_kk ‖μ_k‖²
        e3 = -(recon.pow(2).sum() - (gamma_sq_sum * mu_sq).sum())
        scale = 1.0 / (n * d)
        e4 = _dirichlet_term(gamma_sum, n, alpha, eps)
        return CMLossTerms(e1 * scale, e2 * scale, e3 * scale, gamma_sum.new_zeros(()) if e4 is None else e4)


def _prepare(
    features: Tensor, responsibilities: Tensor, centroids: Tensor, reconstruction: Tensor | None, check: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, torch.dtype]:
    """Validated inputs in a common dtype of at least float32, and x̃ = Γμ."""
    if check:
        _check_2d("features", features)
        n, d = features.shape
        _check_2d("responsibilities", responsibilities, rows=n)
        k = responsibilities.shape[1]
        _check_2d("centroids", centroids, rows=k, cols=d,
                  rows_are=f"one per class: responsibilities have {k} columns",
                  cols_are=f"the feature dimension d = {d}")
        if reconstruction is not None and (not isinstance(reconstruction, Tensor) or reconstruction.shape != (n, d)):
            shape = tuple(reconstruction.shape) if isinstance(reconstruction, Tensor) else type(reconstruction).__name__
            raise ValueError(f"reconstruction must have the features' shape {(n, d)} (γ μ), got {shape}")
        _check_finite("features", features)
        _check_finite("centroids", centroids)
        _check_simplex(responsibilities)
        if reconstruction is not None:
            _check_finite("reconstruction", reconstruction)
    dtype = _at_least_float32(torch.promote_types(features.dtype, responsibilities.dtype))
    x = features.to(dtype)
    gamma = responsibilities.to(dtype)
    mu = centroids.to(dtype)
    # A reconstruction rounded to half precision (a bfloat16 forward) would carry its rounding
    # into the cancellation above: recompute it instead.
    reuse = reconstruction is not None and torch.promote_types(reconstruction.dtype, dtype) == reconstruction.dtype
    recon = reconstruction.to(dtype) if reuse else gamma @ mu
    return x, gamma, mu, recon, dtype


def _dirichlet_term(gamma_sum: Tensor, n: int, alpha: float | Tensor, eps: float) -> Tensor | None:
    """E4 = Σ_k (1 − α_k) log((1/n) Σ_i γ_ik + ε); None when α is the scalar 1 (E4 = 0)."""
    k = gamma_sum.shape[0]
    if isinstance(alpha, Tensor):
        a = alpha.to(device=gamma_sum.device, dtype=gamma_sum.dtype)
        if a.dim() > 1 or (a.dim() == 1 and a.shape[0] != k):
            raise ValueError(f"alpha must be a scalar or have shape ({k},), got {tuple(a.shape)}")
    else:
        if not math.isfinite(float(alpha)):
            raise ValueError(f"alpha must be finite, got {alpha}")
        a = float(alpha)
        if a == 1.0:
            return None
    return ((1.0 - a) * torch.log(gamma_sum / n + eps)).sum()


def cm_loss(
    features: Tensor,
    responsibilities: Tensor,
    centroids: Tensor,
    alpha: float | Tensor = 1.0,
    *,
    reconstruction: Tensor | None = None,
    eps: float = 1e-8,
    check_inputs: bool = True,
) -> Tensor:
    """L_CM = (E1 + E2 + E3) / (n·d) + E4, a scalar. :func:`cm_loss_terms` splits it into terms.

    Computed through the soft k-means identity, with x̃ = Γμ::

        E1 + E2 + E3 = Σ_ik γ_ik ‖x_i − μ_k‖² = ‖X‖² − 2⟨X, Γμ⟩ + Σ_k (Σ_i γ_ik) ‖μ_k‖²

    which needs about half the tensor operations of the term-by-term form (this is
    the training hot path). Arguments as in :func:`cm_loss_terms`.

    Example::

        >>> x, mu = torch.randn(5, 4), torch.randn(3, 4)
        >>> gamma = torch.randn(5, 3).softmax(1)
        >>> loss = cm_loss(x, gamma, mu)   # == Σ_ik γ_ik ‖x_i − μ_k‖² / (5·4)
    """
    with _autocast_off(features):
        x, gamma, mu, recon, _ = _prepare(features, responsibilities, centroids, reconstruction, check_inputs)
        n, d = x.shape
        if check_inputs:
            _check_alpha(alpha, gamma.shape[1])
        gamma_sum = gamma.sum(dim=0)
        kmeans = (x * (x - 2.0 * recon)).sum() + gamma_sum @ (mu * mu).sum(dim=1)
        loss = kmeans / (n * d)
        e4 = _dirichlet_term(gamma_sum, n, alpha, eps)
        return loss if e4 is None else loss + e4


def class_sums(features: Tensor, labels: Tensor, num_classes: int,
               weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-class feature sums (K, d) and counts (K,), vectorised (no loop over classes); with
    ``weights`` (n,), the weighted sums ``Σ_i w_i x_i`` and total weights ``Σ_i w_i`` per class."""
    sums = features.new_zeros(num_classes, features.shape[1])
    ones = features.new_ones(labels.shape[0]) if weights is None else weights.to(features.dtype)
    sums.index_add_(0, labels, features if weights is None else features * ones[:, None])
    # Not torch.bincount: on CUDA it reads max(labels) back to the host, a sync every step.
    counts = features.new_zeros(num_classes).index_add_(0, labels, ones)
    return sums, counts


class ClusteringModule(nn.Module):
    """SuperCM's Clustering Module: a classifier whose softmax is a soft clustering.

    ``logits = (W x + b) / T``, ``γ = softmax(logits)``, ``x̃ = γ μ``. Use ``logits``
    for cross-entropy and prediction (there is no other classification head), and
    :meth:`loss` for the CM regulariser.

    Centroid rules (``centroids=``), applied by :meth:`update_centroids` to labeled
    features without gradient, once per iteration *before* the loss. Classes absent
    from a batch keep their centroid. With ``m_k`` the batch mean of class k:

    - ``"paper"``: ``μ_k ← ((τ−1)/τ) μ_k + (1/τ) m_k`` with τ the number of updates
      so far (1-based, global, as in the authors' code); μ starts at zero, so a
      class first seen at update τ starts at m_k/τ.
    - ``"mean"``: the exact running mean of every labeled feature seen for class k,
      ``μ_k ← (c_k μ_k + s_k) / (c_k + n_k)`` with per-class counts c_k.
    - ``"ema"``: ``μ_k ← momentum · μ_k + (1 − momentum) · m_k``; a class's first
      batch sets ``μ_k = m_k`` (no shrinkage toward zero).
    - ``"learned"``: μ is an ``nn.Parameter`` trained by the CM loss (the ablation
      the paper shows to collapse); :meth:`update_centroids` does nothing.

    Under ``torch.distributed`` the per-class sums and counts are all-reduced
    before the update, so every rank holds the same centroids.

    Args:
        in_features: d, the feature dimension.
        num_classes: K ≥ 2.
        centroids: the centroid rule, one of :data:`CENTROID_RULES`.
        temperature: T > 0 dividing the encoder output.
        momentum: the ``"ema"`` rule's momentum in [0, 1).
        alpha: Dirichlet concentration for E4 (scalar or (K,)); 1 turns E4 off.
        check_inputs: validate shapes, labels and finiteness (costs a host sync on CUDA).

    Shapes: ``forward((n, d)) -> CMOutput(logits (n, K), responsibilities (n, K),
    reconstruction (n, d))``.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        centroids: str = "paper",
        temperature: float = 1.0,
        momentum: float = 0.99,
        alpha: float | Tensor = 1.0,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        if centroids not in CENTROID_RULES:
            raise ValueError(f"unknown centroid rule {centroids!r}; choose one of {', '.join(CENTROID_RULES)}")
        for name, value in (("in_features", in_features), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be a whole number, got {value!r}")
        if int(in_features) < 1:
            raise ValueError(f"in_features must be ≥ 1, got {in_features}")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be ≥ 2, got {num_classes}")
        _check_alpha(alpha, int(num_classes))
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a positive finite number, got {temperature}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.in_features = int(in_features)
        self.num_classes = int(num_classes)
        self.rule = centroids
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.check_inputs = check_inputs
        if isinstance(alpha, Tensor):
            self.register_buffer("alpha", alpha.detach().clone().float())
        else:
            self.alpha = float(alpha)
        self.encoder = nn.Linear(self.in_features, self.num_classes)
        init = torch.zeros(self.num_classes, self.in_features)
        if centroids == "learned":
            nn.init.normal_(init, std=0.01)
            self.centroids = nn.Parameter(init)
        else:
            self.register_buffer("centroids", init)
        # Per-class number of labeled features folded in so far ("mean"; "ema" uses > 0 as "seen").
        # Integer so that ``module.to(torch.bfloat16)`` leaves it exact.
        self.register_buffer("class_counts", torch.zeros(self.num_classes, dtype=torch.long))
        # τ of the "paper" rule: updates applied so far.
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"centroids={self.rule!r}, temperature={self.temperature}"
        )

    def forward(self, features: Tensor) -> CMOutput:
        if self.check_inputs:
            _check_2d("features", features, cols=self.in_features)
        logits = self.encoder(features)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        # γ and γμ in at least float32, also under autocast or for a module cast to bfloat16:
        # the loss subtracts nearly equal sums built from them (see _autocast_off).
        with _autocast_off(logits):
            gamma = logits.to(_at_least_float32(logits.dtype)).softmax(dim=1)
            recon = gamma @ self.centroids.to(gamma.dtype)
        return CMOutput(logits, gamma, recon)

    def loss(self, features: Tensor, output: CMOutput) -> Tensor:
        """L_CM of ``features`` given their :meth:`forward` ``output`` (reuses its γ μ)."""
        return cm_loss(
            features,
            output.responsibilities,
            self.centroids,
            self.alpha,
            reconstruction=output.reconstruction,
            check_inputs=self.check_inputs,
        )

    def loss_terms(self, features: Tensor, output: CMOutput) -> CMLossTerms:
        """E1..E4 of ``features`` given their :meth:`forward` output."""
        return cm_loss_terms(
            features,
            output.responsibilities,
            self.centroids,
            self.alpha,
            reconstruction=output.reconstruction,
            check_inputs=self.check_inputs,
        )

    @torch.no_grad()
    def update_centroids(self, features: Tensor, labels: Tensor, weights: Tensor | None = None) -> None:
        """Fold a batch of labeled ``features`` (n, d) with ``labels`` (n,) into μ.

        Detached and gradient-free; vectorised over classes. See the class
        docstring for the rules. A no-op for ``centroids="learned"``.
        ``weights`` (n,) ≥ 0: sample i counts w_i times (``m_k`` the weighted class mean,
        ``n_k`` the class's total weight); a class whose total weight is 0 is absent.
        """
        if self.check_inputs:
            self._check_labeled(features, labels)
        if self.rule == "learned":
            return
        mu = self.centroids
        # Accumulate in at least float32 even when the module was cast to half precision.
        work = torch.promote_types(mu.dtype, torch.float32)
        labels = labels.long()
        sums, counts = class_sums(features.detach().to(work), labels, self.num_classes,
                                  None if weights is None else weights.detach().to(work))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            packed = torch.cat([sums, counts[:, None]], dim=1)
            dist.all_reduce(packed)
            sums, counts = packed[:, :-1], packed[:, -1]
        # Buffers are changed in place: ``self.x += ...`` would go through nn.Module.__setattr__,
        # which cost a third of this method's time (profiled).
        self.num_updates.add_(1)
        # Every rule is μ_k ← μ_k + r_k (m_k − μ_k) = (1 − r_k) μ_k + (r_k / n_k) s_k, with s_k the
        # class sum, n_k its count and r_k = 0 for classes absent from the batch:
        #   paper: r_k = 1/τ;  mean: r_k = n_k / (c_k + n_k);  ema: r_k = 1 − momentum (1 on first sight).
        present = (counts > 0).to(work)
        if self.rule == "paper":
            rate = present / self.num_updates.to(work)
        elif self.rule == "mean":
            rate = counts / (self.class_counts.to(work) + counts).clamp_min(1)
        else:  # ema
            rate = present * torch.where(self.class_counts > 0, 1.0 - self.momentum, 1.0).to(work)
        per_sample = (rate / torch.where(counts > 0, counts, 1.0))[:, None]
        if mu.dtype == work:
            mu.mul_(1.0 - rate[:, None]).addcmul_(sums, per_sample)
        else:
            mu.copy_(torch.addcmul(mu.to(work) * (1.0 - rate[:, None]), sums, per_sample))
        self.class_counts.add_(counts.round().long())

    def reset_centroids(self) -> None:
        """Forget every centroid update (μ = 0, counts = 0, τ = 0)."""
        with torch.no_grad():
            if self.rule != "learned":
                self.centroids.zero_()
            self.class_counts.zero_()
            self.num_updates.zero_()

    def _check_labeled(self, features: Tensor, labels: Tensor) -> None:
        _check_2d("features", features, cols=self.in_features)
        if not isinstance(labels, Tensor) or labels.dim() != 1:
            raise ValueError(
                f"labels must be a 1-D tensor of class indices, got "
                f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}"
            )
        if labels.shape[0] != features.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {features.shape[0]} feature rows; they must match")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got values in [{lo}, {hi}]; "
                f"check num_classes or remap the labels"
            )
        _check_finite("features", features)
