"""FixMatch's strong augmentation on the device: RandAugment with random magnitudes, then Cutout.

Batched and per-sample random: every image draws its own ``num_ops`` operations (uniformly, with
replacement) from :data:`FIXMATCH_OPS`, a magnitude for each, uniform in the operation's range, and
a Cutout square, as USB's ``RandAugment`` (``semilearn/datasets/augmentation/randaugment.py``) does
image by image in PIL. All of it is drawn from one ``torch.Generator`` on the batch's device, in a
fixed order and for the whole batch whatever it holds, so restoring the generator reproduces the
augmentation bit for bit, and ``aug(x, g, rows=R, of=B)`` returns ``aug(whole batch)[R]``
(data-parallel shares, as :class:`~supercm.data.augment.Augment`).

The operations work on values in [0, 1]: uint8 images are scaled by 1/255 (and returned as float
in [0, 1], as ``Augment`` returns them); float images are mapped from ``value_range`` to [0, 1] and
back. Magnitude ranges (USB's FixMatch list; ``u`` uniform in [0, 1) per image and operation):

================  ==========================================================================
identity          unchanged
autocontrast      each channel stretched to [0, 1] (torchvision ``autocontrast``)
equalize          histogram equalisation on 256 levels (torchvision ``equalize``)
brightness        blend with black, factor 0.05 + 0.9 u (always darker, as USB's range)
color             blend with the grey image, same factor (identity for 1-channel images)
contrast          blend with the image's mean grey level, same factor
sharpness         blend with the 3×3 smoothed image (PIL's kernel, border kept), same factor
posterize         keep ``int(4 + 4u)`` ∈ {4..7} bits of each 8-bit level
solarize          invert the levels ≥ 256 u (in 8-bit units)
rotate            30 (2u − 1) degrees about the centre
shear_x / shear_y 0.3 (2u − 1), about the centre
translate_x / _y  0.3 (2u − 1) × the image's width / height
================  ==========================================================================

Geometric operations sample the nearest pixel and fill with 0 (black), as PIL's ``transform``;
unlike USB's PIL calls (which shear about the top-left corner) shears are about the centre, as
torchvision's RandAugment does. Cutout: a square of side ``c·W`` (``c`` uniform in
[0, ``cutout``)), centred at a uniform pixel and clipped to the image, filled with mid-grey 0.5
(USB fills (125, 123, 114)/255).

torchvision's ``transforms.v2.functional`` does the operations that need no per-image magnitude
(``autocontrast``, ``equalize``, ``rgb_to_grayscale``); the ones with a magnitude are written here,
vectorised with one magnitude per image (torchvision's take one for the whole batch). Each
operation runs on the images that drew it only (grouped by operation: one host sync per round on
a GPU, for the group sizes), and every operation works image by image, so an image's result never depends on the
other images of the batch (what makes a data-parallel share equal to the whole batch's rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: FixMatch's RandAugment operations (Sohn et al. 2020, USB's ``augment_list``), in draw order.
FIXMATCH_OPS = ("identity", "autocontrast", "brightness", "color", "contrast", "equalize", "posterize",
                "rotate", "sharpness", "shear_x", "shear_y", "solarize", "translate_x", "translate_y")
_GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
CUTOUT_FILL = 0.5


@dataclass(frozen=True)
class RandAugment:
    """``aug(x, generator, rows=None, of=None, value_range=(0, 1))``: the strong view of (N, C, H, W) images.

    ``num_ops``: operations per image (FixMatch: 2; USB's CIFAR recipe: 3). ``cutout``: the largest
    Cutout side as a fraction of the width (0 turns Cutout off). Random numbers drawn, for a batch
    of ``of`` images: the operations (``of`` × ``num_ops`` integers), their magnitudes (``of`` ×
    ``num_ops`` uniforms), then Cutout's side and centre (``of`` × 3 uniforms).
    """

    num_ops: int = 2
    cutout: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.num_ops, bool) or not isinstance(self.num_ops, int) or self.num_ops < 0:
            raise ValueError(f"RandAugment.num_ops must be an int ≥ 0, got {self.num_ops!r}")
        if not 0 <= self.cutout <= 1:
            raise ValueError(f"RandAugment.cutout must be in [0, 1], got {self.cutout!r}")

    def __call__(self, x: Tensor, generator: torch.Generator, rows: slice | Tensor | None = None,
                 of: int | None = None, value_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"RandAugment expects (N, C, H, W) images, got shape {tuple(x.shape)}")
        if (rows is None) != (of is None):
            raise ValueError("RandAugment: give rows and of together (the rows x holds of a batch of `of`)")
        if generator.device.type != x.device.type:
            raise ValueError(f"generator is on {generator.device} but the batch is on {x.device}")
        of = x.shape[0] if of is None else of
        dev = x.device
        ops = torch.randint(0, len(FIXMATCH_OPS), (of, self.num_ops), generator=generator, device=dev)
        mags = torch.rand((of, self.num_ops), generator=generator, device=dev)
        cut = torch.rand((of, 3), generator=generator, device=dev)
        if rows is not None:
            ops, mags, cut = ops[rows], mags[rows], cut[rows]
        if x.dtype == torch.uint8:
            lo, hi, x = 0.0, 1.0, x.float().div_(255)
        else:
            lo, hi = value_range
            if not hi > lo:
                raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
            x = x.float() if x.dtype not in (torch.float32, torch.float64) else x
            x = ((x - lo) / (hi - lo)).clamp_(0, 1)
        for j in range(self.num_ops):
            x = _apply(x, ops[:, j], mags[:, j])
        if self.cutout > 0:
            x = _cutout(x, cut, self.cutout)
        return x if (lo, hi) == (0.0, 1.0) else x * (hi - lo) + lo


def _op(name: str) -> int:
    return FIXMATCH_OPS.index(name)


def _per_image(t: Tensor) -> Tensor:
    return t.view(-1, 1, 1, 1)


def _apply(x: Tensor, op: Tensor, u: Tensor) -> Tensor:
    """One round: image n gets operation ``op[n]`` at uniform magnitude ``u[n]``. The images are
    grouped by operation (one host sync on a GPU: the group sizes) and each group transformed alone."""
    counts = torch.bincount(op, minlength=len(FIXMATCH_OPS)).tolist()
    groups = torch.argsort(op, stable=True).split(counts)
    out = x.clone()
    for name, rows in zip(FIXMATCH_OPS, groups):
        if rows.numel() and name != "identity":
            out.index_copy_(0, rows, _OPS[name](x[rows], u[rows], op[rows]))
    return out


def _blend(x: Tensor, degenerate: Tensor, u: Tensor) -> Tensor:
    """PIL's ImageEnhance: ``clamp(d + f (x − d))`` with factor f = 0.05 + 0.9 u per image."""
    factor = _per_image(0.05 + 0.9 * u).to(x.dtype)
    return (degenerate + factor * (x - degenerate)).clamp_(0, 1)


def _grey(x: Tensor) -> Tensor:
    from torchvision.transforms.v2 import functional as TF

    return TF.rgb_to_grayscale(x) if x.shape[1] == 3 else x


def _posterize(x: Tensor, u: Tensor) -> Tensor:
    """Keep the top int(4 + 4u) bits of each 8-bit level."""
    bits = (4 + 4 * u).floor().clamp(1, 8).long()
    keep = _per_image((0xFF << (8 - bits)) & 0xFF)
    return ((x * 255).round_().long() & keep).to(x.dtype) / 255


def _equalize(x: Tensor) -> Tensor:
    from torchvision.transforms.v2 import functional as TF

    return TF.equalize((x * 255).round_().to(torch.uint8)).to(x.dtype) / 255


def _autocontrast(x: Tensor) -> Tensor:
    from torchvision.transforms.v2 import functional as TF

    return TF.autocontrast(x)


def _smooth(x: Tensor) -> Tensor:
    """PIL's SMOOTH filter (3×3, centre 5, others 1, /13) inside, the border pixels kept; elementwise
    shifted sums, so each image's result is independent of the batch."""
    inner = 5 * x[..., 1:-1, 1:-1]
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                inner = inner + x[..., 1 + di: x.shape[-2] - 1 + di, 1 + dj: x.shape[-1] - 1 + dj]
    out = x.clone()
    out[..., 1:-1, 1:-1] = inner / 13
    return out


def _geometric(x: Tensor, op: Tensor, u: Tensor) -> Tensor:
    """Rotate / shear / translate each image by its own magnitude: one affine grid per image,
    nearest pixel, 0 outside (normalised coordinates, about the centre)."""
    n, _, h, w = x.shape
    v = 2 * u - 1  # uniform in [−1, 1)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    angle = v * (30 * math.pi / 180)
    rot = op == _op("rotate")
    # Rotation in pixel space, written in normalised coordinates (aspect ratio h/w).
    theta[:, 0, 0] = torch.where(rot, angle.cos(), theta[:, 0, 0])
    theta[:, 1, 1] = torch.where(rot, angle.cos(), theta[:, 1, 1])
    theta[:, 0, 1] = torch.where(rot, -angle.sin() * h / w, theta[:, 0, 1])
    theta[:, 1, 0] = torch.where(rot, angle.sin() * w / h, theta[:, 1, 0])
    theta[:, 0, 1] = torch.where(op == _op("shear_x"), 0.3 * v * h / w, theta[:, 0, 1])
    theta[:, 1, 0] = torch.where(op == _op("shear_y"), 0.3 * v * w / h, theta[:, 1, 0])
    theta[:, 0, 2] = torch.where(op == _op("translate_x"), 2 * 0.3 * v, theta[:, 0, 2])
    theta[:, 1, 2] = torch.where(op == _op("translate_y"), 2 * 0.3 * v, theta[:, 1, 2])
    # The grid by hand (affine_grid's batched matmul could round differently for another batch size).
    ys = (torch.arange(h, dtype=x.dtype, device=x.device) * 2 + 1) / h - 1
    xs = (torch.arange(w, dtype=x.dtype, device=x.device) * 2 + 1) / w - 1
    gy, gx = ys.view(1, h, 1), xs.view(1, 1, w)
    t = theta.view(n, 6, 1, 1)
    grid = torch.stack([t[:, 0] * gx + t[:, 1] * gy + t[:, 2], t[:, 3] * gx + t[:, 4] * gy + t[:, 5]], dim=-1)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


#: Each operation on the images that drew it: f(images, magnitudes u, operation indices).
_OPS = {
    "autocontrast": lambda x, u, op: _autocontrast(x),
    "brightness": lambda x, u, op: _blend(x, torch.zeros_like(x), u),
    "color": lambda x, u, op: _blend(x, _grey(x).expand_as(x), u),
    "contrast": lambda x, u, op: _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), u),
    "equalize": lambda x, u, op: _equalize(x),
    "posterize": lambda x, u, op: _posterize(x, u),
    "sharpness": lambda x, u, op: _blend(x, _smooth(x), u),
    "solarize": lambda x, u, op: torch.where(x * 255 >= _per_image(256 * u).to(x.dtype), 1 - x, x),
    **{g: (lambda x, u, op: _geometric(x, op, u)) for g in _GEOMETRIC},
}


def _cutout(x: Tensor, cut: Tensor, largest: float) -> Tensor:
    """A square of side ``cut[:, 0]·largest·W`` centred at (``cut[:, 1]·W``, ``cut[:, 2]·H``),
    clipped to the image (USB's ``CutoutAbs``), set to mid-grey."""
    h, w = x.shape[-2:]
    side = cut[:, 0] * largest * w
    x0 = (cut[:, 1] * w - side / 2).clamp(min=0).floor()
    y0 = (cut[:, 2] * h - side / 2).clamp(min=0).floor()
    cols = torch.arange(w, device=x.device, dtype=side.dtype)
    rows = torch.arange(h, device=x.device, dtype=side.dtype)
    in_x = (cols >= x0[:, None]) & (cols < (x0 + side)[:, None])  # (N, W)
    in_y = (rows >= y0[:, None]) & (rows < (y0 + side)[:, None])  # (N, H)
    hole = (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)  # (N, 1, H, W)
    return x.masked_fill(hole, CUTOUT_FILL)
