"""The SPADE generator: one-hot mask (and a style) -> image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cardigan.gan.layers import LRELU_SLOPE, conv, linear
from cardigan.gan.model_config import ModelConfig
from cardigan.gan.spade import MaskSites, SPADEResBlock, mask_sites


class SPADEGenerator(nn.Module):
    """One-hot mask (and a style) -> (B,1,H,W) image in [-1, 1].

    Styles (:mod:`cardigan.gan.styles`): with the VAE, ``z`` (B, z_dim) replaces the downsampled mask
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
        if seg.dim() != 4 or seg.shape[1] != self.cfg.cond_nc:
            raise ValueError(f"seg must be a (B,{self.cfg.cond_nc},H,W) one-hot map, got shape "
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

