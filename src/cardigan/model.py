"""SPADE (Park et al., CVPR 2019) for grayscale images: generator, VAE encoder, discriminator.

Our own implementation of the architecture of the paper and of NVlabs/SPADE (read for
understanding, not copied), adapted to one output channel and to any square ``image_size`` that
the upsampling depth divides:

- ``SPADE``: ``norm(x) * (1 + gamma(m)) + beta(m)``; ``norm`` is parameter-free (instance norm,
  or a plain ``BatchNorm2d(affine=False)`` that ``nn.SyncBatchNorm.convert_sync_batchnorm`` turns
  into the synchronised batch norm of the paper under DDP); gamma and beta come from a shared
  3x3 conv (``spade_hidden`` channels, 128 in the paper) + ReLU on the mask resized (nearest) to
  x's size, then a 3x3 conv (one conv here, gamma and beta its two halves of output channels).
- ``SPADEResBlock``: two (SPADE -> LeakyReLU 0.2 -> 3x3 conv) stages, middle width min(in, out),
  learned 1x1 shortcut (with its own SPADE) when in != out; spectral norm on the block convs.
  Fused layout, same function: the hidden convs of the block's 2-3 SPADE layers are one conv
  (they all see the same resized mask), and the shortcut's SPADE reuses norm_0's normalisation of
  the same input. The mask-only half (hidden activation, gamma, beta) is computed apart
  (``mask_features``), so several styles of one mask share it. On the CPU the gamma/beta convs
  (most of the generator's FLOPs) run only near label edges: inside a one-label region their
  output is that label's constant (:class:`MaskSites`; same function, fewer FLOPs).
- ``SPADEGenerator``: start map at ``image_size / 2**ups`` (from the mask through a 3x3 conv, or
  from z through a linear layer with the VAE), head (16 ngf) -> middle x2 (16 ngf) -> up blocks
  (8, 4, 2, 1 ngf [, ngf/2 for "most"]) with nearest x2 upsampling, LeakyReLU, 3x3 conv, tanh.
  ``normal`` = 5 upsamplings, ``more`` = 6 (one between the middle blocks), ``most`` = 7 (plus a
  final ngf/2 block), as in the reference.
- ``ConvEncoder``: stride-2 3x3 convs (spectral + instance norm) to a 4x4 map, then linear layers
  to mu and logvar of z. The reference resizes every image to 256x256 first; we instead use as
  many stride-2 layers as the size allows (6 at 256, like the reference) and an adaptive average
  pool to 4x4, so any image size works without resampling the input.
- ``MultiscaleDiscriminator``: ``num_D`` PatchGANs on the image concatenated with the one-hot
  mask, the input average-pooled (3x3, stride 2) between scales; every layer's output is returned
  so the generator can be trained with feature matching.

Weights are initialised like the reference (xavier normal, gain 0.02; zero biases), drawing only
from torch's global RNG, so a model built after ``torch.manual_seed(s)`` is always the same.
Spectral norm is our :class:`SpectralNormFP32` parametrization (torch's estimate and state_dict
keys, but the power iteration and sigma in fp32 under autocast): it survives ``deepcopy`` (EMA),
``state_dict`` round trips, DDP with several forwards per step, and ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize, skip_init

from .atomic import atomic_output
from .defaults import default

UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}
NORMS = ("instance", "batch")
INIT_GAIN = 0.02  # the reference's init_variance, used as the xavier gain
LRELU_SLOPE = 0.2
GENERATOR_FORMAT = "cardigan-generator/2"
#: Older generator files that load_generator still reads (converted on load).
LEGACY_GENERATOR_FORMATS = ("cardigan-generator/1",)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the networks (stored inside every generator file); field
    defaults are the config schema's (``train`` section, ``data.image_size``)."""

    label_nc: int = default("train", "label_nc")
    image_size: int = default("data", "image_size")
    ngf: int = default("train", "ngf")
    ndf: int = default("train", "ndf")
    num_upsampling_layers: str = default("train", "num_upsampling_layers")  # 5, 6 or 7 ups
    norm_G: str = default("train", "norm_G")  # param-free norm inside SPADE
    norm_D: str = default("train", "norm_D")
    spade_hidden: int = default("train", "spade_hidden")
    num_D: int = default("train", "num_D")
    n_layers_D: int = default("train", "n_layers_D")
    use_vae: bool = default("train", "use_vae")
    z_dim: int = default("train", "z_dim")
    noise_dim: int = default("train", "noise_dim")  # OASIS-style 3D noise channels (0: none)
    texture_noise: bool = default("train", "texture_noise")  # per-pixel noise after each block

    def __post_init__(self) -> None:
        for name in ("label_nc", "image_size", "ngf", "ndf", "spade_hidden", "num_D",
                     "n_layers_D", "z_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model setting {name} must be a positive integer, got {value!r}")
        if self.label_nc < 2:
            raise ValueError(f"model setting label_nc must be >= 2, got {self.label_nc}")
        if self.num_upsampling_layers not in UPSAMPLINGS:
            raise ValueError(
                f"model setting num_upsampling_layers must be one of {sorted(UPSAMPLINGS)}, "
                f"got {self.num_upsampling_layers!r}"
            )
        for name in ("norm_G", "norm_D"):
            if getattr(self, name) not in NORMS:
                raise ValueError(
                    f"model setting {name} must be one of {list(NORMS)}, got {getattr(self, name)!r}"
                )
        for name in ("use_vae", "texture_noise"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"model setting {name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.noise_dim, bool) or not isinstance(self.noise_dim, int) \
                or self.noise_dim < 0:
            raise ValueError(f"model setting noise_dim must be an integer >= 0, got "
                             f"{self.noise_dim!r}")
        if self.use_vae and self.noise_dim:
            raise ValueError("model settings use_vae and noise_dim > 0 are two different style "
                             "sources: choose one (train.use_vae or train.noise_dim)")
        factor = 2**self.n_upsamplings
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**{self.n_upsamplings} = "
                f"{factor} (num_upsampling_layers={self.num_upsampling_layers!r}): use a multiple "
                f"of {factor} or fewer upsampling layers"
            )
        if self.image_size < 2 * factor:
            raise ValueError(
                f"image_size {self.image_size} with num_upsampling_layers="
                f"{self.num_upsampling_layers!r} gives a 1x1 start map, which SPADE's norm cannot "
                f"normalise: use image_size >= {2 * factor} or fewer upsampling layers"
            )
        if self.num_upsampling_layers == "most" and self.ngf < 2:
            raise ValueError("num_upsampling_layers='most' needs ngf >= 2 (its last block has ngf/2)")

    @property
    def n_upsamplings(self) -> int:
        return UPSAMPLINGS[self.num_upsampling_layers]

    @property
    def start_size(self) -> int:
        """Side of the generator's first feature map (8 for 256 with 'normal')."""
        return self.image_size // 2**self.n_upsamplings

    @property
    def style_dim(self) -> int:
        """Length of the per-image style vector ``z`` (0: the generator takes none)."""
        if self.use_vae:
            return self.z_dim
        return self.noise_dim

    @property
    def seg_nc(self) -> int:
        """Channels of the map every SPADE layer reads: the one-hot mask (+ the 3D noise)."""
        return self.label_nc + self.noise_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model setting(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_train_config(cls, train: dict, image_size: int) -> ModelConfig:
        """Pick the model fields out of ``config['train']`` (other keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"image_size"}
        return cls(image_size=image_size, **{k: train[k] for k in sorted(names) if k in train})

    def diff(self, other: ModelConfig) -> dict[str, tuple]:
        """``{field: (self_value, other_value)}`` for every field that differs."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
def one_hot(mask: torch.Tensor, label_nc: int) -> torch.Tensor:
    """(B,H,W) or (B,1,H,W) integer mask -> (B,label_nc,H,W) float32 one-hot.

    Values outside [0, label_nc) raise ValueError before any scatter (the reference crashed
    with an opaque CUDA index error instead).
    """
    if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
        raise TypeError(f"mask must be an integer tensor, got {mask.dtype}")
    if mask.dim() == 4:
        if mask.shape[1] != 1:
            raise ValueError(f"mask must be (B,H,W) or (B,1,H,W), got shape {tuple(mask.shape)}")
        mask = mask[:, 0]
    elif mask.dim() != 3:
        raise ValueError(f"mask must be (B,H,W) or (B,1,H,W), got shape {tuple(mask.shape)}")
    if mask.numel():
        lo, hi = int(mask.min()), int(mask.max())
        if hi >= label_nc:
            raise ValueError(
                f"mask has value {hi} >= label_nc={label_nc}: labels must be 0..{label_nc - 1} "
                f"(raise train.label_nc or fix the masks)"
            )
        if lo < 0:
            raise ValueError(f"mask has negative value {lo}: labels must be 0..{label_nc - 1}")
    b, h, w = mask.shape
    out = torch.zeros(b, label_nc, h, w, dtype=torch.float32, device=mask.device)
    return out.scatter_(1, mask.long().unsqueeze(1), 1.0)


def _init(layer: nn.Module) -> nn.Module:
    """The reference's init: xavier normal (gain 0.02) weights, zero biases; BN weight ~ N(1, .02)."""
    if isinstance(layer, nn.BatchNorm2d):
        nn.init.normal_(layer.weight, 1.0, INIT_GAIN)
        nn.init.zeros_(layer.bias)
    else:
        nn.init.xavier_normal_(layer.weight, gain=INIT_GAIN)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return layer


class SpectralNormFP32(nn.Module):
    """Spectral-norm parametrization ``W / sigma(W)`` whose power iteration and sigma always run
    in fp32, also inside a bf16 autocast region.

    Same estimate, buffers (``_u``, ``_v``) and state_dict keys as
    ``torch.nn.utils.parametrizations.spectral_norm`` (one power iteration per training forward,
    none in eval mode), but CUDA autocast puts ``torch.mv`` on its lower-precision list, so there
    u, v and sigma would come out bf16 (and torch 2.3's ``vdot`` refuses fp32 x bf16). Here
    autocast is switched off for those few vector operations and u/v are read as fp32 whatever
    dtype they were handed.
    """

    def __init__(self, weight: torch.Tensor, n_power_iterations: int = 1, eps: float = 1e-12):
        super().__init__()
        mat = weight.detach().flatten(1)
        self.eps = eps
        self.n_power_iterations = n_power_iterations
        u = mat.new_empty(mat.shape[0]).normal_(0, 1)
        v = mat.new_empty(mat.shape[1]).normal_(0, 1)
        self.register_buffer("_u", F.normalize(u, dim=0, eps=eps))
        self.register_buffer("_v", F.normalize(v, dim=0, eps=eps))
        self._power_method(mat, 15)

    @torch.no_grad()
    def _power_method(self, mat: torch.Tensor, iterations: int) -> None:
        u, v = self._u.float(), self._v.float()
        for _ in range(iterations):
            u = F.normalize(torch.mv(mat, v), dim=0, eps=self.eps)
            v = F.normalize(torch.mv(mat.t(), u), dim=0, eps=self.eps)
        # In place: DDP broadcasts these buffers and the EMA copies them.
        self._u.copy_(u)
        self._v.copy_(v)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with (torch.autocast(weight.device.type, enabled=False)
              if weight.device.type != "meta" else contextlib.nullcontext()):
            w32 = weight.float()
            mat = w32.flatten(1)
            if self.training:
                self._power_method(mat.detach(), self.n_power_iterations)
            u = self._u.float().clone(memory_format=torch.contiguous_format)
            v = self._v.float().clone(memory_format=torch.contiguous_format)
            sigma = torch.vdot(u, torch.mv(mat, v))
            return (w32 / sigma).to(weight.dtype)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value


def spectral_norm(layer: nn.Module) -> nn.Module:
    """Register :class:`SpectralNormFP32` on ``layer.weight`` (``layer.parametrizations.weight``)."""
    parametrize.register_parametrization(layer, "weight", SpectralNormFP32(layer.weight))
    return layer


def conv(cin: int, cout: int, k: int, stride: int = 1, padding: int | None = None,
         bias: bool = True, sn: bool = False) -> nn.Module:
    """An initialised Conv2d, spectral-normalised when ``sn`` (init first, so u/v match it)."""
    layer = _init(nn.Conv2d(cin, cout, k, stride, k // 2 if padding is None else padding,
                            bias=bias))
    return spectral_norm(layer) if sn else layer


def linear(cin: int, cout: int) -> nn.Linear:
    return _init(nn.Linear(cin, cout))


def param_free_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    return nn.BatchNorm2d(channels, affine=False)  # convert_sync_batchnorm makes it synchronised


def disc_norm(kind: str, channels: int) -> nn.Module:
    """The discriminator's norm after a spectral conv: as in the reference, instance norm
    without affine, batch norm with it."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    return _init(nn.BatchNorm2d(channels, affine=True))


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


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------
class SPADEGenerator(nn.Module):
    """One-hot mask (and a style) -> (B,1,H,W) image in [-1, 1].

    Styles (:mod:`cardigan.styles`): with the VAE, ``z`` (B, z_dim) replaces the downsampled mask
    as the start map (the paper's multimodal SPADE); with ``noise_dim`` > 0, ``z`` (B, noise_dim)
    is replicated over the image and concatenated to the mask every SPADE layer reads (OASIS's
    3D noise). With ``texture_noise``, a per-pixel N(0, 1) map ``noise`` (B, 1, H, W) is added,
    with a learned per-channel scale (zero at the start), after every block, average-pooled to
    the block's resolution and rescaled to unit variance: the generator's source of speckle.
    Missing ``z`` or ``noise`` are drawn from torch's global RNG.

    Several styles per mask: ``forward(seg, z, noise)`` with ``k * B`` rows of ``z``/``noise``
    for ``B`` masks gives ``k * B`` images, rows ``i*k .. i*k+k-1`` for mask ``i``; the mask-only
    part of every SPADE layer (about two thirds of the FLOPs at 256 px) is then computed once per
    mask. To reuse it across calls, pass ``cached=generator.mask_features(seg)``. (With 3D
    noise the SPADE layers read the noise too: nothing is mask-only, so there is no cache.)
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        nf, s = cfg.ngf, cfg.start_size
        if cfg.use_vae:
            self.fc = linear(cfg.z_dim, 16 * nf * s * s)
        else:
            self.fc = conv(cfg.seg_nc, 16 * nf, 3)
        self.head_0 = SPADEResBlock(16 * nf, 16 * nf, cfg)
        self.G_middle_0 = SPADEResBlock(16 * nf, 16 * nf, cfg)
        self.G_middle_1 = SPADEResBlock(16 * nf, 16 * nf, cfg)
        self.up_0 = SPADEResBlock(16 * nf, 8 * nf, cfg)
        self.up_1 = SPADEResBlock(8 * nf, 4 * nf, cfg)
        self.up_2 = SPADEResBlock(4 * nf, 2 * nf, cfg)
        self.up_3 = SPADEResBlock(2 * nf, 1 * nf, cfg)
        final_nc = nf
        if cfg.num_upsampling_layers == "most":
            self.up_4 = SPADEResBlock(nf, nf // 2, cfg)
            final_nc = nf // 2
        self.conv_img = conv(final_nc, 1, 3)
        # (block, upsample its input first?) in order; side of block i = start * 2**(ups so far)
        more = cfg.num_upsampling_layers in ("more", "most")
        self.plan: list[tuple[str, bool]] = [
            ("head_0", False), ("G_middle_0", True), ("G_middle_1", more), ("up_0", True),
            ("up_1", True), ("up_2", True), ("up_3", True)]
        if cfg.num_upsampling_layers == "most":
            self.plan.append(("up_4", True))
        if cfg.texture_noise:
            self.noise_scale = nn.ParameterDict({
                name: nn.Parameter(torch.zeros(1, getattr(self, name).conv_1.out_channels, 1, 1))
                for name, _ in self.plan})

    @staticmethod
    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")

    def _check_seg(self, seg: torch.Tensor) -> None:
        if seg.dim() != 4 or seg.shape[1] != self.cfg.label_nc:
            raise ValueError(f"seg must be a (B,{self.cfg.label_nc},H,W) one-hot map, got shape "
                             f"{tuple(seg.shape)}")

    def _block_inputs(self):
        """(block, upsample first?, side of its input) for every SPADE block, in order."""
        side = self.cfg.start_size
        for name, upsample in self.plan:
            side *= 2 if upsample else 1
            yield getattr(self, name), upsample, side

    def mask_features(self, seg: torch.Tensor) -> list[list[torch.Tensor]]:
        """The mask-only part of every SPADE layer (gamma and beta, per block and layer), to pass
        as ``forward(seg, z, cached=...)`` for any number of styles of these masks."""
        self._check_seg(seg)
        if self.cfg.noise_dim:
            raise ValueError("a generator with 3D noise (noise_dim > 0) has no mask-only "
                             "features to cache: its SPADE layers read the noise too")
        return [block.mask_features(*resized)
                for (block, _, _), resized in zip(self._block_inputs(), self._resized(seg))]

    def _resized(self, seg: torch.Tensor):
        """Per block in order: (the mask resized to its input side, its :class:`MaskSites` or
        None), each side computed once."""
        done: dict[int, tuple[torch.Tensor, MaskSites | None]] = {}
        for _, _, side in self._block_inputs():
            if side not in done:
                resized = F.interpolate(seg, size=(side, side), mode="nearest")
                # with 3D noise the mask carries noise planes: no one-label regions
                done[side] = resized, None if self.cfg.noise_dim else mask_sites(resized)
            yield done[side]

    def _rows(self, seg: torch.Tensor, z: torch.Tensor | None, noise: torch.Tensor | None) -> int:
        """Images to make: ``k * B`` for ``B`` masks, from the rows of the styles given."""
        b = seg.shape[0]
        rows = {t.shape[0] for t in (z, noise) if t is not None} or {b}
        if len(rows) != 1 or next(iter(rows)) % b:
            raise ValueError(f"z and noise must have the same number of rows, a multiple of the "
                             f"{b} masks; got {[t.shape[0] for t in (z, noise) if t is not None]}")
        return rows.pop()

    def forward(self, seg: torch.Tensor, z: torch.Tensor | None = None,
                noise: torch.Tensor | None = None,
                cached: list[list[torch.Tensor]] | None = None) -> torch.Tensor:
        cfg = self.cfg
        self._check_seg(seg)
        s = cfg.start_size
        n = self._rows(seg, z if cfg.style_dim else None,
                       noise if cfg.texture_noise else None)
        if cfg.style_dim:
            if z is None:
                z = torch.randn(n, cfg.style_dim, device=seg.device)
            if tuple(z.shape) != (n, cfg.style_dim):
                raise ValueError(f"z must be ({n}, {cfg.style_dim}), got {tuple(z.shape)}")
        if cfg.texture_noise:
            if noise is None:
                noise = torch.randn(n, 1, *seg.shape[-2:], device=seg.device)
            if tuple(noise.shape) != (n, 1, *seg.shape[-2:]):
                raise ValueError(f"noise must be ({n}, 1, {seg.shape[-2]}, {seg.shape[-1]}), got "
                                 f"{tuple(noise.shape)}")
        else:
            noise = None
        if cfg.noise_dim:
            if cached is not None:
                raise ValueError("cached mask features cannot be used with 3D noise "
                                 "(noise_dim > 0)")
            seg = seg.repeat_interleave(n // seg.shape[0], dim=0)
            planes = z.to(seg.dtype)[:, :, None, None].expand(-1, -1, *seg.shape[-2:])
            seg = torch.cat([seg, planes], dim=1)
        if cfg.use_vae:
            x = self.fc(z).view(-1, 16 * cfg.ngf, s, s)
            if seg.is_contiguous(memory_format=torch.channels_last):
                x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = self.fc(F.interpolate(seg, size=(s, s), mode="nearest"))
            x = x.repeat_interleave(n // x.shape[0], dim=0)
        if cached is not None and len(cached) != len(self.plan):
            raise ValueError(f"cached holds {len(cached)} blocks' features, the generator has "
                             f"{len(self.plan)}: pass generator.mask_features(seg)")
        resized = self._resized(seg) if cached is None else iter(())
        for i, ((name, _), (block, upsample, _)) in enumerate(
                zip(self.plan, self._block_inputs())):
            if upsample:
                x = self.up(x)
            features = cached[i] if cached is not None else block.mask_features(*next(resized))
            x = block(x, features)
            if noise is not None:
                k = noise.shape[-1] // x.shape[-1]
                # The mean of k*k unit-variance values has variance 1/k^2: times k keeps it 1.
                pooled = F.avg_pool2d(noise, k) * k if k > 1 else noise
                x = x + self.noise_scale[name] * pooled.to(x.dtype)
        x = self.conv_img(F.leaky_relu(x, LRELU_SLOPE))
        return torch.tanh(x)


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


class NLayerDiscriminator(nn.Module):
    """PatchGAN: 4x4 convs, stride 2 except the last two; every stage's output is returned."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        nf = cfg.ndf
        stages: list[nn.Module] = [
            nn.Sequential(conv(1 + cfg.label_nc, nf, 4, stride=2, padding=2),
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


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, 1) from torch's RNG."""
    std = torch.exp(0.5 * logvar)
    return mu + torch.randn_like(std) * std


def build_models(
    cfg: ModelConfig,
) -> tuple[SPADEGenerator, MultiscaleDiscriminator, ConvEncoder | None]:
    """Generator, discriminator and (with ``use_vae``) encoder, in that order, from torch's RNG."""
    generator = SPADEGenerator(cfg)
    discriminator = MultiscaleDiscriminator(cfg)
    encoder = ConvEncoder(cfg) if cfg.use_vae else None
    return generator, discriminator, encoder


# --------------------------------------------------------------------------------------------
# Generator files
# --------------------------------------------------------------------------------------------
def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) and/or torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


def convert_legacy_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A generator state_dict of the unfused SPADE layout (``cardigan-generator/1``: per SPADE
    layer ``shared.0``, ``gamma``, ``beta`` convs and a norm each) in today's fused layout: the
    hidden convs of a block concatenated into ``shared`` (order norm_0, norm_1, norm_s), gamma and
    beta into ``gamma_beta``; the shortcut's norm buffers (batch-norm statistics, identical to
    norm_0's since both normalised the same input) are dropped. Other keys pass unchanged."""
    out: dict[str, torch.Tensor] = {}
    blocks = sorted({k.split(".norm_0.shared.0.")[0] for k in state if ".norm_0.shared.0." in k})
    for k, v in state.items():
        if not any(k.startswith(b + ".norm_") for b in blocks):
            out[k] = v
    for b in blocks:
        layers = [n for n in ("norm_0", "norm_1", "norm_s") if f"{b}.{n}.gamma.weight" in state]
        for part in ("weight", "bias"):
            out[f"{b}.shared.{part}"] = torch.cat([state[f"{b}.{n}.shared.0.{part}"]
                                                   for n in layers])
            for n in layers:
                out[f"{b}.{n}.gamma_beta.{part}"] = torch.cat(
                    [state[f"{b}.{n}.gamma.{part}"], state[f"{b}.{n}.beta.{part}"]])
        for k, v in state.items():
            for n in ("norm_0", "norm_1"):
                if k.startswith(f"{b}.{n}.norm."):
                    out[k] = v
    return out


def save_generator(path, generator: nn.Module, cfg: ModelConfig, extra: dict | None = None) -> None:
    """Write the generator weights and its ModelConfig atomically (tmp file + os.replace).

    Tensors are stored on the CPU; ``extra`` must hold only primitives/tensors so that the file
    loads with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in unwrap(generator).state_dict().items()}
    payload = {"format": GENERATOR_FORMAT, "model_config": cfg.to_dict(),
               "state_dict": state, "extra": dict(extra or {})}
    # Through a file object: given a path, torch.save names the archive after the (random)
    # temporary file, and identical weights would no longer give identical bytes.
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)


def load_generator(path, map_location: Any = "cpu") -> tuple[SPADEGenerator, ModelConfig, dict]:
    """Rebuild a generator saved by ``save_generator``; returns ``(generator.eval(), cfg, extra)``.

    Does not disturb torch's global RNG. Raises FileNotFoundError / ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"generator file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors: the file is corrupt or not a torch file
        raise ValueError(f"{path} is not a readable cardiGAN generator file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") not in (GENERATOR_FORMAT,
                                                                       *LEGACY_GENERATOR_FORMATS):
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{path} is not a cardiGAN generator file (format {found!r}, "
            f"expected {GENERATOR_FORMAT!r})"
        )
    try:
        cfg = ModelConfig.from_dict(payload["model_config"])
        with torch.random.fork_rng(devices=[]):  # building draws from the RNG: keep the caller's
            generator = SPADEGenerator(cfg)
        weights = payload["state_dict"]
        if payload["format"] in LEGACY_GENERATOR_FORMATS:
            weights = convert_legacy_state_dict(weights)
        generator.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} is a corrupt cardiGAN generator file: {exc}") from exc
    if map_location is not None:
        generator.to(map_location)
    return generator.eval(), cfg, dict(payload.get("extra", {}))
