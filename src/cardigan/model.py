"""SPADE (Park et al., CVPR 2019) for grayscale images: generator, VAE encoder, discriminator.

Our own implementation of the architecture of the paper and of NVlabs/SPADE (read for
understanding, not copied), adapted to one output channel and to any square ``image_size`` that
the upsampling depth divides:

- ``SPADE``: ``norm(x) * (1 + gamma(m)) + beta(m)``; ``norm`` is parameter-free (instance norm,
  or a plain ``BatchNorm2d(affine=False)`` that ``nn.SyncBatchNorm.convert_sync_batchnorm`` turns
  into the synchronised batch norm of the paper under DDP); gamma and beta come from a shared
  3x3 conv (``spade_hidden`` channels, 128 in the paper) + ReLU on the mask resized (nearest) to
  x's size, then one 3x3 conv each.
- ``SPADEResBlock``: two (SPADE -> LeakyReLU 0.2 -> 3x3 conv) stages, middle width min(in, out),
  learned 1x1 shortcut (with its own SPADE) when in != out; spectral norm on the block convs.
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
Spectral norm uses ``torch.nn.utils.parametrizations.spectral_norm``: it survives ``deepcopy``
(EMA), ``state_dict`` round trips, DDP with several forwards per step, and ``torch.compile``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .atomic import atomic_output
from .defaults import default

UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}
NORMS = ("instance", "batch")
INIT_GAIN = 0.02  # the reference's init_variance, used as the xavier gain
LRELU_SLOPE = 0.2
GENERATOR_FORMAT = "cardigan-generator/1"


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
        if not isinstance(self.use_vae, bool):
            raise ValueError(f"model setting use_vae must be true or false, got {self.use_vae!r}")
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


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: ``norm(x) * (1 + gamma(seg)) + beta(seg)``."""

    def __init__(self, channels: int, label_nc: int, hidden: int, norm: str):
        super().__init__()
        self.norm = param_free_norm(norm, channels)
        self.shared = nn.Sequential(conv(label_nc, hidden, 3), nn.ReLU())
        self.gamma = conv(hidden, channels, 3)
        self.beta = conv(hidden, channels, 3)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        seg = F.interpolate(seg, size=x.shape[-2:], mode="nearest")
        actv = self.shared(seg)
        return self.norm(x) * (1 + self.gamma(actv)) + self.beta(actv)


class SPADEResBlock(nn.Module):
    """Two (SPADE -> LeakyReLU -> 3x3 conv) stages plus a (learned when in != out) shortcut."""

    def __init__(self, cin: int, cout: int, cfg: ModelConfig):
        super().__init__()
        mid = min(cin, cout)
        args = (cfg.label_nc, cfg.spade_hidden, cfg.norm_G)
        self.norm_0 = SPADE(cin, *args)
        self.conv_0 = conv(cin, mid, 3, sn=True)
        self.norm_1 = SPADE(mid, *args)
        self.conv_1 = conv(mid, cout, 3, sn=True)
        self.learned_shortcut = cin != cout
        if self.learned_shortcut:
            self.norm_s = SPADE(cin, *args)
            self.conv_s = conv(cin, cout, 1, bias=False, sn=True)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), LRELU_SLOPE))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), LRELU_SLOPE))
        return x_s + dx


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------
class SPADEGenerator(nn.Module):
    """One-hot mask (and z with the VAE) -> (B,1,H,W) image in [-1, 1]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        nf, s = cfg.ngf, cfg.start_size
        if cfg.use_vae:
            self.fc = linear(cfg.z_dim, 16 * nf * s * s)
        else:
            self.fc = conv(cfg.label_nc, 16 * nf, 3)
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

    @staticmethod
    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")

    def forward(self, seg: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        if seg.dim() != 4 or seg.shape[1] != cfg.label_nc:
            raise ValueError(
                f"seg must be a (B,{cfg.label_nc},H,W) one-hot map, got shape {tuple(seg.shape)}"
            )
        s = cfg.start_size
        if cfg.use_vae:
            if z is None:
                z = torch.randn(seg.shape[0], cfg.z_dim, device=seg.device)
            x = self.fc(z).view(-1, 16 * cfg.ngf, s, s)
            if seg.is_contiguous(memory_format=torch.channels_last):
                x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = self.fc(F.interpolate(seg, size=(s, s), mode="nearest"))

        x = self.head_0(x, seg)
        x = self.up(x)
        x = self.G_middle_0(x, seg)
        if cfg.num_upsampling_layers in ("more", "most"):
            x = self.up(x)
        x = self.G_middle_1(x, seg)
        x = self.up_0(self.up(x), seg)
        x = self.up_1(self.up(x), seg)
        x = self.up_2(self.up(x), seg)
        x = self.up_3(self.up(x), seg)
        if cfg.num_upsampling_layers == "most":
            x = self.up_4(self.up(x), seg)
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
    if not isinstance(payload, dict) or payload.get("format") != GENERATOR_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{path} is not a cardiGAN generator file (format {found!r}, "
            f"expected {GENERATOR_FORMAT!r})"
        )
    try:
        cfg = ModelConfig.from_dict(payload["model_config"])
        with torch.random.fork_rng(devices=[]):  # building draws from the RNG: keep the caller's
            generator = SPADEGenerator(cfg)
        generator.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} is a corrupt cardiGAN generator file: {exc}") from exc
    if map_location is not None:
        generator.to(map_location)
    return generator.eval(), cfg, dict(payload.get("extra", {}))
