"""DiffAugment: the discriminator's inputs augmented, masks moved with their images."""

from __future__ import annotations

import pytest
import torch

from cardigan.gan.diffaug import augment_pairs, parse_policy
from cardigan.gan.fingerprint import fingerprinted_settings
from cardigan.gan.layers import one_hot
from cardigan.gan.losses import discriminator_losses, generator_losses
from cardigan.gan.model import build_models
from cardigan.gan.model_config import ModelConfig
from cardigan.gan.train_config import TrainConfig


def _pairs(n=3, size=32):
    torch.manual_seed(0)
    mask = torch.zeros(n, size, size, dtype=torch.long)
    mask[:, 8:20, 10:22] = 1
    mask[:, 20:26, 10:22] = 3
    mask[:, 6:8, 8:24] = 2
    seg = one_hot(mask, 4)
    # an image that says which label each pixel has: augmenting must keep the two in step
    img = (mask.float() / 3 * 2 - 1).unsqueeze(1)
    return torch.cat([img, img.clone()]), torch.cat([seg, seg])


def test_policy():
    assert parse_policy("") == () and parse_policy(None) == ()
    assert parse_policy("cutout,translation") == ("translation", "cutout")
    with pytest.raises(ValueError, match="train.diffaug.*rotate"):
        parse_policy("translation,rotate")


def test_off_is_the_identity():
    x, seg = _pairs()
    ax, aseg = augment_pairs(x, seg, ())
    assert ax is x and aseg is seg


@pytest.mark.parametrize("policy", [("translation",), ("cutout",), ("translation", "cutout")])
def test_spatial_transforms_move_the_mask_with_its_image(policy):
    x, seg = _pairs()
    torch.manual_seed(1)
    ax, aseg = augment_pairs(x, seg, policy)
    assert ax.shape == x.shape and aseg.shape == seg.shape
    n = x.shape[0] // 2
    assert torch.equal(ax[:n], ax[n:]) and torch.equal(aseg[:n], aseg[n:])  # pairs alike
    labelled = aseg.sum(1) > 0
    # where a label remains it is one label, and the image there is that label's grey
    assert torch.all(aseg.sum(1)[labelled] == 1)
    label = aseg.argmax(1).float()
    assert torch.allclose(ax[:, 0][labelled], (label / 3 * 2 - 1)[labelled])
    if "cutout" in policy:  # no label and a 0 image where the square was cut
        assert (~labelled).any() and torch.all(ax[:, 0][~labelled] == 0)
    else:  # translation fills with black background, and something moved
        assert labelled.all() and not torch.equal(aseg, seg)


def test_color_leaves_the_mask_and_is_differentiable():
    x, seg = _pairs()
    x.requires_grad_(True)
    torch.manual_seed(2)
    ax, aseg = augment_pairs(x, seg, ("color", "translation", "cutout"))
    ax.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.manual_seed(2)
    again, _ = augment_pairs(x.detach(), seg, ("color", "translation", "cutout"))
    assert torch.equal(again, ax.detach())  # from torch's RNG: reproducible


def test_losses_run_with_augmentation_and_the_generator_learns_through_it():
    cfg = ModelConfig(image_size=64, background_classes=0, ngf=4, ndf=4, spade_hidden=8,
                      n_layers_D=2, use_vae=False, texture_noise=False)
    torch.manual_seed(0)
    G, D, _ = build_models(cfg)
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[:, 16:40, 20:44] = 1
    seg = one_hot(mask, 4)
    real = torch.rand(2, 1, 64, 64) * 2 - 1
    policy = parse_policy("color,translation,cutout")
    total, terms, fake = generator_losses(G, D, seg, real, diffaug=policy, lambda_l1=0.0)
    total.backward()
    assert all(p.grad is not None for p in G.parameters() if p.requires_grad)
    d_total, d_terms = discriminator_losses(D, seg, fake, real, policy)
    assert torch.isfinite(d_total) and set(d_terms) == {"d_fake", "d_real"}


def test_fingerprint_holds_the_policy_only_when_on():
    off = fingerprinted_settings(TrainConfig.from_dict(), 128, "0" * 64)
    on = fingerprinted_settings(TrainConfig.from_dict({"diffaug": "translation"}), 128, "0" * 64)
    assert "diffaug" not in off["train"] and on["train"]["diffaug"] == "translation"
    with pytest.raises(ValueError, match="train.diffaug"):
        TrainConfig.from_dict({"diffaug": "rotate"})
