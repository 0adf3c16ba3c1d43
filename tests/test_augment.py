"""Batch augmentation: shapes, reproducibility from the generator state, and each operation's semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from supercm.data.augment import Augment


def _batch(n: int = 64, c: int = 3, h: int = 8, w: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_identity_returns_the_same_tensor():
    x = _batch()
    assert Augment()(x, _gen()) is x
    assert Augment.from_dict({})(x, _gen()) is x
    assert Augment.from_dict(None).is_identity


@pytest.mark.parametrize(
    "aug",
    [Augment(flip=True), Augment(crop_pad=2), Augment(noise_std=0.15), Augment(flip=True, crop_pad=2, noise_std=0.15)],
)
def test_shape_dtype_preserved_and_same_state_same_output(aug):
    x = _batch()
    g = _gen()
    state = g.get_state()
    a = aug(x, g)
    b = aug(x, g)  # generator advanced: a different draw
    g.set_state(state)
    c = aug(x, g)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, c)
    assert not torch.equal(a, b)


def test_flip_is_per_sample_with_probability_half():
    x = _batch(n=2000, h=4, w=5)
    out = Augment(flip=True)(x, _gen())
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all())  # every sample is either untouched or exactly mirrored
    frac = flipped.float().mean().item()
    assert 0.45 < frac < 0.55


def test_crop_is_a_window_of_the_reflect_padded_input():
    p, h, w = 2, 6, 5
    x = _batch(n=40, c=2, h=h, w=w)
    out = Augment(crop_pad=p)(x, _gen())
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    offsets = set()
    for n in range(x.shape[0]):
        hits = [
            (i, j)
            for i in range(2 * p + 1)
            for j in range(2 * p + 1)
            if torch.equal(out[n], padded[n, :, i : i + h, j : j + w])
        ]
        assert hits, f"sample {n} is not a window of its padded input"
        offsets.update(hits)
    assert len(offsets) > 10  # offsets drawn per sample, over the whole (2p+1)² range


def test_batch_draw_shares_one_flip_and_one_offset_across_the_batch():
    """draw="batch" (SPEC §5): every image gets the same flip decision and the same crop window."""
    p, h, w = 2, 6, 5
    aug = Augment(flip=True, crop_pad=p, draw="batch")
    g = _gen()
    x = _batch(n=16, c=2, h=h, w=w)
    seen_flips, seen_offsets = set(), set()
    for _ in range(60):
        out = aug(x, g)
        for flipped in (False, True):
            src = x.flip(-1) if flipped else x
            padded = F.pad(src, (p, p, p, p), mode="reflect")
            common = [
                (i, j)
                for i in range(2 * p + 1)
                for j in range(2 * p + 1)
                if torch.equal(out, padded[:, :, i : i + h, j : j + w])  # the whole batch at once
            ]
            if common:
                seen_flips.add(flipped)
                seen_offsets.update(common)
                break
        else:
            raise AssertionError("the batch is not one shared flip + one shared window of its padded input")
    assert seen_flips == {False, True}  # the shared decision still varies from batch to batch
    assert len(seen_offsets) > 10
    # Noise stays elementwise with batch draws.
    noisy = Augment(noise_std=0.15, draw="batch")(torch.zeros(64, 3, 8, 8), _gen())
    assert not torch.equal(noisy[0], noisy[1]) and abs(noisy.std().item() - 0.15) < 0.01


def test_noise_std():
    x = torch.zeros(256, 3, 16, 16)
    out = Augment(noise_std=0.15)(x, _gen())
    assert abs(out.std().item() - 0.15) < 0.003
    assert abs(out.mean().item()) < 0.003


def test_vectors_only_get_noise():
    x = torch.randn(500, 20)
    flip_crop = Augment(flip=True, crop_pad=2)(x, _gen())
    assert torch.equal(flip_crop, x)
    noisy = Augment(flip=True, crop_pad=2, noise_std=0.5)(x, _gen())
    assert noisy.shape == x.shape
    assert abs((noisy - x).std().item() - 0.5) < 0.02


def test_bad_inputs():
    with pytest.raises(ValueError, match="crop_pad"):
        Augment(crop_pad=3)(torch.zeros(2, 1, 3, 3), _gen())
    with pytest.raises(ValueError, match="expects"):
        Augment(noise_std=0.1)(torch.zeros(2, 3, 4), _gen())


def test_from_dict_validates_keys_and_values():
    assert Augment.from_dict({"flip": True, "crop_pad": 2, "noise_std": 0.15}) == Augment(True, 2, 0.15)
    with pytest.raises(ValueError) as err:
        Augment.from_dict({"crop_pad": 2, "rotate": 10})
    msg = str(err.value)
    assert "'rotate'" in msg and all(k in msg for k in ("flip", "crop_pad", "noise_std"))
    with pytest.raises(ValueError):
        Augment.from_dict({"crop_pad": -1})
    with pytest.raises(ValueError):
        Augment.from_dict({"noise_std": -0.1})
    with pytest.raises(TypeError):
        Augment.from_dict({"flip": 1})
    with pytest.raises(ValueError, match="draw must be one of sample, batch"):
        Augment.from_dict({"flip": True, "draw": "image"})
    assert Augment.from_dict({"flip": True, "draw": "batch"}).draw == "batch"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_gpu_matches_itself_after_state_restore():
    x = _batch().cuda()
    g = torch.Generator(device="cuda").manual_seed(3)
    state = g.get_state()
    aug = Augment(flip=True, crop_pad=2, noise_std=0.15)
    a = aug(x, g)
    g.set_state(state)
    assert torch.equal(a, aug(x, g))
    with pytest.raises(ValueError, match="generator"):
        aug(x, torch.Generator())


@pytest.mark.parametrize("aug", [
    Augment(flip=True, crop_pad=2, noise_std=0.1),
    Augment(flip=True, crop_pad=2, draw="batch"),
    Augment(resized_crop=8, flip=True),
    Augment(noise_std=0.5),
])
def test_rows_of_a_batch_get_the_draws_of_the_whole_batch(aug):
    """aug(x[R], g, rows=R, of=B) == aug(x, g)[R], and g ends where it ends after aug(x, g): a
    data-parallel rank augments only its share and every random number is a one-process run's."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (10, 3, 12, 12), dtype=torch.uint8) if aug.resized_crop else torch.randn(10, 3, 12, 12)
    g = torch.Generator().manual_seed(1)
    whole = aug(x, g)
    after = torch.rand(3, generator=g)
    for rows in (slice(5, 10), torch.tensor([0, 1, 2, 7, 8])):
        g = torch.Generator().manual_seed(1)
        assert torch.equal(aug(x[rows], g, rows=rows, of=10), whole[rows])
        assert torch.equal(torch.rand(3, generator=g), after)
    with pytest.raises(ValueError, match="rows and of together"):
        aug(x, g, rows=slice(0, 5))
