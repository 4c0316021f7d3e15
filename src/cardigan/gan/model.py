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
- ``SegmentationDiscriminator`` (``discriminator: oasis``): OASIS's U-Net that labels each pixel
  with its class or "fake" (:mod:`cardigan.gan.segmentation_discriminator`).

Weights are initialised like the reference (xavier normal, gain 0.02; zero biases), drawing only
from torch's global RNG, so a model built after ``torch.manual_seed(s)`` is always the same.
Spectral norm is our :class:`SpectralNormFP32` parametrization (torch's estimate and state_dict
keys, but the power iteration and sigma in fp32 under autocast): it survives ``deepcopy`` (EMA),
``state_dict`` round trips, DDP with several forwards per step, and ``torch.compile``.
"""

from __future__ import annotations

from cardigan.gan.discriminator import MultiscaleDiscriminator
from cardigan.gan.encoder import ConvEncoder
from cardigan.gan.generator import SPADEGenerator
from cardigan.gan.model_config import ModelConfig
from cardigan.gan.segmentation_discriminator import SegmentationDiscriminator

DISCRIMINATORS = {"patchgan": MultiscaleDiscriminator, "oasis": SegmentationDiscriminator}


def build_models(
    cfg: ModelConfig,
) -> tuple[SPADEGenerator, MultiscaleDiscriminator | SegmentationDiscriminator, ConvEncoder | None]:
    """Generator, discriminator and (with ``use_vae``) encoder, in that order, from torch's RNG."""
    generator = SPADEGenerator(cfg)
    discriminator = DISCRIMINATORS[cfg.discriminator](cfg)
    encoder = ConvEncoder(cfg) if cfg.use_vae else None
    return generator, discriminator, encoder

