"""SPADE losses on hand-computed tensors, the VGG19 perceptual loss, and the step compositions."""

from __future__ import annotations

import pytest
import torch

from cardigan.core.config import ConfigError
from cardigan.gan.layers import one_hot
from cardigan.gan.losses import (
    VGGPerceptualLoss,
    class_balance,
    discriminate,
    discriminator_losses,
    feature_matching_loss,
    generator_losses,
    hinge_d_loss,
    hinge_g_loss,
    kl_loss,
    r1_penalty,
    vgg19_features,
)
from cardigan.gan.model import build_models
from cardigan.gan.model_config import ModelConfig

t = torch.tensor


def test_hinge_d_loss_hand_computed():
    feat = torch.zeros(1, 2, 2, 2)  # intermediate features are ignored by the hinge loss
    real = [[feat, t([2.0, 0.5, -1.0])], [feat, t([0.0])]]  # relu(1-x): mean .8333, then 1
    fake = [[feat, t([-2.0, 0.0, 1.0])], [feat, t([-1.0])]]  # relu(1+x): mean 1, then 0
    expected = (5 / 6 + 1.0) / 2 + (1.0 + 0.0) / 2
    assert hinge_d_loss(real, fake).item() == pytest.approx(expected)


def test_hinge_g_loss_hand_computed():
    fake = [[torch.ones(1, 1, 2, 2), t([1.0, 3.0])], [t([-4.0])]]
    assert hinge_g_loss(fake).item() == pytest.approx((-2.0 + 4.0) / 2)


def test_feature_matching_hand_computed_and_real_detached():
    a, b, c = torch.zeros(2, 3, 4, 4), torch.rand(2, 3, 2, 2), torch.zeros(2, 2, 3, 3)
    real = [[a.clone().requires_grad_(), b, t([100.0])], [c, t([-50.0])]]
    fake = [[(a + 1).requires_grad_(), b.clone(), t([0.0])], [c + 2, t([9.0])]]
    loss = feature_matching_loss(real, fake)
    # scale 0: L1 1 + 0 ; scale 1: L1 2 ; the last (prediction) maps are not matched
    assert loss.item() == pytest.approx((1 + 0 + 2) / 2)
    loss.backward()
    assert real[0][0].grad is None and fake[0][0].grad is not None


def test_kl_loss():
    assert kl_loss(torch.zeros(3, 5), torch.zeros(3, 5)).item() == 0.0
    # mu = 1, logvar = 0: 0.5 per element, summed over z, averaged over the batch
    assert kl_loss(torch.ones(3, 5), torch.zeros(3, 5)).item() == pytest.approx(2.5)
    # a per-sample mean: the same for any batch size (its weight does not change with gpus)
    mu, lv = torch.randn(2, 5), torch.randn(2, 5)
    assert kl_loss(mu.repeat(4, 1), lv.repeat(4, 1)).item() == pytest.approx(kl_loss(mu, lv).item())
    # mu = 0, logvar = log 4: -0.5 (1 + log 4 - 4) per element
    lv = torch.full((1, 2), torch.log(t(4.0)).item())
    assert kl_loss(torch.zeros(1, 2), lv).item() == pytest.approx(-(1 + 1.3862944 - 4.0))


# ------------------------------------------------------------------------------ VGG19
@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A random VGG19 state_dict with torchvision's key names (incl. layers we do not use)."""
    torch.manual_seed(0)
    feats = vgg19_features(upto=36)  # torchvision's full features: 37 modules, convs to 34
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(state, path)
    return path


def test_vgg_loss_from_local_file(vgg_file):
    vgg = VGGPerceptualLoss(str(vgg_file))
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    torch.manual_seed(1)
    real = torch.rand(2, 1, 32, 32) * 2 - 1
    fake = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_()
    loss = vgg(fake, real)
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert vgg(real, real).item() == 0.0
    ref = torch.load(vgg_file, weights_only=True)
    assert torch.equal(vgg.features[28].weight, ref["features.28.weight"])


def test_vgg_loss_errors(tmp_path, vgg_file):
    with pytest.raises(ConfigError, match=r"train\.perceptual_weights.*nope\.pth does not exist"):
        VGGPerceptualLoss(str(tmp_path / "nope.pth"))
    wrong = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    with pytest.raises(ConfigError, match=r"train\.perceptual_weights.*not a torchvision VGG19"):
        VGGPerceptualLoss(str(wrong))
    state = torch.load(vgg_file, weights_only=True)
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    shaped = tmp_path / "gray.pth"
    torch.save(state, shaped)
    with pytest.raises(ConfigError, match=r"features\.0\.weight has shape \(64, 1, 3, 3\)"):
        VGGPerceptualLoss(str(shaped))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match=r"cannot read .*garbage\.pth"):
        VGGPerceptualLoss(str(garbage))


# ------------------------------------------------------------------------------ compositions
def _models(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(**{"image_size": 64, "background_classes": 0, "ngf": 4, "ndf": 4,
                         "spade_hidden": 8, "n_layers_D": 2, "z_dim": 8, **kw})
    mask = torch.randint(0, 4, (2, 64, 64))
    return cfg, build_models(cfg), one_hot(mask, 4), torch.rand(2, 1, 64, 64) * 2 - 1


def test_discriminate_splits_fake_and_real():
    _, (G, D, _), seg, real = _models()
    D.eval()  # no spectral-norm power iteration between the two calls
    fake = G(seg).detach()
    fake_preds, real_preds, *_ = discriminate(D, seg, fake, real)
    alone = D(real, seg)  # instance norm: batching fake with real changes nothing
    for joint, single in zip(real_preds, alone, strict=True):
        for a, b in zip(joint, single, strict=True):
            torch.testing.assert_close(a, b)
    assert len(fake_preds) == 2 and fake_preds[0][-1].shape == alone[0][-1].shape


def test_generator_and_discriminator_losses(vgg_file):
    cfg, (G, D, E), seg, real = _models(use_vae=True)
    vgg = VGGPerceptualLoss(str(vgg_file))
    total, terms, fake = generator_losses(G, D, seg, real, encoder=E, vgg=vgg, lambda_feat=10.0,
                                          lambda_kld=0.05, lambda_vgg=10.0)
    assert set(terms) == {"g_gan", "g_feat", "g_kld", "g_vgg"}
    assert torch.isclose(total, sum(terms.values()))
    assert fake.shape == real.shape
    total.backward()
    assert G.fc.weight.grad is not None and E.fc_mu.weight.grad is not None

    _, terms, _ = generator_losses(G, D, seg, real, lambda_feat=0.0)
    assert set(terms) == {"g_gan"}
    _, terms, fake = generator_losses(G, D, seg, real, lambda_feat=0.0, lambda_l1=4.0)
    assert set(terms) == {"g_gan", "g_l1"}
    torch.testing.assert_close(terms["g_l1"], (fake - real).abs().mean() * 4.0)
    _, terms, fake = generator_losses(G, D, seg, real, lambda_feat=0.0, lambda_l1=4.0,
                                      l1_balance=True)
    weights = class_balance(seg).unsqueeze(1)  # every class of the map weighs the same
    torch.testing.assert_close(terms["g_l1"], ((fake - real).abs() * weights).mean() * 4.0)

    d_total, d_terms = discriminator_losses(D, seg, fake, real)
    assert set(d_terms) == {"d_fake", "d_real"}
    G.zero_grad()
    d_total.backward()
    assert G.fc.weight.grad is None or G.fc.weight.grad.abs().sum() == 0  # fake was detached
    assert all(p.grad is not None for p in D.parameters())


class _LinearD(torch.nn.Module):
    """D(x) = w * x on one scale, so d(sum D)/dx = w at every pixel."""

    def __init__(self, w: float):
        super().__init__()
        self.w = torch.nn.Parameter(t(w))

    def forward(self, x, seg):
        return [[x * self.w]]


def test_r1_penalty_hand_computed_and_differentiable():
    D, real = _LinearD(3.0), torch.rand(2, 1, 4, 5)
    penalty = r1_penalty(D, None, real)
    assert penalty.item() == pytest.approx(9.0 * 4 * 5)  # |w|^2 summed over the pixels
    penalty.backward()
    assert D.w.grad.item() == pytest.approx(2 * 3.0 * 4 * 5)
    assert not real.requires_grad  # the caller's tensor is left alone


def test_discriminator_losses_add_r1_on_the_unwrapped_network():
    _, (G, D, _), seg, real = _models()
    fake = G(seg).detach()
    _, plain = discriminator_losses(D, seg, fake, real)
    total, terms = discriminator_losses(D, seg, fake, real, r1_weight=4.0, r1_discriminator=D)
    assert set(terms) == set(plain) | {"d_r1"}
    torch.testing.assert_close(terms["d_r1"], r1_penalty(D, seg, real) * 2.0)
    assert terms["d_r1"] > 0
    total.backward()
    assert all(p.grad is not None for p in D.parameters())
