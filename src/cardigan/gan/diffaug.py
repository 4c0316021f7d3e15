"""Differentiable augmentation of what the discriminator sees (DiffAugment, Zhao et al. 2020).

With about a hundred training images the discriminator learns them by heart and stops teaching
the generator. DiffAugment shows it randomly transformed images instead, real and fake alike, in
the generator's update too (the transforms are differentiable, so the generator learns through
them); the generator's own output is never augmented. The discriminator here is conditioned on
the mask, so a spatial transform moves the one-hot mask with its image:

- ``translation``: a shift by up to 1/8 of the side in each direction, filled with black and
  background;
- ``cutout``: a square of half the side, anywhere (partly) in the image, set to 0 in the image and
  in every channel of the mask (no label there);
- ``color``: brightness (+U(-0.5, 0.5)) and contrast (x U(0.5, 1.5) about the image's mean) of
  the image only; the image is in [-1, 1].

Every pair (fake i, real i) gets the same draw, so the feature-matching loss compares features
of the same transform. Draws come from torch's global RNG (on the batch's device), so training
stays reproducible and resumes exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: The transforms, in the order they are applied.
TRANSFORMS = ("color", "translation", "cutout")
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def parse_policy(policy: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"translation,cutout"`` (or a list) -> the transforms in application order; "" or None:
    none. ValueError naming an unknown one."""
    if not policy:
        return ()
    names = [p.strip() for p in (policy.split(",") if isinstance(policy, str) else policy)]
    unknown = sorted(set(names) - set(TRANSFORMS) - {""})
    if unknown:
        raise ValueError(f"config key train.diffaug: unknown transform(s) {unknown}; choose from "
                         f"{list(TRANSFORMS)}")
    return tuple(t for t in TRANSFORMS if t in names)


def augment_pairs(images: Tensor, seg: Tensor, policy: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Augment ``images`` (2B, C, H, W) = [fake; real] and their one-hot ``seg`` (2B, L, H, W),
    the i-th fake and the i-th real with the same draw. Returns new tensors."""
    if not policy:
        return images, seg
    n = images.shape[0] // 2
    if images.shape[0] != 2 * n or seg.shape[0] != images.shape[0]:
        raise ValueError(f"augment_pairs needs [fake; real] of equal halves, got "
                         f"{tuple(images.shape)} and {tuple(seg.shape)}")
    for name in policy:
        if name == "color":
            images = _color(images, n)
        elif name == "translation":
            images, seg = _translation(images, seg, n)
        elif name == "cutout":
            images, seg = _cutout(images, seg, n)
    return images, seg


def _twice(t: Tensor) -> Tensor:
    """Per-sample draws for n pairs, repeated for the real half."""
    return torch.cat([t, t])


def _color(x: Tensor, n: int) -> Tensor:
    shape = (n, 1, 1, 1)
    brightness = _twice(torch.rand(shape, device=x.device) - 0.5).to(x.dtype)
    contrast = _twice(torch.rand(shape, device=x.device) + 0.5).to(x.dtype)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast + mean + brightness * 2  # [-1, 1] is twice DiffAugment's [0, 1]


def _translation(x: Tensor, seg: Tensor, n: int) -> tuple[Tensor, Tensor]:
    b, _, h, w = x.shape
    sy, sx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy = _twice(torch.randint(-sy, sy + 1, (n, 1, 1), device=x.device))
    dx = _twice(torch.randint(-sx, sx + 1, (n, 1, 1), device=x.device))
    rows = torch.arange(h, device=x.device).view(1, h, 1) - dy  # source row of each output row
    cols = torch.arange(w, device=x.device).view(1, 1, w) - dx
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)
    index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(b, 1, h * w)

    def shift(t: Tensor) -> Tensor:
        flat = t.flatten(2).gather(2, index.expand(-1, t.shape[1], -1)).view_as(t)
        return flat * inside.to(t.dtype)

    moved_seg = shift(seg)
    outside = (~inside).to(seg.dtype)
    moved_seg = torch.cat([moved_seg[:, :1] + outside, moved_seg[:, 1:]], dim=1)  # background
    return (shift(x + 1) - 1), moved_seg  # black outside


def _cutout(x: Tensor, seg: Tensor, n: int) -> tuple[Tensor, Tensor]:
    b, _, h, w = x.shape
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    cy = _twice(torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device))
    cx = _twice(torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device))
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    cut = ((rows - cy).abs() <= ch // 2) & ((cols - cx).abs() <= cw // 2)
    keep = (~cut).unsqueeze(1)
    return x * keep.to(x.dtype), seg * keep.to(seg.dtype)
