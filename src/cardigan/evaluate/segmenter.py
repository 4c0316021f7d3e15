"""The segmenter the evaluation trains: MONAI's 2D U-Net, DiceCE loss, a fixed iteration budget.

Every training setting (real, synthetic, mixed, finetuned) gets the same network, initial weights
(same seed), iterations, batch size, learning rate, augmentation and sampling stream, so the only
thing that differs between settings is the training data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.layers import SkipConnection
from monai.networks.nets import UNet

from cardigan.core.device import resolve_device as _resolve_device
from cardigan.core.labels import NUM_LABELS

log = logging.getLogger("cardigan")

#: Residual units per U-Net level (MONAI's UNet argument); 1 keeps the default CPU budget.
NUM_RES_UNITS = 1

#: The augmentation, in words, for the summary. No flips: apical views are not mirror-symmetric
#: (flipping a 4CH view puts the right heart on the wrong side, which real test images never show).
AUGMENTATION = (
    "per sample, p=0.5 small affine (rotation ±5°, scale ±5%, translation ±4 px; bilinear image, "
    "nearest mask), p=0.5 intensity gain 0.9-1.1, p=0.5 gamma 0.8-1.25; no flips (apical views are "
    "not mirror-symmetric)"
)


def resolve_device(device: str) -> torch.device:
    return _resolve_device(device, "evaluate.device")


def build_unet(channels: list[int] | tuple[int, ...]) -> UNet:
    """MONAI 2D U-Net: 1 input channel, one output channel per label, stride 2 per level."""
    channels = tuple(int(c) for c in channels)
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=NUM_LABELS,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=NUM_RES_UNITS,
    )


def check_image_size(shape: tuple[int, ...], channels: list[int] | tuple[int, ...]) -> None:
    """The U-Net halves the size len(channels)-1 times: the sides must divide evenly."""
    factor = 2 ** (len(channels) - 1)
    h, w = shape[-2:]
    if h % factor or w % factor:
        raise ValueError(
            f"evaluate.channels has {len(channels)} levels, so image sides must be multiples of "
            f"{factor}; the images are {h}x{w} (data.image_size)"
        )


def bottleneck(model: UNet) -> torch.nn.Module:
    """The U-Net's deepest layer (the encoder's output), found by following the skip nesting."""
    m: torch.nn.Module = model.model
    while isinstance(m, torch.nn.Sequential) and len(m) > 1 and isinstance(m[1], SkipConnection):
        m = m[1].submodule
    return m


def to_input(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)


class Augment:
    """Batch-wise small affine and intensity augmentation, drawn from a seeded torch Generator.

    Per sample: with p=0.5 an affine warp (rotation ±5°, isotropic scale ±5%, translation ±4 px;
    bilinear for the image, nearest for the mask, zeros outside), with p=0.5 an intensity scale
    in [0.9, 1.1], with p=0.5 a gamma in [0.8, 1.25]. Done on the whole batch with
    ``affine_grid``/``grid_sample`` because MONAI's per-sample dictionary transforms cost ~13 ms a
    sample on the CPU, more than the training step itself at the default budget.
    """

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.gen)

    def _coin(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.gen) < 0.5

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, 1, H, W) float in [0, 1], ``y`` (B, 1, H, W) long labels."""
        b, _, h, w = x.shape
        warp = self._coin(b)
        angle = torch.deg2rad(self._uniform(b, -5.0, 5.0)) * warp
        scale = 1 + self._uniform(b, -0.05, 0.05) * warp
        shift = torch.stack([self._uniform(b, -4, 4) * 2 / w, self._uniform(b, -4, 4) * 2 / h], 1)
        shift = shift * warp[:, None]
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                             torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        y = F.grid_sample(y.float(), grid, mode="nearest", padding_mode="zeros",
                          align_corners=False).long()
        gain = torch.where(self._coin(b), self._uniform(b, 0.9, 1.1), torch.ones(b))
        gamma = torch.where(self._coin(b), self._uniform(b, 0.8, 1.25), torch.ones(b))
        x = (x.clamp(0, 1) ** gamma[:, None, None, None]) * gain[:, None, None, None]
        return x, y


@dataclass
class TrainedSegmenter:
    model: UNet
    device: torch.device
    losses: list[float] = field(default_factory=list)


def train_segmenter(
    images: np.ndarray,
    masks: np.ndarray,
    *,
    iterations: int,
    batch_size: int,
    lr: float,
    seed: int,
    channels: list[int],
    device: torch.device,
    name: str = "",
    first_fraction: tuple[int, float] | None = None,
    start_from: UNet | None = None,
) -> TrainedSegmenter:
    """Train a U-Net for ``iterations`` Adam steps on batches drawn uniformly with replacement.

    ``images`` (N, H, W) uint8 and ``masks`` (N, H, W) labels 0..3. ``first_fraction`` =
    ``(n, f)``: each batch element comes from the first ``n`` images with probability ``f`` and
    from the others otherwise (the mixed setting's share of real images), instead of uniformly.
    ``start_from``: train this network further (fine-tuning) instead of a new one. Deterministic
    on the CPU for a fixed seed and thread count.
    """
    if len(images) == 0:
        raise ValueError(f"setting {name!r}: no training images")
    check_image_size(images.shape, channels)
    torch.manual_seed(seed)
    model = build_unet(channels).to(device) if start_from is None else start_from
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    aug = Augment(seed)
    draw = torch.Generator().manual_seed(seed)
    x_all = to_input(images)
    y_all = torch.from_numpy(np.ascontiguousarray(masks)).long().unsqueeze(1)
    losses: list[float] = []
    model.train()
    report_every = max(1, iterations // 10)
    for it in range(iterations):
        idx = _draw(len(x_all), batch_size, draw, first_fraction)
        x, y = aug(x_all[idx], y_all[idx])
        x, y = x.to(device), y.to(device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (it + 1) % report_every == 0 or it + 1 == iterations:
            log.info("segmenter %s: iteration %d/%d, DiceCE %.4f (mean of last %d)", name, it + 1,
                     iterations, float(np.mean(losses[-report_every:])), min(report_every, len(losses)))
    model.eval()
    return TrainedSegmenter(model, device, losses)


def _draw(n: int, batch_size: int, gen: torch.Generator,
          first_fraction: tuple[int, float] | None) -> list[int]:
    if first_fraction is None:
        return torch.randint(n, (batch_size,), generator=gen).tolist()
    n_first, fraction = first_fraction
    if not 0 < n_first < n:
        raise ValueError(f"first_fraction: {n_first} first images of {n}: both parts must be "
                         "non-empty")
    first = torch.rand(batch_size, generator=gen) < fraction
    a = torch.randint(n_first, (batch_size,), generator=gen)
    b = n_first + torch.randint(n - n_first, (batch_size,), generator=gen)
    return torch.where(first, a, b).tolist()


@torch.no_grad()
def predict(seg: TrainedSegmenter, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """(N, H, W) uint8 images -> (N, H, W) uint8 label maps (argmax of the logits)."""
    check_image_size(images.shape, _channels(seg.model))
    out = []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start : start + batch_size]).to(seg.device)
        out.append(seg.model(x).argmax(dim=1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), np.uint8)


@torch.no_grad()
def encoder_features(seg: TrainedSegmenter, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Global-average-pooled bottleneck activations, (N, channels[-1]) float64."""
    check_image_size(images.shape, _channels(seg.model))
    grabbed: list[torch.Tensor] = []
    handle = bottleneck(seg.model).register_forward_hook(lambda _m, _i, o: grabbed.append(o))
    try:
        feats = []
        for start in range(0, len(images), batch_size):
            grabbed.clear()
            seg.model(to_input(images[start : start + batch_size]).to(seg.device))
            feats.append(grabbed[0].mean(dim=(2, 3)).double().cpu().numpy())
    finally:
        handle.remove()
    return np.concatenate(feats)


def _channels(model: UNet) -> tuple[int, ...]:
    return tuple(model.channels)
