"""Spatially-adaptive normalisation (SPADE) and the SPADE residual block, with the sparse path that
runs the gamma/beta convs only near label edges on the CPU."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from cardigan.gan.layers import LRELU_SLOPE, conv, param_free_norm
from cardigan.gan.model_config import ModelConfig


def _fused_conv(parts: Sequence[nn.Conv2d]) -> nn.Conv2d:
    """One Conv2d computing ``parts`` (same input, kernel, stride, padding) side by side: their
    weights and biases concatenated along the output channels. Built without drawing from the RNG
    (the parts were initialised, in the order the separate layers used to be, before)."""
    first = parts[0]
    fused = skip_init(nn.Conv2d, first.in_channels, sum(p.out_channels for p in parts),
                      first.kernel_size, first.stride, first.padding, device=first.weight.device)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([p.weight for p in parts]))
        fused.bias.copy_(torch.cat([p.bias for p in parts]))
    return fused


def _modulate(normed: torch.Tensor, gamma_beta: torch.Tensor) -> torch.Tensor:
    """``normed * (1 + gamma) + beta``; with ``k`` times more rows in ``normed`` than in
    ``gamma_beta`` (k styles per mask), rows ``i*k .. i*k+k-1`` use mask ``i``."""
    gamma, beta = gamma_beta.chunk(2, dim=1)
    n, m = normed.shape[0], gamma_beta.shape[0]
    if n == m:
        return normed * (1 + gamma) + beta
    if n % m:
        raise ValueError(f"{n} feature rows cannot share the features of {m} masks")
    out = normed.unflatten(0, (m, n // m)) * (1 + gamma.unsqueeze(1)) + beta.unsqueeze(1)
    return out.flatten(0, 1)


#: Whether :func:`mask_sites` may skip the gamma/beta convolutions inside one-label regions.
SPARSE_SPADE = True
#: Resized masks with a smaller side use the dense convolutions (nearly every pixel is near an
#: edge of the mask or of the image there) ...
SPARSE_MIN_SIDE = 16
#: ... and so do masks where a larger share of the pixels is near an edge.
SPARSE_MAX_SHARE = 0.35
#: The mask-only part of a SPADE layer is two 3x3 convs: each output pixel sees a 5x5 window.
_REACH = 2


@dataclass(frozen=True)
class MaskSites:
    """Where a resized one-hot mask needs SPADE's gamma/beta convolutions.

    Both mask-only convs of a SPADE layer (the shared 3x3 conv + ReLU, then the 3x3 gamma/beta
    conv) are spatially invariant, so wherever the 5x5 window around a pixel is one label, away
    from the zero-padded image border, gamma and beta equal that label's constant; only the
    pixels near a label edge need the convolution. At 128-256 px that is a small share of a
    heart mask, and the gamma/beta convs are most of the generator's FLOPs, so on the CPU this
    computes the same function with a fraction of the work (on CUDA dense convs are faster).

    ``image``, ``pixel`` (P,): the image and the flat pixel index (y * W + x) of each pixel that
    needs the convolution; ``taps`` (P*9,): for each of them, the rows of its 3x3 window in the
    channels-last, 1-padded map (B*(H+2)*(W+2) rows); ``shape``: (B, H, W).
    """

    image: torch.Tensor
    pixel: torch.Tensor
    taps: torch.Tensor
    shape: tuple[int, int, int]


@torch.no_grad()
def mask_sites(seg: torch.Tensor) -> MaskSites | None:
    """:class:`MaskSites` of a (B, labels, H, W) mask, or None where the dense convs are the
    better choice (CUDA, small sides, masks that are mostly edges, ``SPARSE_SPADE`` off). Pixels
    whose window is not one-hot count as edges, so any input gives the dense result."""
    b, _, h, w = seg.shape
    if not SPARSE_SPADE or seg.device.type != "cpu" or min(h, w) < SPARSE_MIN_SIDE:
        return None
    k, r = 2 * _REACH + 1, _REACH
    hot = ((seg.amax(1) == 1) & (seg.sum(1) == 1)).float()[:, None]
    uniform = (F.max_pool2d(seg, k, 1, r) == -F.max_pool2d(-seg, k, 1, r)).all(1)
    inner = uniform & (-F.max_pool2d(-hot, k, 1, r)[:, 0] == 1)
    inner[:, :r] = inner[:, h - r:] = False
    inner[:, :, :r] = inner[:, :, w - r:] = False
    edge = (~inner).flatten().nonzero().squeeze(1)
    if edge.numel() > SPARSE_MAX_SHARE * b * h * w:
        return None
    image, pixel = edge // (h * w), edge % (h * w)
    corner = image * (h + 2) * (w + 2) + (pixel // w) * (w + 2) + pixel % w
    offsets = torch.tensor([dy * (w + 2) + dx for dy in range(3) for dx in range(3)])
    taps = (corner[:, None] + offsets).flatten()
    return MaskSites(image, pixel, taps, (b, h, w))


class SPADE(nn.Module):
    """The per-layer part of a spatially-adaptive normalisation ``norm(x) * (1 + gamma) + beta``:
    the parameter-free norm (absent when the block reuses another layer's normalised input) and
    one 3x3 conv giving gamma and beta (its first and second half of output channels) from the
    block's shared hidden activation of the mask."""

    def __init__(self, channels: int, label_nc: int, hidden: int, norm: str | None):
        super().__init__()
        self.channels, self.hidden = channels, hidden
        if norm is not None:
            self.norm = param_free_norm(norm, channels)
        # Initialised as two separate convs (gamma then beta), as in the paper's layout, so the
        # initial weights are those of separate layers (xavier's scale depends on fan-out).
        self._init_hidden = conv(label_nc, hidden, 3)
        self.gamma_beta = _fused_conv([conv(hidden, channels, 3), conv(hidden, channels, 3)])


class SPADEResBlock(nn.Module):
    """Two (SPADE -> LeakyReLU -> 3x3 conv) stages plus a (learned when in != out) shortcut.

    The mask-only half of the block (:meth:`mask_features`: mask -> shared hidden activation ->
    gamma/beta of every SPADE layer) is separate from the half that sees the features
    (:meth:`forward`), so several styles of one mask can share it. Its layout is fused: one conv
    computes the hidden activations of all the block's SPADE layers (``shared``: 2 or 3 x
    ``spade_hidden`` channels), one conv per layer computes gamma and beta together, and the
    shortcut's SPADE reuses ``norm_0``'s normalisation of the same input. Same function as three
    separate SPADE layers (``convert_legacy_state_dict`` maps the old weights).
    """

    def __init__(self, cin: int, cout: int, cfg: ModelConfig):
        super().__init__()
        mid = min(cin, cout)
        self.learned_shortcut = cin != cout
        args = (cfg.seg_nc, cfg.spade_hidden)
        # Construction order = the RNG order of the unfused layout (norm_0, conv_0, norm_1,
        # conv_1, norm_s, conv_s), so a seed gives the same initial function as before.
        self.norm_0 = SPADE(cin, *args, cfg.norm_G)
        self.conv_0 = conv(cin, mid, 3, sn=True)
        self.norm_1 = SPADE(mid, *args, cfg.norm_G)
        self.conv_1 = conv(mid, cout, 3, sn=True)
        layers = [self.norm_0, self.norm_1]
        if self.learned_shortcut:
            self.norm_s = SPADE(cin, *args, None)  # normalises like norm_0: computed once
            self.conv_s = conv(cin, cout, 1, bias=False, sn=True)
            layers.append(self.norm_s)
        self.shared = _fused_conv([layer._init_hidden for layer in layers])
        for layer in layers:
            del layer._init_hidden
        self.hidden = cfg.spade_hidden

    def spade_layers(self) -> list[SPADE]:
        """The SPADE layers in the order of ``shared``'s output channel groups."""
        return [self.norm_0, self.norm_1] + ([self.norm_s] if self.learned_shortcut else [])

    def mask_features(self, seg: torch.Tensor, sites: MaskSites | None = None
                      ) -> list[torch.Tensor]:
        """Per SPADE layer, gamma and beta concatenated, from the one-hot mask already resized
        (nearest) to this block's input size. With ``sites`` (:func:`mask_sites` of ``seg``),
        the gamma/beta convs run only at the pixels near a label edge; elsewhere gamma and beta
        are their label's constant (same function, see :class:`MaskSites`)."""
        h = self.hidden
        if sites is None:
            actv = F.relu(self.shared(seg))
            return [layer.gamma_beta(actv[:, i * h:(i + 1) * h])
                    for i, layer in enumerate(self.spade_layers())]
        b, side_h, side_w = sites.shape
        seg_rows = seg.contiguous(memory_format=torch.channels_last)  # pixels as rows
        out = []
        for i, layer in enumerate(self.spade_layers()):
            conv_gb, part = layer.gamma_beta, slice(i * h, (i + 1) * h)
            w_h, b_h = self.shared.weight[part], self.shared.bias[part]
            # inside a one-label region every tap of both convs sees the same input
            region = F.relu(w_h.sum((2, 3)).t() + b_h)  # (labels, hidden)
            table = F.linear(region, conv_gb.weight.sum((2, 3)), conv_gb.bias)  # (labels, 2C)
            inside = F.conv2d(seg, table.t()[:, :, None, None].to(seg.dtype))
            # near an edge: the conv, on each edge pixel's 3x3 window (zero-padded like it)
            actv = F.pad(F.relu(F.conv2d(seg_rows, w_h, b_h, padding=1)), (1, 1, 1, 1))
            windows = actv.permute(0, 2, 3, 1).reshape(-1, h).index_select(0, sites.taps)
            flat_w = conv_gb.weight.permute(0, 2, 3, 1).reshape(conv_gb.out_channels, -1)
            edge = F.linear(windows.view(len(sites.pixel), 9 * h), flat_w, conv_gb.bias)
            full = inside.flatten(2).transpose(1, 2).index_put(
                (sites.image, sites.pixel), edge.to(inside.dtype))
            # NCHW like the features it modulates (mixed layouts make the products slow)
            out.append(full.transpose(1, 2).reshape_as(inside).contiguous())
        return out

    def forward(self, x: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        normed = self.norm_0.norm(x)
        x_s = self.conv_s(_modulate(normed, features[2])) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(_modulate(normed, features[0]), LRELU_SLOPE))
        dx = self.conv_1(F.leaky_relu(_modulate(self.norm_1.norm(dx), features[1]),
                                      LRELU_SLOPE))
        return x_s + dx


