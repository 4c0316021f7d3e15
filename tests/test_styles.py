"""Style inputs: VAE codes (prior or the real style bank), OASIS-style 3D noise, texture noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_fixtures import field_images, write_split

from cardigan.gan.appearance import Appearance, GreyLevels, Speckle
from cardigan.gan.generator import SPADEGenerator
from cardigan.gan.generator_file import load_generator
from cardigan.gan.layers import one_hot
from cardigan.gan.model import build_models
from cardigan.gan.model_config import ModelConfig
from cardigan.gan.styles import (
    BANK_KEY,
    StyleBank,
    draw_styles,
    effective_source,
    encode_bank,
    is_multimodal,
)
from cardigan.gan.train import train
from cardigan.gan.train_config import TrainConfig

SIZE = 64
BASE = dict(image_size=SIZE, background_classes=0, ngf=4, ndf=4, spade_hidden=8, n_layers_D=2,
            z_dim=6, use_vae=False, texture_noise=False)


def gen(**kw) -> SPADEGenerator:
    torch.manual_seed(0)
    g = build_models(ModelConfig(**{**BASE, **kw}))[0].eval()
    if g.cfg.texture_noise:  # the scales start at zero: make the noise visible
        with torch.no_grad():
            for p in g.noise_scale.values():
                p.fill_(0.5)
    return g


def masks(n: int) -> torch.Tensor:
    m = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    m[:, 16:40, 20:44] = 2
    m[:, 20:36, 24:40] = 1
    m[:, 40:52, 24:40] = 3
    return one_hot(m, 4)


def test_config_refuses_two_style_inputs():
    with pytest.raises(ValueError, match="train.use_vae and train.noise_dim"):
        ModelConfig(**{**BASE, "use_vae": True, "noise_dim": 4})
    with pytest.raises(ValueError, match="noise_dim"):
        ModelConfig(**{**BASE, "noise_dim": -1})
    assert not is_multimodal(ModelConfig(**BASE))
    assert is_multimodal(ModelConfig(**{**BASE, "texture_noise": True}))
    assert ModelConfig(**{**BASE, "noise_dim": 5}).style_dim == 5
    assert ModelConfig(**{**BASE, "use_vae": True}).style_dim == 6


@pytest.mark.parametrize("kw", [dict(texture_noise=True), dict(noise_dim=3),
                                dict(use_vae=True, texture_noise=True)])
def test_each_style_input_changes_the_image(kw):
    g = gen(**kw)
    seg = masks(2)
    cfg = g.cfg
    s1, s2 = draw_styles(cfg, [1, 2], "prior", None), draw_styles(cfg, [3, 4], "prior", None)
    with torch.no_grad():
        a, b, again = g(seg, s1.z, s1.noise), g(seg, s2.z, s2.noise), g(seg, s1.z, s1.noise)
    assert a.shape == (2, 1, SIZE, SIZE)
    assert torch.equal(a, again)  # given styles: deterministic
    assert (a - b).abs().mean() > 1e-3


@pytest.mark.parametrize("kw", [dict(texture_noise=True), dict(use_vae=True, texture_noise=True)])
def test_k_styles_per_mask_share_the_mask_features(kw):
    """k*B styles for B masks, with or without cached mask features, equal the images made
    mask by mask."""
    g = gen(**kw)
    seg = masks(2)
    drawn = draw_styles(g.cfg, list(range(6)), "prior", None)  # 3 styles per mask
    z, noise = drawn.z, drawn.noise
    with torch.no_grad():
        together = g(seg, z, noise)
        cached = g(seg, z, noise, cached=g.mask_features(seg))
        one_by_one = torch.cat([g(seg[i // 3:i // 3 + 1], None if z is None else z[i:i + 1],
                                  noise[i:i + 1]) for i in range(6)])
    assert together.shape == (6, 1, SIZE, SIZE)
    torch.testing.assert_close(together, one_by_one, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cached, together)


def test_3d_noise_has_no_mask_only_cache():
    g = gen(noise_dim=3)
    with pytest.raises(ValueError, match="3D noise"):
        g.mask_features(masks(1))
    with pytest.raises(ValueError, match="z must be"):
        g(masks(2), torch.zeros(2, 4))


def test_draws_are_per_seed_and_labelled():
    cfg = ModelConfig(**{**BASE, "use_vae": True, "texture_noise": True})
    a = draw_styles(cfg, [5, 6, 7], "prior", None)
    b = draw_styles(cfg, [7], "prior", None)
    assert torch.equal(a.z[2], b.z[0]) and torch.equal(a.noise[2], b.noise[0])  # batch-independent
    assert a.labels == ["prior"] * 3 and a.noise.shape == (3, 1, SIZE, SIZE)
    assert a.grey_index == [None] * 3
    bank = StyleBank(mu=torch.arange(12.0).view(2, 6), logvar=torch.full((2, 6), -20.0),
                     ids=("patient0001_4CH_ED", "patient0001_4CH_ES"))
    drawn = draw_styles(cfg, [1, 2, 3, 4], "real", bank)
    for row, label in zip(drawn.z, drawn.labels):
        kind, ident = label.split(":")
        assert kind == "real" and ident in bank.ids
        # logvar -20: the draw is the encoding itself
        torch.testing.assert_close(row, bank.mu[bank.ids.index(ident)], atol=1e-3, rtol=0)
    assert effective_source(cfg, "real", None) == "prior"
    assert effective_source(ModelConfig(**{**BASE, "noise_dim": 2}), "real", bank) == "prior"
    none = draw_styles(ModelConfig(**BASE), [1], "real", bank)
    assert (none.z, none.noise, none.labels) == (None, None, ["none"])
    with pytest.raises(ValueError, match="sample.style_source"):
        effective_source(cfg, "random", bank)


def test_grey_levels_are_drawn_with_the_style():
    ids = ("p1_4CH_ED", "p1_4CH_ES", "p2_4CH_ED")
    grey = GreyLevels.from_images(field_images(3, SIZE), ids)
    bank = StyleBank(mu=torch.zeros(3, 6), logvar=torch.zeros(3, 6), ids=ids)
    vae = ModelConfig(**{**BASE, "use_vae": True, "texture_noise": True})
    with_grey = draw_styles(vae, [1, 2, 3, 4], "real", bank, grey)
    plain = draw_styles(vae, [1, 2, 3, 4], "real", bank)
    assert torch.equal(with_grey.z, plain.z) and torch.equal(with_grey.noise, plain.noise)
    assert with_grey.labels == plain.labels  # the style's image lends its grey levels
    assert [ids[i] for i in with_grey.grey_index] == [s.split(":")[1] for s in plain.labels]
    mask_only = draw_styles(ModelConfig(**BASE), list(range(20)), "real", bank, grey)
    assert all(s.startswith("none+grey:") for s in mask_only.labels)
    assert len(set(mask_only.grey_index)) > 1
    assert draw_styles(ModelConfig(**BASE), [7], "real", bank, grey).labels[0] == \
        mask_only.labels[7]  # per seed
    images = field_images(4, SIZE)
    assert not np.array_equal(with_grey.apply(images, Appearance(grey=grey)), images)
    assert np.array_equal(plain.apply(images, Appearance()), images)
    assert len(set(with_grey.speckle_seed)) == 4  # each sample its own speckle
    other = GreyLevels(grey.cdf, ("x", "y", "z"))
    with pytest.raises(ValueError, match="different training images"):
        draw_styles(vae, [1], "real", bank, other)


def test_bank_round_trip_and_encoding():
    torch.manual_seed(0)
    cfg = ModelConfig(**{**BASE, "use_vae": True})
    _, _, encoder = build_models(cfg)
    images = np.random.default_rng(0).integers(0, 255, (5, SIZE, SIZE), dtype=np.uint8)
    ids = [f"p{i}" for i in range(5)]
    bank = encode_bank(encoder, images, ids, torch.device("cpu"), batch_size=2)
    assert bank.mu.shape == (5, 6) and bank.ids == tuple(ids)
    mu, _ = encoder.eval()(torch.from_numpy(images[3:4]).unsqueeze(1).float() / 127.5 - 1)
    torch.testing.assert_close(bank.mu[3], mu[0])
    back = StyleBank.from_extra({BANK_KEY: bank.to_extra()})
    assert torch.equal(back.mu, bank.mu) and back.ids == bank.ids
    assert StyleBank.from_extra({}) is None
    with pytest.raises(ValueError, match="inconsistent"):
        StyleBank.from_extra({"style_bank": {"mu": bank.mu, "logvar": bank.logvar, "ids": ["a"]}})


def test_vae_training_stores_the_real_style_bank(tmp_path):
    data = write_split(tmp_path / "data", patients=4, size=SIZE)
    cfg = TrainConfig.from_dict(dict(epochs=1, batch_size=4, background_classes=0, ngf=4, ndf=4,
                                     spade_hidden=8, num_D=1, n_layers_D=2, z_dim=6, use_vae=True,
                                     texture_noise=True, log_every=1, checkpoint_every=2,
                                     sample_every=1))
    train(images_h5=[data[0]], annos_h5=[data[1]], out_dir=tmp_path / "out",
          state_dir=tmp_path / "state", cfg=cfg, image_size=SIZE, threads=1, progress=False)
    _, model_cfg, extra = load_generator(tmp_path / "out" / "generator.pt")
    assert model_cfg.use_vae and model_cfg.texture_noise
    bank = StyleBank.from_extra(extra)
    assert bank is not None and bank.mu.shape == (8, 6)
    assert bank.ids[:2] == ("patient0001_4CH_ED", "patient0001_4CH_ES")
    grey = GreyLevels.from_extra(extra)  # every training image's grey levels, in bank order
    assert grey is not None and grey.ids == bank.ids and grey.cdf.shape == (8, 256)
    assert Speckle.from_extra(extra) is not None
