"""Building blocks shared by the networks: one-hot masks, the reference's initialisation, spectral
norm in fp32, convolutions and parameter-free norms."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

INIT_GAIN = 0.02  # the reference's init_variance, used as the xavier gain
LRELU_SLOPE = 0.2


def one_hot(mask: torch.Tensor, label_nc: int, *, check: bool = True) -> torch.Tensor:
    """(B,H,W) or (B,1,H,W) integer mask -> (B,label_nc,H,W) float32 one-hot.

    With ``check``, values outside [0, label_nc) raise ValueError before any scatter (the
    reference crashed with an opaque CUDA index error instead); that reads the mask back to the
    host, so the training loop, whose masks were checked on loading, passes ``check=False``.
    """
    if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
        raise TypeError(f"mask must be an integer tensor, got {mask.dtype}")
    if mask.dim() == 4:
        if mask.shape[1] != 1:
            raise ValueError(f"mask must be (B,H,W) or (B,1,H,W), got shape {tuple(mask.shape)}")
        mask = mask[:, 0]
    elif mask.dim() != 3:
        raise ValueError(f"mask must be (B,H,W) or (B,1,H,W), got shape {tuple(mask.shape)}")
    if check and mask.numel():
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
