"""scikit-learn's optdigits (8×8, 1,797 images): the built-in default, no download."""

from __future__ import annotations

import torch

from .base import ArrayDataset

#: Size of the fixed, stratified test split of the digits (one third).
TEST_FRACTION = 1 / 3


def load_digits(root: str | None = None, *, image: bool = False) -> ArrayDataset:
    """The 1,797 digits scaled from [0, 16] to [−1, 1].

    As vectors (N, 64) by default, or images (N, 1, 8, 8) with ``image=True``.
    The test split (599 images) is stratified and fixed (seed 0) so every run of
    every seed is scored on the same images; ``root`` is unused.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 8.0 - 1.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    if image:
        x = x.view(-1, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    test = torch.zeros(len(y), dtype=torch.bool)
    for c in range(10):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        test[idx[: round(idx.numel() * TEST_FRACTION)]] = True
    return ArrayDataset("digits", x[~test], y[~test], x[test], y[test], num_classes=10)
