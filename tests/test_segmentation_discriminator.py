"""OASIS's segmentation discriminator: shapes, the N+1 loss, class balancing, LabelMix, and a
training run with it."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn
from train_fixtures import write_split

from cardigan.core.config import ConfigError
from cardigan.gan.fingerprint import fingerprinted_settings
from cardigan.gan.layers import one_hot
from cardigan.gan.losses import (
    FAKE_CLASS,
    class_balance,
    discriminator_losses,
    generator_losses,
    labelmix_map,
    n1_loss,
)
from cardigan.gan.model import build_models
from cardigan.gan.model_config import ModelConfig
from cardigan.gan.segmentation_discriminator import SegmentationDiscriminator, unet_depth
from cardigan.gan.train import train
from cardigan.gan.train_config import TrainConfig

SMALL = dict(background_classes=0, ngf=4, ndf=4, spade_hidden=8, use_vae=False,
             texture_noise=False, discriminator="oasis")


def _mask(n=2, size=64):
    mask = torch.zeros(n, size, size, dtype=torch.long)
    mask[:, 8:20, 10:22] = 1
    mask[:, 6:8, 8:24] = 2
    mask[:, 20:26, 10:22] = 3
    return mask


@pytest.mark.parametrize(("size", "depth"), [(256, 6), (512, 6), (128, 5), (96, 4), (8, 1),
                                             (6, 0)])
def test_depth_follows_the_image_size(size, depth):
    assert unet_depth(size) == depth


@pytest.mark.parametrize("size", [128, 96, 64])
def test_one_logit_per_class_and_fake_at_every_pixel(size):
    torch.manual_seed(0)
    D = SegmentationDiscriminator(ModelConfig(image_size=size, **SMALL))
    feats = D(torch.randn(3, 1, size, size))
    assert len(feats) == 1  # one "scale": feature matching and the loss code read it alike
    assert feats[0][-1].shape == (3, 5, size, size)
    assert len(feats[0]) == 2 * unet_depth(size) + 1


def test_class_balance_weighs_every_present_class_alike():
    seg = one_hot(_mask(), 4)
    w = class_balance(seg)
    per_class = [float(w[seg[:, c] > 0].sum()) for c in range(4)]
    assert per_class == pytest.approx([per_class[0]] * 4)
    assert float(w.sum()) == pytest.approx(seg[:, 0].numel())  # mean weight 1
    seg[:, :, :4, :4] = 0  # cut out: no label, no weight
    assert torch.all(class_balance(seg)[:, :4, :4] == 0)
    only_background = one_hot(torch.zeros(1, 8, 8, dtype=torch.long), 4)
    assert torch.all(class_balance(only_background) == 1)  # absent classes take no share


def test_n1_loss_targets():
    seg = one_hot(_mask(), 4)
    right = torch.cat([torch.zeros_like(seg[:, :1]), seg], 1) * 20  # says each pixel's class
    fake = torch.zeros_like(right)
    fake[:, FAKE_CLASS] = 20  # says "fake" everywhere
    assert float(n1_loss(right, seg, real=True)) < 1e-6
    assert float(n1_loss(fake, seg, real=True)) > 10
    assert float(n1_loss(fake, seg, real=False)) < 1e-6
    assert float(n1_loss(right, seg, real=False)) > 10


def test_labelmix_map_follows_the_label_regions():
    seg = one_hot(_mask(n=16), 4)
    torch.manual_seed(0)
    mix = labelmix_map(seg)
    assert mix.shape == (16, 1, 64, 64) and set(mix.unique().tolist()) <= {0.0, 1.0}
    labels = seg.argmax(1)
    for i in range(16):
        for c in range(4):
            assert mix[i, 0][labels[i] == c].unique().numel() == 1  # one coin per region
    assert 0 < float(mix.mean()) < 1  # both sources are drawn


class PixelwiseD(nn.Module):
    """A 1x1 conv: its output on a mix is exactly the mix of its outputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 5, 1)

    def forward(self, image, seg=None):
        return [[self.conv(image)]]


def test_labelmix_loss_is_zero_for_a_pixelwise_discriminator_and_not_for_the_unet():
    seg = one_hot(_mask(), 4)
    torch.manual_seed(0)
    real, fake = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
    _, terms = discriminator_losses(PixelwiseD(), seg, fake, real, discriminator_kind="oasis",
                                    lambda_labelmix=10.0)
    assert set(terms) == {"d_fake", "d_real", "d_labelmix"}
    assert float(terms["d_labelmix"]) < 1e-10
    D = SegmentationDiscriminator(ModelConfig(image_size=64, **SMALL))
    nn.init.normal_(D.head.weight, std=1.0)  # a discriminator with an opinion
    total, terms = discriminator_losses(D, seg, fake, real, discriminator_kind="oasis",
                                        lambda_labelmix=10.0)
    assert float(terms["d_labelmix"]) > 0
    assert float(total) == pytest.approx(sum(float(v) for v in terms.values()), rel=1e-6)
    _, off = discriminator_losses(D, seg, fake, real, discriminator_kind="oasis",
                                  lambda_labelmix=0.0)
    assert set(off) == {"d_fake", "d_real"}


def test_the_discriminator_learns_to_segment_real_images():
    """Adam steps at the default lr_D on images whose grey says the class: every class's real
    pixels get their class (a per-class accuracy: the background alone is 94% of the pixels),
    the fake pixels "fake"."""
    torch.manual_seed(0)
    mask = _mask(n=4)
    seg = one_hot(mask, 4)
    real = (mask.float() / 3 * 2 - 1).unsqueeze(1)
    fake = torch.zeros_like(real)
    D = SegmentationDiscriminator(ModelConfig(image_size=64, **SMALL))
    opt = torch.optim.Adam(D.parameters(), lr=4e-4, betas=(0.0, 0.9))
    for _ in range(200):  # 100 are enough with 2 threads, not with 1 (other rounding)
        opt.zero_grad()
        discriminator_losses(D, seg, fake, real, discriminator_kind="oasis",
                             lambda_labelmix=10.0)[0].backward()
        opt.step()
    D.eval()
    with torch.no_grad():
        real_pred = D(real)[0][-1].argmax(1)
        fake_pred = D(fake)[0][-1].argmax(1)
    for c in range(4):
        assert float((real_pred[mask == c] == c + 1).float().mean()) > 0.9, c
    assert float((fake_pred == FAKE_CLASS).float().mean()) > 0.9


def test_the_generator_learns_through_it():
    torch.manual_seed(0)
    G, D, _ = build_models(ModelConfig(image_size=64, **SMALL))
    seg = one_hot(_mask(), 4)
    real = torch.rand(2, 1, 64, 64) * 2 - 1
    total, terms, _ = generator_losses(G, D, seg, real, lambda_l1=0.0,
                                       discriminator_kind="oasis")
    assert set(terms) == {"g_gan", "g_feat"}
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in G.parameters() if p.requires_grad)


def test_fingerprint_holds_the_discriminator_only_when_not_the_default():
    default = fingerprinted_settings(TrainConfig.from_dict(), 128, "0" * 64)
    assert "discriminator" not in default["model"] and "lambda_labelmix" not in default["train"]
    weight = fingerprinted_settings(TrainConfig.from_dict({"lambda_labelmix": 1.0}), 128, "0" * 64)
    assert weight == default  # unused without the segmentation discriminator
    oasis = fingerprinted_settings(TrainConfig.from_dict({"discriminator": "oasis"}), 128, "0" * 64)
    assert oasis["model"]["discriminator"] == "oasis" and oasis["train"]["lambda_labelmix"] == 10.0
    with pytest.raises(ConfigError, match="train.discriminator"):
        TrainConfig.from_dict({"discriminator": "stylegan"})


def test_training_with_it_logs_labelmix(tmp_path):
    images, annos = write_split(tmp_path / "data", patients=4, size=64)
    cfg = TrainConfig.from_dict({**SMALL, "epochs": 2, "batch_size": 4, "log_every": 1,
                                 "checkpoint_every": 2, "sample_every": 1})
    res = train(images_h5=[images], annos_h5=[annos], out_dir=tmp_path / "run",
                state_dir=tmp_path / "run" / "state", cfg=cfg, image_size=64, threads=1,
                progress=False)
    assert res.step == 4
    with open(tmp_path / "run" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and "d_labelmix" in rows[0]
    assert all(float(r["d_total"]) == pytest.approx(
        float(r["d_real"]) + float(r["d_fake"]) + float(r["d_labelmix"]), rel=1e-4) for r in rows)
