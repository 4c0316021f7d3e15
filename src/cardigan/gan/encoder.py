"""The VAE style encoder: image -> (mu, logvar) of the style code."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cardigan.gan.layers import LRELU_SLOPE, conv, linear
from cardigan.gan.model_config import ModelConfig


class ConvEncoder(nn.Module):
    """VAE image encoder: (B,1,H,W) image -> (mu, logvar), each (B, z_dim)."""

    WIDTHS = (1, 2, 4, 8, 8, 8)  # multiples of the base width, as in the reference
    POOLED = 4  # side of the map fed to the linear layers

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # As in the reference: ngf (not ndf) channels and always instance norm (its norm_E).
        nf = cfg.ngf
        n_layers = max(1, min(len(self.WIDTHS), (cfg.image_size // self.POOLED).bit_length() - 1))
        layers: list[nn.Module] = []
        cin = 1
        for i in range(n_layers):
            cout = nf * self.WIDTHS[i]
            if i:
                layers.append(nn.LeakyReLU(LRELU_SLOPE))
            layers += [conv(cin, cout, 3, stride=2, bias=False, sn=True),
                       nn.InstanceNorm2d(cout, affine=False)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        flat = cin * self.POOLED * self.POOLED
        self.fc_mu = linear(flat, cfg.z_dim)
        self.fc_var = linear(flat, cfg.z_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.leaky_relu(self.layers(image), LRELU_SLOPE)
        x = F.adaptive_avg_pool2d(x, self.POOLED).flatten(1)
        return self.fc_mu(x), self.fc_var(x)



def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, 1) from torch's RNG."""
    std = torch.exp(0.5 * logvar)
    return mu + torch.randn_like(std) * std

