"""SPADE's losses: hinge GAN, discriminator feature matching, KL, VGG19 perceptual; and OASIS's
per-pixel N+1 adversarial loss with LabelMix for the segmentation discriminator.

Reductions follow NVlabs/SPADE: every GAN/feature-matching term is averaged over the
discriminator scales; the KL term is summed over z and averaged over the batch (the reference
sums over the batch too), weighted 0.05 by the caller; the perceptual loss weights relu1_1..relu5_1
by 1/32, 1/16, 1/8, 1/4, 1.

``generator_losses`` / ``discriminator_losses`` compose the terms into the two halves of one
training iteration exactly as the reference does (fake and real go through the discriminator in
one batch); ``bench/train_step.py`` and the training loop both use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cardigan.core.config import ConfigError
from cardigan.gan.diffaug import augment_pairs
from cardigan.gan.encoder import reparameterize

Preds = list[list[Tensor]]  # per discriminator scale: intermediate features, last = prediction


def _hinge(preds: Preds, real: bool) -> Tensor:
    """mean over scales of mean(relu(1 - D)) for real, mean(relu(1 + D)) for fake."""
    sign = -1.0 if real else 1.0
    return sum(F.relu(1.0 + sign * p[-1].float()).mean() for p in preds) / len(preds)


def hinge_d_loss(real_preds: Preds, fake_preds: Preds) -> Tensor:
    """Discriminator hinge loss: relu(1 - D(real)) + relu(1 + D(fake)), each averaged over scales."""
    return _hinge(real_preds, real=True) + _hinge(fake_preds, real=False)


def hinge_g_loss(fake_preds: Preds) -> Tensor:
    """Generator hinge loss: -mean(D(fake)) averaged over scales."""
    return sum(-p[-1].float().mean() for p in fake_preds) / len(fake_preds)


def feature_matching_loss(real_preds: Preds, fake_preds: Preds) -> Tensor:
    """Sum over each scale's intermediate features (all but the last) of L1(fake, real.detach()),
    divided by the number of scales (unweighted: the caller multiplies by lambda_feat)."""
    total = fake_preds[0][0].new_zeros((), dtype=torch.float32)
    for real_feats, fake_feats in zip(real_preds, fake_preds, strict=True):
        for real_f, fake_f in zip(real_feats[:-1], fake_feats[:-1], strict=True):
            total = total + F.l1_loss(fake_f.float(), real_f.detach().float())
    return total / len(fake_preds)


def kl_loss(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per sample: summed over z, averaged over the batch.

    The reference sums over the batch too, so its weight grows with the per-process batch (and
    changes with the number of GPUs); as a per-sample mean, DDP's gradient averaging gives the
    global batch's mean and ``lambda_kld`` means the same at any ``batch_size`` and ``gpus``."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / mu.shape[0]


# --------------------------------------------------------------------------------------------
# OASIS: the segmentation discriminator's N+1 loss and LabelMix (Schönfeld et al. 2021)
# --------------------------------------------------------------------------------------------
FAKE_CLASS = 0  # logit 0 is "fake"; class c of the mask is logit c + 1


def class_balance(seg: Tensor) -> Tensor:
    """Per-pixel weights (B, H, W) from a one-hot (B, L, H, W): every class present in the batch
    weighs in alike, each pixel inversely to its class's pixel count (a thin atrium counts as much
    as the background); pixels without a label (cutout) weigh 0."""
    seg = seg.float()
    counts = seg.sum(dim=(0, 2, 3))
    present = (counts > 0).sum().clamp_min(1)
    coeff = seg[:, 0].numel() / (present * counts.clamp_min(1.0))
    return (seg * coeff.view(1, -1, 1, 1)).sum(1)


def n1_loss(logits: Tensor, seg: Tensor, *, real: bool) -> Tensor:
    """Cross-entropy of per-pixel logits (B, L+1, H, W) against the mask's classes, class-balanced
    (``real``: what the discriminator must say of real images and the generator wants it to say
    of fakes), or against "fake" everywhere (the discriminator on fakes)."""
    logits = logits.float()
    if not real:
        target = torch.full_like(logits[:, 0], FAKE_CLASS, dtype=torch.long)
        return F.cross_entropy(logits, target)
    target = seg.argmax(1) + 1
    return (F.cross_entropy(logits, target, reduction="none") * class_balance(seg)).mean()


def labelmix_map(seg: Tensor) -> Tensor:
    """(B, 1, H, W) in {0, 1}: each label region of each image taken from the real image (1) or
    the fake (0), a fair coin per region, drawn from torch's RNG."""
    coins = torch.randint(0, 2, seg.shape[:2], device=seg.device).to(seg.dtype)
    return (seg * coins[:, :, None, None]).sum(1, keepdim=True)


def labelmix_loss(mixed: Tensor, fake: Tensor, real: Tensor, mix: Tensor) -> Tensor:
    """Mean squared difference between the discriminator's logits on the mixed image and the same
    mix of its logits on the fake and the real image (its decision must follow the regions)."""
    mix = mix.float()
    return F.mse_loss(mixed.float(), mix * real.float() + (1 - mix) * fake.float())


# --------------------------------------------------------------------------------------------
# VGG19 perceptual loss
# --------------------------------------------------------------------------------------------
# torchvision's vgg19 "features" (configuration E): conv channels, "M" = 2x2 max pool.
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
# Indices into features just after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
_VGG_SLICE_ENDS = (2, 7, 12, 21, 30)
_VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features(upto: int = _VGG_SLICE_ENDS[-1]) -> nn.Sequential:
    """The first ``upto`` modules of torchvision's ``vgg19().features`` (same indices, so its
    state_dict keys ``features.N.weight`` load into ``.features``)."""
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers[:upto])


class VGGPerceptualLoss(nn.Module):
    """VGG19 perceptual loss from a LOCAL state_dict file (torchvision's vgg19 key names,
    e.g. 'features.0.weight'); nothing is downloaded. Grayscale [-1, 1] input is replicated to
    3 channels and ImageNet-normalised. Missing / wrong file -> ConfigError naming
    train.perceptual_weights."""

    def __init__(self, weights_path: str):
        super().__init__()
        self.features = vgg19_features()
        self._load(weights_path)
        self.features.requires_grad_(False)
        self.eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _load(self, weights_path) -> None:
        key = "train.perceptual_weights"
        if not weights_path:
            raise ConfigError(f"config key {key}: no VGG19 weights file given")
        path = Path(weights_path)
        if not path.is_file():
            raise ConfigError(f"config key {key}: VGG19 weights file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(f"config key {key}: cannot read {path} as a torch file: {exc}") from exc
        if not isinstance(state, dict):
            raise ConfigError(f"config key {key}: {path} holds a {type(state).__name__}, "
                              f"not a VGG19 state_dict")
        wanted = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        missing = [k for k in wanted if k not in state]
        if missing:
            raise ConfigError(
                f"config key {key}: {path} is not a torchvision VGG19 state_dict "
                f"(missing {len(missing)} keys, e.g. {', '.join(missing[:3])})"
            )
        for k, v in wanted.items():
            got = state[k]
            if not isinstance(got, Tensor) or got.shape != v.shape:
                shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
                raise ConfigError(f"config key {key}: {path}: {k} has shape {shape}, "
                                  f"VGG19 needs {tuple(v.shape)}")
        self.features.load_state_dict(
            {k[len("features."):]: state[k].float() for k in wanted}
        )

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        return super().train(False)  # a frozen feature extractor: always in eval mode

    def _taps(self, x: Tensor) -> list[Tensor]:
        x = ((x + 1) / 2).expand(-1, 3, -1, -1)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        taps, start = [], 0
        for end in _VGG_SLICE_ENDS:
            for layer in self.features[start:end]:
                x = layer(x)
            taps.append(x)
            start = end
        return taps

    def forward(self, fake: Tensor, real: Tensor) -> Tensor:
        fake_taps = self._taps(fake)
        with torch.no_grad():
            real_taps = self._taps(real)
        return sum(w * F.l1_loss(f.float(), r.float())
                   for w, f, r in zip(_VGG_LAYER_WEIGHTS, fake_taps, real_taps, strict=True))


# --------------------------------------------------------------------------------------------
# One training iteration's two halves
# --------------------------------------------------------------------------------------------
def discriminate(discriminator: nn.Module, seg: Tensor, fake: Tensor, real: Tensor,
                 diffaug: Sequence[str] = (), *, labelmix: bool = False
                 ) -> tuple[Preds, Preds, Tensor, Tensor | None, Tensor | None]:
    """Run fake and real through the discriminator in one batch (as the reference does, which
    matters for batch norm), each pair augmented alike with the ``diffaug`` transforms
    (:mod:`cardigan.gan.diffaug`). With ``labelmix`` a third batch goes along: the augmented real
    and fake mixed along their (augmented) label regions.

    Returns ``(fake_preds, real_preds, seg, mixed_logits, mix)``: ``seg`` is the augmented mask
    (the same for both halves); the last two are None without ``labelmix``."""
    n = fake.shape[0]
    images, segs = augment_pairs(torch.cat([fake, real]), torch.cat([seg, seg]), diffaug)
    seg = segs[:n]
    mix = None
    if labelmix:
        mix = labelmix_map(seg)
        images = torch.cat([images, mix * images[n:] + (1 - mix) * images[:n]])
        segs = torch.cat([segs, seg])
    preds = discriminator(images, segs)
    fake_preds = [[f[:n] for f in scale] for scale in preds]
    real_preds = [[f[n:2 * n] for f in scale] for scale in preds]
    mixed = preds[0][-1][2 * n:] if labelmix else None
    return fake_preds, real_preds, seg, mixed, mix


def generator_losses(
    generator: nn.Module,
    discriminator: nn.Module,
    seg: Tensor,
    real: Tensor,
    *,
    encoder: nn.Module | None = None,
    vgg: nn.Module | None = None,
    lambda_feat: float = 10.0,
    lambda_kld: float = 0.05,
    lambda_vgg: float = 10.0,
    lambda_l1: float = 0.0,
    l1_balance: bool = False,
    diffaug: Sequence[str] = (),
    discriminator_kind: str = "patchgan",
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """The generator half of an iteration: ``(total, weighted terms, fake)``.

    Terms: ``g_gan`` (hinge; with ``discriminator_kind`` "oasis" the class-balanced N+1 loss
    towards the mask's classes), ``g_feat`` (feature matching x lambda_feat, when > 0), ``g_kld``
    (with an encoder, x lambda_kld), ``g_vgg`` (with a perceptual loss, x lambda_vgg), ``g_l1``
    (mean absolute difference between fake and real, x lambda_l1, when > 0: pix2pix's
    reconstruction term, a pixel-level stand-in for the perceptual loss when no VGG weights are
    at hand; with ``l1_balance`` its pixels weighted by :func:`class_balance`).
    """
    terms: dict[str, Tensor] = {}
    z = None
    if encoder is not None:
        mu, logvar = encoder(real)
        z = reparameterize(mu, logvar)
        terms["g_kld"] = kl_loss(mu, logvar) * lambda_kld
    fake = generator(seg, z)
    fake_preds, real_preds, seg_seen, _, _ = discriminate(discriminator, seg, fake, real, diffaug)
    if discriminator_kind == "oasis":
        terms["g_gan"] = n1_loss(fake_preds[0][-1], seg_seen, real=True)
    else:
        terms["g_gan"] = hinge_g_loss(fake_preds)
    if lambda_feat > 0:
        terms["g_feat"] = feature_matching_loss(real_preds, fake_preds) * lambda_feat
    if vgg is not None:
        terms["g_vgg"] = vgg(fake, real) * lambda_vgg
    if lambda_l1 > 0:
        error = (fake.float() - real.float()).abs()
        if l1_balance:
            error = error * class_balance(seg).unsqueeze(1)
        terms["g_l1"] = error.mean() * lambda_l1
    return sum(terms.values()), terms, fake


def r1_penalty(discriminator: nn.Module, seg: Tensor, real: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): the squared norm of the gradient of the discriminator's real
    outputs (every scale's patch logits, summed) with respect to the real image, per image,
    averaged over the batch; differentiable with respect to the discriminator's weights."""
    x = real.detach().requires_grad_(True)
    out = sum(scale[-1].float().sum() for scale in discriminator(x, seg))
    (grad,) = torch.autograd.grad(out, x, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def discriminator_losses(discriminator: nn.Module, seg: Tensor, fake: Tensor, real: Tensor,
                         diffaug: Sequence[str] = (), *, discriminator_kind: str = "patchgan",
                         lambda_labelmix: float = 0.0, r1_weight: float = 0.0,
                         r1_discriminator: nn.Module | None = None
                         ) -> tuple[Tensor, dict[str, Tensor]]:
    """The discriminator half: ``(total, {"d_fake", "d_real"[, "d_labelmix"][, "d_r1"]})``;
    ``fake`` is detached here. Hinge for the PatchGAN; for "oasis" the N+1 loss (fake pixels ->
    "fake", real pixels -> their class, class-balanced) and, with ``lambda_labelmix`` > 0,
    LabelMix. With ``r1_weight`` > 0 the R1 penalty x ``r1_weight`` / 2, through
    ``r1_discriminator`` (the unwrapped network: its own forward, outside DDP; default
    ``discriminator``), on the real images as they are, not augmented."""
    oasis = discriminator_kind == "oasis"
    labelmix = oasis and lambda_labelmix > 0
    fake_preds, real_preds, seg_seen, mixed, mix = discriminate(
        discriminator, seg, fake.detach(), real, diffaug, labelmix=labelmix)
    if not oasis:
        terms = {"d_fake": _hinge(fake_preds, real=False), "d_real": _hinge(real_preds, real=True)}
    else:
        fake_logits, real_logits = fake_preds[0][-1], real_preds[0][-1]
        terms = {"d_fake": n1_loss(fake_logits, seg_seen, real=False),
                 "d_real": n1_loss(real_logits, seg_seen, real=True)}
        if labelmix:
            terms["d_labelmix"] = labelmix_loss(mixed, fake_logits, real_logits, mix) \
                * lambda_labelmix
    if r1_weight > 0:
        terms["d_r1"] = r1_penalty(r1_discriminator or discriminator, seg, real) * (r1_weight / 2)
    return sum(terms.values()), terms
