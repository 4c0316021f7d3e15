"""Where each synthetic image's style comes from: one home for style codes and their provenance.

A mask says where the structures are; the *style* says how the acquisition looks (gain, contrast,
image quality, dropout, sector, speckle). The generator takes it in one of three ways
(:class:`cardigan.gan.model.ModelConfig`):

- mask-only (``use_vae: false``, ``noise_dim: 0``): no style input, one image per mask;
- VAE (``use_vae``): a code ``z`` that the encoder infers from a real image during training. At
  sampling time ``z`` comes either from the **real** style bank -- the encoder's posterior for
  every training image, stored in the generator file at the end of training, so a style is that
  of a real acquisition and no training data is needed to sample -- or from the **prior**
  N(0, I);
- 3D noise (``noise_dim`` > 0, as in OASIS): ``z`` ~ N(0, I) concatenated to the mask.

With ``texture_noise`` every image also gets its own per-pixel noise map (its speckle).

Every draw comes from a ``torch.Generator`` seeded with the sample's own seed, so a sample does
not depend on the batch it is in. :func:`style_label` is the provenance string written per
sample (``real:patient0003_4CH_ED``, ``prior``, ``noise`` or ``none``, with ``+grey:ID`` where
the sample took the grey levels of training image ``ID``: :mod:`cardigan.gan.appearance`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cardigan.gan.appearance import Appearance, GreyLevels
from cardigan.gan.model_config import ModelConfig

#: Values of ``sample.style_source``.
STYLE_SOURCES = ("real", "prior")
BANK_KEY = "style_bank"


@dataclass(frozen=True)
class StyleBank:
    """The encoder's posterior N(mu, exp(logvar)) for each training image, with its id."""

    mu: torch.Tensor  # (N, z_dim) float32
    logvar: torch.Tensor  # (N, z_dim) float32
    ids: tuple[str, ...]

    def to_extra(self) -> dict:
        """The form stored in the generator file's ``extra`` (loads with weights_only=True)."""
        return {"mu": self.mu.float().cpu(), "logvar": self.logvar.float().cpu(),
                "ids": list(self.ids)}

    @classmethod
    def from_extra(cls, extra: dict) -> StyleBank | None:
        d = extra.get(BANK_KEY)
        if not d:
            return None
        mu, logvar, ids = d["mu"], d["logvar"], tuple(d["ids"])
        if mu.shape != logvar.shape or mu.dim() != 2 or len(ids) != mu.shape[0]:
            raise ValueError(f"style bank of inconsistent shapes: mu {tuple(mu.shape)}, logvar "
                             f"{tuple(logvar.shape)}, {len(ids)} ids")
        return cls(mu.float(), logvar.float(), ids)


@torch.no_grad()
def encode_bank(encoder: nn.Module, images: np.ndarray, ids: Sequence[str],
                device: torch.device, batch_size: int = 32) -> StyleBank:
    """Encode (N, H, W) uint8 training images into a :class:`StyleBank` (encoder in eval mode)."""
    if len(images) != len(ids):
        raise ValueError(f"{len(images)} images but {len(ids)} ids")
    was_training = encoder.training
    encoder.eval()
    mus, logvars = [], []
    for lo in range(0, len(images), batch_size):
        x = torch.from_numpy(images[lo:lo + batch_size]).to(device)
        x = x.unsqueeze(1).float().div_(127.5).sub_(1.0)
        mu, logvar = encoder(x)
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    encoder.train(was_training)
    return StyleBank(torch.cat(mus), torch.cat(logvars), tuple(ids))


def style_label(cfg: ModelConfig, bank: StyleBank | None, index: int | None,
                grey: GreyLevels | None = None, grey_index: int | None = None) -> str:
    """The provenance of one sample's style: ``index`` into ``bank`` when drawn from it, and
    ``grey_index`` into ``grey`` when its grey levels were matched to a training image (for a
    bank style, the same image: its label says so once)."""
    if cfg.use_vae:
        label = f"real:{bank.ids[index]}" if index is not None else "prior"
    else:
        label = "noise" if cfg.noise_dim else "none"
    if grey_index is not None and index is None:
        label += f"+grey:{grey.ids[grey_index]}"
    return label


def effective_source(cfg: ModelConfig, source: str, bank: StyleBank | None) -> str:
    """``real`` only where it can be honoured: a VAE generator whose file carries a bank."""
    if source not in STYLE_SOURCES:
        raise ValueError(f"config key sample.style_source: {source!r} is not one of "
                         f"{list(STYLE_SOURCES)}")
    if cfg.use_vae and source == "real" and bank is not None:
        return "real"
    return "prior"


@dataclass(frozen=True)
class Styles:
    """The style inputs of a batch of samples and where they came from."""

    z: torch.Tensor | None  # (B, style_dim); None for a mask-only generator
    noise: torch.Tensor | None  # (B, 1, H, W); None without texture noise
    labels: list[str]  # per-sample provenance (:func:`style_label`)
    grey_index: list[int | None]  # per sample, the training image whose grey levels it takes
    speckle_seed: list[int]  # per sample, the seed of its added speckle

    def apply(self, images: np.ndarray, appearance: Appearance) -> np.ndarray:
        """(B, H, W) uint8 generated images with their grey levels and speckle
        (:class:`cardigan.gan.appearance.Appearance`)."""
        if appearance.grey is None and appearance.speckle is None:
            return images
        return np.stack([appearance.apply(im, i, s)
                         for im, i, s in zip(images, self.grey_index, self.speckle_seed)])


def draw_styles(cfg: ModelConfig, seeds: Sequence[int], source: str, bank: StyleBank | None,
                grey: GreyLevels | None = None,
                own: Sequence[int | None] | None = None) -> Styles:
    """The styles of a batch of samples, each drawn from its own seed.

    With ``grey`` (``sample.grey_levels: real``) each sample also takes the grey levels of a
    real training image: the one whose style code it drew from the bank, otherwise one drawn at
    random; then the seed of its speckle (after the other draws, so they do not change).

    ``own`` (``sample.own_styles``): per sample, the training image (an index into the bank and
    the grey levels, which list the same images) whose style it takes instead of a random one,
    or None. The random draw is made either way, so a sample's other draws do not depend on it.
    """
    source = effective_source(cfg, source, bank)
    if grey is not None and source == "real" and tuple(grey.ids) != tuple(bank.ids):
        raise ValueError("the generator file's grey levels and style bank list different "
                         "training images")
    if own is None:
        own = [None] * len(seeds)
    zs, noises, labels, greys, speckles = [], [], [], [], []
    for seed, own_index in zip(seeds, own, strict=True):
        g = torch.Generator().manual_seed(int(seed))
        index = None
        if cfg.style_dim:
            if source == "real":
                index = int(torch.randint(len(bank.ids), (1,), generator=g))
                if own_index is not None:
                    index = own_index
                eps = torch.randn(cfg.z_dim, generator=g)
                zs.append(bank.mu[index] + torch.exp(0.5 * bank.logvar[index]) * eps)
            else:
                zs.append(torch.randn(cfg.style_dim, generator=g))
        if cfg.texture_noise:
            noises.append(torch.randn(1, cfg.image_size, cfg.image_size, generator=g))
        grey_index = None
        if grey is not None:
            grey_index = (index if index is not None
                          else int(torch.randint(len(grey.ids), (1,), generator=g)))
            if own_index is not None:
                grey_index = own_index
        labels.append(style_label(cfg, bank, index, grey, grey_index))
        greys.append(grey_index)
        speckles.append(int(torch.randint(2**31 - 1, (1,), generator=g)))
    return Styles(torch.stack(zs) if zs else None, torch.stack(noises) if noises else None,
                  labels, greys, speckles)


def is_multimodal(cfg: ModelConfig) -> bool:
    """Whether two samples of one mask can differ."""
    return bool(cfg.style_dim or cfg.texture_noise)
