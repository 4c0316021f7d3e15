"""OASIS's segmentation discriminator (Schönfeld et al., ICLR 2021), for grayscale images.

Our own implementation of the paper's design (read in the authors' code for understanding, not
copied): a U-Net of residual blocks that sees the image alone and labels every pixel with one of
the ``cond_nc`` classes of the condition map or "fake" (``cond_nc + 1`` logits per pixel). Where
the PatchGAN says how real a patch looks, this one says what each pixel is, so the generator is
told, pixel by pixel, where its drawing does not read as the class of the mask — also in the
background, which the PatchGAN only sees beside its one-hot channel.

- Encoder: ``depth`` residual blocks, each two 3x3 convs (LeakyReLU 0.2 before each but the
  first block's first) and a 2x2 average pool, with a learned 1x1 shortcut where the width
  changes; widths ``ndf x (1, 1, 2, 2, 4, 4)`` as the paper's ``128 x (1, 1, 2, 2, 4, 4)``.
- Decoder: ``depth`` residual blocks with nearest x2 upsampling, each (but the first) on the
  concatenation of the previous block's output and the encoder's output of the same size; the
  last has ``ndf`` channels and a 1x1 conv gives the logits.
- Spectral norm on every conv but the 1x1 head and no norm layers, as in the paper; the head is
  initialised at xavier gain 1 (the other networks use the reference's 0.02).
- ``depth``: as many halvings as the image size allows down to a 4x4 map, at most 6 (6 at 256
  like the paper, 5 at the default 128).

The forward returns the same structure as :class:`~cardigan.gan.discriminator.MultiscaleDiscriminator`
(one "scale": every block's output, the logits last), so feature matching works unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cardigan.gan.layers import LRELU_SLOPE, conv
from cardigan.gan.model_config import ModelConfig

WIDTH_FACTORS = (1, 1, 2, 2, 4, 4)  # the paper's channel progression, in units of ndf
MAX_DEPTH = len(WIDTH_FACTORS)
MIN_SIDE = 4  # the encoder's last map
HEAD_GAIN = 1.0


def unet_depth(image_size: int) -> int:
    """Halvings of ``image_size`` down to (not below) a ``MIN_SIDE`` map, at most ``MAX_DEPTH``."""
    depth = 0
    while (depth < MAX_DEPTH and image_size % 2 ** (depth + 1) == 0
           and image_size // 2 ** (depth + 1) >= MIN_SIDE):
        depth += 1
    return depth


class ResBlockD(nn.Module):
    """Two spectral 3x3 convs with a (learned where widths differ) shortcut; ``resample`` -1
    average-pools the block's output, +1 upsamples its input (nearest), 0 neither."""

    def __init__(self, cin: int, cout: int, resample: int, first: bool = False):
        super().__init__()
        self.resample, self.first = resample, first
        self.conv1 = conv(cin, cout, 3, sn=True)
        self.conv2 = conv(cout, cout, 3, sn=True)
        self.shortcut = conv(cin, cout, 1, sn=True) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample > 0:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        # The paper's first block convolves the image itself, without an activation before.
        dx = self.conv1(x if self.first else F.leaky_relu(x, LRELU_SLOPE))
        dx = self.conv2(F.leaky_relu(dx, LRELU_SLOPE))
        skip = x
        if self.first and self.resample < 0:
            skip = F.avg_pool2d(skip, 2)  # pool first: the 1x1 conv then runs on a quarter
        if self.shortcut is not None:
            skip = self.shortcut(skip)
        if self.resample < 0:
            dx = F.avg_pool2d(dx, 2)
            if not self.first:
                skip = F.avg_pool2d(skip, 2)
        return skip + dx


class SegmentationDiscriminator(nn.Module):
    """Per-pixel logits over ``cond_nc`` classes (index 1..cond_nc) and "fake" (index 0)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        depth = unet_depth(cfg.image_size)  # >= 4: the generator needs a side of 64 or more
        widths = [cfg.ndf * f for f in WIDTH_FACTORS[:depth]]
        self.down = nn.ModuleList(
            ResBlockD(1 if i == 0 else widths[i - 1], widths[i], -1, first=i == 0)
            for i in range(depth))
        # Decoder block i (i >= 1) reads its predecessor's output beside the encoder's block
        # depth-1-i output, both at the same size.
        outs = [widths[depth - 2 - i] if i < depth - 1 else cfg.ndf for i in range(depth)]
        ins = [widths[-1]] + [outs[i - 1] + widths[depth - 1 - i] for i in range(1, depth)]
        self.up = nn.ModuleList(ResBlockD(ins[i], outs[i], +1) for i in range(depth))
        self.head = conv(outs[-1], cfg.cond_nc + 1, 1)
        # At the reference's init gain the logits start near 0 and the N+1 loss barely moves
        # for a hundred iterations (tests/test_segmentation_discriminator.py); the spectral
        # convs before it do not care about their scale.
        nn.init.xavier_normal_(self.head.weight, gain=HEAD_GAIN)

    def forward(self, image: torch.Tensor, seg: torch.Tensor | None = None
                ) -> list[list[torch.Tensor]]:
        """``[[block outputs..., logits]]``; ``seg`` is ignored (the discriminator is not
        conditioned on the mask: the mask is its target)."""
        x = image
        skips, features = [], []
        for block in self.down:
            x = block(x)
            skips.append(x)
            features.append(x)
        for i, block in enumerate(self.up):
            if i:
                x = torch.cat([x, skips[-1 - i]], dim=1)
            x = block(x)
            features.append(x)
        return [features + [self.head(x)]]
