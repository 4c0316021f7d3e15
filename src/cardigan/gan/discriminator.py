"""The multi-scale PatchGAN discriminator, conditioned on the one-hot mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cardigan.gan.layers import LRELU_SLOPE, conv, disc_norm
from cardigan.gan.model_config import ModelConfig


class NLayerDiscriminator(nn.Module):
    """PatchGAN: 4x4 convs, stride 2 except the last two; every stage's output is returned."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        nf = cfg.ndf
        stages: list[nn.Module] = [
            nn.Sequential(conv(1 + cfg.cond_nc, nf, 4, stride=2, padding=2),
                          nn.LeakyReLU(LRELU_SLOPE))
        ]
        for n in range(1, cfg.n_layers_D):
            nf_prev, nf = nf, min(nf * 2, 512)
            stride = 1 if n == cfg.n_layers_D - 1 else 2
            stages.append(nn.Sequential(
                conv(nf_prev, nf, 4, stride=stride, padding=2, bias=False, sn=True),
                disc_norm(cfg.norm_D, nf),
                nn.LeakyReLU(LRELU_SLOPE),
            ))
        stages.append(conv(nf, 1, 4, stride=1, padding=2))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    """``num_D`` PatchGANs at successively halved resolutions."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.scales = nn.ModuleList(NLayerDiscriminator(cfg) for _ in range(cfg.num_D))

    def forward(self, image: torch.Tensor, seg: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per scale, ``n_layers_D + 1`` feature maps; the last is the patch prediction map."""
        x = torch.cat([image, seg], dim=1)
        results = []
        for i, disc in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            results.append(disc(x))
        return results

