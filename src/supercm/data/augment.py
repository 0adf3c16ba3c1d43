"""Batch augmentation of SPEC §5 (random horizontal flip, reflect-pad random crop, Gaussian noise)
and of the UDA protocol of SPEC §6 (RandomResizedCrop + flip on uint8 images).

Everything is vectorised over the batch and draws all its randomness from one
``torch.Generator`` on the batch's device, in a fixed order (flip, then crop, then
noise, each only when enabled), so restoring the generator's state reproduces an
augmentation bit for bit — what an exact resume needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

#: RandomResizedCrop's ranges (torchvision's defaults, the field's transform): area fraction, aspect ratio.
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
#: Attempts at drawing a box that fits before falling back to the centre crop (as torchvision).
RRC_ATTEMPTS = 10

#: Values of ``Augment.draw``: per image, or one flip decision and crop offset per batch.
DRAWS = ("sample", "batch")


@dataclass(frozen=True)
class Augment:
    """``aug(x, generator)`` augments a training batch ``x``.

    For images (N, C, H, W):

    * ``flip``: with probability 0.5, ``x[n] ← x[n].flip(-1)`` (horizontal flip);
    * ``crop_pad = p > 0``: reflect-pad by ``p`` on every side to (H+2p, W+2p), then
      take the H×W window at a uniformly random offset ``(i, j) ∈ {0..2p}²``:
      ``out[n, :, h, w] = pad(x)[n, :, i_n + h, j_n + w]`` (requires p < H and p < W);
    * ``noise_std = σ > 0``: ``x ← x + σ·ε``, ε ~ N(0, 1) elementwise;
    * ``resized_crop = s > 0``: torchvision's ``RandomResizedCrop(s)``, batched: a box of area
      fraction ~ U(0.08, 1) and log aspect ratio ~ U(log 3/4, log 4/3) (up to 10 draws per image,
      then the centre crop of the clamped ratio), at a uniform position, resampled to s×s by
      ``torchvision.ops.roi_align`` (bilinear, averaging ⌈box/s⌉² samples per output pixel when
      the box is larger than s: antialiased like torchvision's resize of tensors).

    Order: resized crop, flip, reflect-pad crop, noise (each only when enabled).
    uint8 images (the pixels of :mod:`supercm.data.images`) are first scaled to float [0, 1]
    when anything is enabled; the model's input stage normalises them.

    ``draw`` says who shares a flip decision and a crop offset: ``"sample"`` (default)
    draws them per image (common practice); ``"batch"`` draws one of each for the whole
    batch: the paper's protocol as SPEC §5 gives it ("one draw per batch"). The noise
    is elementwise either way.

    For vectors (N, D) only the noise applies. With everything off the call returns
    ``x`` itself. The output has ``x``'s shape, dtype and device.

    ``aug(x, generator, rows=R, of=B)``: ``x`` holds the rows ``R`` (a slice or an index tensor)
    of a batch of ``B``. Every random number is drawn for the whole batch of ``B``, in the same
    order, and the rows ``R`` get theirs: the output is ``aug(whole batch)[R]`` and the generator
    ends where it would, while only ``x`` is transformed. Data-parallel training uses it (each
    process holds its share of the global batch).
    """

    flip: bool = False
    crop_pad: int = 0
    noise_std: float = 0.0
    draw: str = "sample"
    resized_crop: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.flip, bool):
            raise TypeError(f"Augment.flip must be a bool, got {self.flip!r}")
        if isinstance(self.crop_pad, bool) or not isinstance(self.crop_pad, int) or self.crop_pad < 0:
            raise ValueError(f"Augment.crop_pad must be an int ≥ 0, got {self.crop_pad!r}")
        if isinstance(self.noise_std, bool) or not isinstance(self.noise_std, (int, float)) or self.noise_std < 0:
            raise ValueError(f"Augment.noise_std must be a number ≥ 0, got {self.noise_std!r}")
        if isinstance(self.resized_crop, bool) or not isinstance(self.resized_crop, int) or self.resized_crop < 0:
            raise ValueError(f"Augment.resized_crop must be an int ≥ 0, got {self.resized_crop!r}")
        if self.draw not in DRAWS:
            raise ValueError(f"Augment.draw must be one of {', '.join(DRAWS)}, got {self.draw!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Augment":
        """Build from a dataset's ``augment`` dict (e.g. ``{"crop_pad": 2}``); ``None`` or ``{}`` is the identity."""
        d = dict(d or {})
        allowed = [f.name for f in fields(cls)]
        for key in d:
            if key not in allowed:
                raise ValueError(f"unknown augmentation {key!r}; allowed keys are {', '.join(allowed)}")
        return cls(**d)

    @property
    def is_identity(self) -> bool:
        return not self.flip and self.crop_pad == 0 and self.noise_std == 0 and self.resized_crop == 0

    def __call__(self, x: Tensor, generator: torch.Generator, rows: slice | Tensor | None = None,
                 of: int | None = None) -> Tensor:
        if self.is_identity:
            return x
        if (rows is None) != (of is None):
            raise ValueError("Augment: give rows and of together (the rows x holds of a batch of `of`)")
        if generator.device.type != x.device.type:
            raise ValueError(
                f"generator is on {generator.device} but the batch is on {x.device}; use one on the batch's device"
            )
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        of = x.shape[0] if of is None else of
        if x.dim() == 4:
            if self.resized_crop:
                x = self._resized_crop(x, generator, rows, of)
            if self.flip:
                x = self._flip(x, generator, rows, of)
            if self.crop_pad:
                x = self._crop(x, generator, rows, of)
        elif x.dim() != 2:
            raise ValueError(f"Augment expects (N, C, H, W) images or (N, D) vectors, got shape {tuple(x.shape)}")
        if self.noise_std:
            noise = torch.randn((of, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
            x = x + self.noise_std * self._mine(noise, rows)
        return x

    def _draws(self, n: int) -> int:
        """How many independent flip decisions / crop offsets a batch of ``n`` images gets."""
        return n if self.draw == "sample" else 1

    def _mine(self, drawn: Tensor, rows: slice | Tensor | None) -> Tensor:
        """The rows of per-image draws that belong to the images held (all of one batch draw)."""
        if rows is None or drawn.shape[0] == 1:
            return drawn
        return drawn[rows]

    def _flip(self, x: Tensor, generator: torch.Generator, rows=None, of: int | None = None) -> Tensor:
        flipped = torch.rand(self._draws(of or x.shape[0]), generator=generator, device=x.device) < 0.5
        return torch.where(self._mine(flipped, rows).view(-1, 1, 1, 1), x.flip(-1), x)

    def _crop(self, x: Tensor, generator: torch.Generator, rows=None, of: int | None = None) -> Tensor:
        n, c, h, w = x.shape
        p = self.crop_pad
        if p >= h or p >= w:
            raise ValueError(f"crop_pad={p} needs images larger than {p}×{p} for reflect padding, got {h}×{w}")
        padded = F.pad(x, (p, p, p, p), mode="reflect")  # (N, C, H+2p, W+2p)
        offsets = torch.randint(0, 2 * p + 1, (self._draws(of or n), 2), generator=generator, device=x.device)
        offsets = self._mine(offsets, rows).expand(n, 2)
        rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (N, H)
        cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # (N, W)
        # Gather rows then columns: (N, C, H, W+2p) then (N, C, H, W).
        padded = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * p))
        return padded.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))

    def _resized_crop(self, x: Tensor, generator: torch.Generator, rows=None, of: int | None = None) -> Tensor:
        from torchvision.ops import roi_align

        n, _, h, w = x.shape
        s, dev = self.resized_crop, x.device
        m = self._draws(of or n)
        area = h * w
        # All attempts at once: (m, RRC_ATTEMPTS) area fractions and log aspect ratios.
        scale = torch.empty(m, RRC_ATTEMPTS, device=dev).uniform_(*RRC_SCALE, generator=generator)
        log_ratio = torch.empty(m, RRC_ATTEMPTS, device=dev).uniform_(
            math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]), generator=generator)
        ratio = log_ratio.exp()
        bw = torch.sqrt(scale * area * ratio).round()
        bh = torch.sqrt(scale * area / ratio).round()
        fits = (bw > 0) & (bw <= w) & (bh > 0) & (bh <= h)
        first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((m,), -1, device=dev))
        # Fallback (no attempt fits): the whole image, its ratio clamped to RRC_RATIO, centred.
        in_ratio = w / h
        if in_ratio < RRC_RATIO[0]:
            fw, fh = w, round(w / RRC_RATIO[0])
        elif in_ratio > RRC_RATIO[1]:
            fw, fh = round(h * RRC_RATIO[1]), h
        else:
            fw, fh = w, h
        pick = first.clamp(min=0).unsqueeze(1)
        bw = torch.where(first >= 0, bw.gather(1, pick).squeeze(1), torch.full((m,), float(fw), device=dev))
        bh = torch.where(first >= 0, bh.gather(1, pick).squeeze(1), torch.full((m,), float(fh), device=dev))
        u = torch.rand(m, 2, device=dev, generator=generator)
        top = torch.where(first >= 0, (u[:, 0] * (h - bh + 1)).floor(), ((h - bh) / 2).floor())
        left = torch.where(first >= 0, (u[:, 1] * (w - bw + 1)).floor(), ((w - bw) / 2).floor())
        boxes = self._mine(torch.stack([left, top, left + bw, top + bh], 1), rows).expand(n, 4).to(x.dtype)
        index = torch.arange(n, device=dev, dtype=x.dtype).unsqueeze(1)
        # aligned=True: pixel k covers [k, k+1), so the box [left, left+bw) is exactly the crop's pixels.
        return roi_align(x, torch.cat([index, boxes], 1), output_size=(s, s), spatial_scale=1.0,
                         sampling_ratio=-1, aligned=True)
