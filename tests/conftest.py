"""Fixtures several test files share."""

from __future__ import annotations

import pytest
import torch

from supercm.data import ArrayDataset, DomainPair, load_dataset


@pytest.fixture(scope="module")
def pair():
    """Digits as the source; the target is the other half of digits seen through a domain shift
    (inverted, rescaled intensities), so its labels exist but must never be read."""
    d = load_dataset("digits")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(d.train_y.numel(), generator=g)
    src, tgt = perm[: perm.numel() // 2], perm[perm.numel() // 2 :]
    shift = lambda x: 0.5 * (x.max() - x) + 0.3  # noqa: E731
    source = ArrayDataset("digits-src", d.train_x[src], d.train_y[src], d.test_x, d.test_y, 10, {})
    target = ArrayDataset("digits-shifted", shift(d.train_x[tgt]), d.train_y[tgt], shift(d.test_x), d.test_y, 10, {})
    return DomainPair("digits-src->digits-shifted", source, target)
