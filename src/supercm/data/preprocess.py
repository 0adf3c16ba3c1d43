"""Image preprocessing of Oliver et al. (2018): global contrast normalisation and ZCA whitening.

Both follow ``lib/dataset_utils.py`` of google-research/realistic-ssl-evaluation
(``gcn`` and ``get_zca_transformer``), which the SuperCM paper's SSL protocol reuses
for CIFAR-10/100 (SPEC §5): raw pixel values, GCN with scale 55 per image, then
ZCA whitening fitted on the training split only (identity regulariser 0.1) and
applied unchanged to the test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

#: GCN output scale of Oliver et al.: every image gets L2 norm 55 after normalisation.
GCN_SCALE = 55.0
#: Ridge added to the pixel covariance before ZCA whitening (Oliver et al.'s ``identity_scale``).
ZCA_IDENTITY_SCALE = 0.1

# Rows per block when accumulating statistics in float64 or whitening, to bound temporary memory.
_CHUNK = 4096


def global_contrast_normalize(x: Tensor, scale: float = GCN_SCALE, eps: float = 1e-10) -> Tensor:
    """Per-sample global contrast normalisation.

    ``x`` has shape (N, ...) (e.g. (N, C, H, W)); each sample is treated as one
    flat vector ``v`` over all its non-batch entries::

        c = v − mean(v)
        v ← scale · c / ‖c‖₂        (‖c‖₂ < eps: the norm is replaced by 1)

    so every non-constant image ends with zero mean and L2 norm ``scale``, and a
    constant image becomes all zeros (exactly Oliver et al.'s ``gcn``). Integer
    inputs are converted to float32; the result has ``x``'s shape and a floating dtype.
    """
    if x.dim() < 2:
        raise ValueError(f"expected a batch (N, ...), got shape {tuple(x.shape)}")
    dims = tuple(range(1, x.dim()))
    if x.is_floating_point():
        centred = x - x.mean(dim=dims, keepdim=True)
    else:  # a fresh float copy: centre it in place
        centred = x.float()
        centred -= centred.mean(dim=dims, keepdim=True)
    norm = torch.linalg.vector_norm(centred, dim=dims, keepdim=True)
    norm = torch.where(norm < eps, torch.ones_like(norm), norm)
    return centred.mul_(scale / norm)


@dataclass(frozen=True, eq=False)
class ZCA:
    """A fitted ZCA whitening transform ``z = (x − mean) · W``.

    With ``C`` the (unbiased, N−1) covariance of the flattened training samples
    and ``λ`` = ``identity_scale``::

        W = (C + (λ + eps)·I)^(−1/2)          (symmetric, so W = Wᵀ)

    (Oliver et al.: eigendecomposition of ``C + λI``, then ``1/sqrt(s + eps)``.)
    On the training data the whitened covariance is ``W C W``, whose eigenvalues
    are ``s / (s + λ + eps)`` for the eigenvalues ``s`` of ``C``: near 1 along
    high-variance directions, damped towards 0 along directions with variance
    below ``λ`` — "identity up to the regulariser".

    ``mean`` has shape (D,) and ``matrix`` (D, D), both float32, D the number of
    entries of one sample.
    """

    mean: Tensor
    matrix: Tensor
    identity_scale: float = ZCA_IDENTITY_SCALE

    @classmethod
    def fit(
        cls,
        x: Tensor,
        identity_scale: float = ZCA_IDENTITY_SCALE,
        eps: float = 1e-10,
        method: Literal["auto", "cov", "svd"] = "auto",
    ) -> "ZCA":
        """Fit on training samples ``x`` of shape (N, ...) (N ≥ 2); computed in float64.

        ``method="cov"`` accumulates the D×D covariance in blocks and
        eigendecomposes it (O(N·D² + D³)); ``"svd"`` takes the thin SVD of the
        centred N×D data (O(N²·D)) and handles the orthogonal complement of the
        data span analytically (there ``C`` is 0, so ``W`` is ``(λ+eps)^(−1/2)``).
        Both give the same ``W``; ``"auto"`` picks ``"svd"`` when N < D.
        """
        if x.dim() < 2 or x.shape[0] < 2:
            raise ValueError(f"ZCA.fit needs a batch (N ≥ 2, ...), got shape {tuple(x.shape)}")
        if identity_scale < 0:
            raise ValueError(f"identity_scale must be ≥ 0, got {identity_scale}")
        flat = x.reshape(x.shape[0], -1)
        n, d = flat.shape
        if method == "auto":
            method = "svd" if n < d else "cov"
        mean = sum(block.double().sum(dim=0) for block in flat.split(_CHUNK)) / n
        ridge = identity_scale + eps
        if method == "cov":
            cov = torch.zeros(d, d, dtype=torch.float64, device=flat.device)
            for block in flat.split(_CHUNK):
                block = block.double() - mean
                cov.addmm_(block.T, block)
            cov /= n - 1
            evals, evecs = torch.linalg.eigh(cov)
            scales = (evals.clamp_min(0) + ridge).rsqrt()
            matrix = (evecs * scales) @ evecs.T
        elif method == "svd":
            centred = flat.double() - mean
            _, sing, vh = torch.linalg.svd(centred, full_matrices=False)
            evals = sing.square() / (n - 1)
            base = ridge**-0.5
            scales = (evals + ridge).rsqrt() - base
            matrix = (vh.T * scales) @ vh
            matrix.diagonal().add_(base)
        else:
            raise ValueError(f"method must be 'auto', 'cov' or 'svd', got {method!r}")
        return cls(mean=mean.float(), matrix=matrix.float(), identity_scale=identity_scale)

    def transform(self, x: Tensor) -> Tensor:
        """Whiten ``x`` of shape (N, ...) with D entries per sample; float32, same shape."""
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.mean.numel():
            raise ValueError(f"ZCA was fitted on {self.mean.numel()} features, got {flat.shape[1]}")
        mean, matrix = self.mean.to(flat.device), self.matrix.to(flat.device)
        out = torch.empty(flat.shape, dtype=torch.float32, device=flat.device)
        for rows, block in zip(out.split(_CHUNK), flat.split(_CHUNK)):
            torch.mm(block.float() - mean, matrix, out=rows)
        return out.reshape(x.shape)
