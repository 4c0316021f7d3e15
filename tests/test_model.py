"""SPADE networks: shapes, mask conditioning, VAE, discriminator layout, determinism, files."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from cardigan.gan.discriminator import MultiscaleDiscriminator, NLayerDiscriminator
from cardigan.gan.encoder import ConvEncoder, reparameterize
from cardigan.gan.generator import SPADEGenerator
from cardigan.gan.generator_file import GENERATOR_FORMAT, load_generator, save_generator
from cardigan.gan.layers import one_hot
from cardigan.gan.model import build_models
from cardigan.gan.model_config import ModelConfig

SMALL = dict(background_classes=0, ngf=4, ndf=4, spade_hidden=8, n_layers_D=2, z_dim=8,
             use_vae=False, texture_noise=False)


def small_cfg(**kw) -> ModelConfig:
    return ModelConfig(**{"image_size": 64, **SMALL, **kw})


def blocky_mask(batch: int, size: int, label_nc: int = 4, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, label_nc, (batch, 1, 4, 4), generator=gen).float()
    return nn.functional.interpolate(coarse, size=size, mode="nearest").long()[:, 0]


def seg_for(cfg: ModelConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return one_hot(blocky_mask(batch, cfg.image_size, cfg.label_nc, seed), cfg.label_nc)


# ------------------------------------------------------------------------------ config
def test_config_dict_round_trip_and_diff():
    cfg = small_cfg(use_vae=True)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    other = dataclasses.replace(cfg, ngf=8, label_nc=5)
    assert cfg.diff(other) == {"ngf": (4, 8), "label_nc": (4, 5)}
    assert cfg.diff(cfg) == {}
    with pytest.raises(ValueError, match="unknown model setting.*colour"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": 3})


def test_config_from_train_config_picks_model_fields():
    train = {"ngf": 8, "ndf": 6, "label_nc": 5, "epochs": 3, "lr_G": 1e-4, "use_vae": True,
             "num_upsampling_layers": "more", "spade_hidden": 16, "z_dim": 32}
    cfg = ModelConfig.from_train_config(train, image_size=128)
    assert (cfg.ngf, cfg.ndf, cfg.label_nc, cfg.image_size) == (8, 6, 5, 128)
    assert (cfg.use_vae, cfg.num_upsampling_layers, cfg.spade_hidden, cfg.z_dim) == (
        True, "more", 16, 32)
    assert cfg.norm_G == "instance"  # not in train: default


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(image_size=100), r"image_size: 100 is not divisible by 2\*\*5 = 32"),
        (dict(image_size=32), "1x1 start map"),
        (dict(image_size=128, num_upsampling_layers="more"), None),
        (dict(image_size=128, num_upsampling_layers="most"), "1x1 start map"),
        (dict(num_upsampling_layers="many"), "num_upsampling_layers: 'many' is not one of"),
        (dict(norm_G="group"), "norm_G: 'group' is not one of"),
        (dict(ngf=0), "train.ngf: 0 is less than the minimum of 1"),
        (dict(label_nc=1), "train.label_nc: 1 is less than the minimum of 2"),
    ],
)
def test_config_validation(kw, match):
    if match is None:
        assert small_cfg(**kw).start_size == 2
    else:
        with pytest.raises(ValueError, match=match):
            small_cfg(**kw)


# ------------------------------------------------------------------------------ one-hot
def test_one_hot_values_and_layouts():
    mask = torch.tensor([[[0, 1], [3, 2]]], dtype=torch.uint8)
    oh = one_hot(mask, 4)
    assert oh.shape == (1, 4, 2, 2) and oh.dtype == torch.float32
    assert torch.equal(oh.argmax(1), mask.long())
    assert torch.equal(oh.sum(1), torch.ones(1, 2, 2))
    assert torch.equal(one_hot(mask[:, None], 4), oh)
    assert one_hot(mask, 6).shape == (1, 6, 2, 2) and one_hot(mask, 6)[:, 4:].sum() == 0


def test_one_hot_rejects_bad_masks():
    mask = torch.tensor([[[0, 5], [1, 2]]])
    with pytest.raises(ValueError, match=r"mask has value 5 >= label_nc=4"):
        one_hot(mask, 4)
    with pytest.raises(ValueError, match="negative value -1"):
        one_hot(torch.tensor([[[0, -1]]]), 4)
    with pytest.raises(TypeError, match="integer"):
        one_hot(torch.zeros(1, 2, 2), 4)
    with pytest.raises(ValueError, match="shape"):
        one_hot(torch.zeros(1, 2, 2, 2, dtype=torch.long), 4)


# ------------------------------------------------------------------------------ generator
@pytest.mark.parametrize(
    "ups, size", [("normal", 64), ("normal", 96), ("normal", 128), ("more", 128), ("most", 256)]
)
def test_generator_shapes_and_range(ups, size):
    torch.manual_seed(0)
    cfg = small_cfg(image_size=size, num_upsampling_layers=ups)
    G = SPADEGenerator(cfg)
    assert cfg.start_size == size // 2 ** {"normal": 5, "more": 6, "most": 7}[ups]
    assert hasattr(G, "up_4") == (ups == "most")
    out = G(seg_for(cfg, batch=1 if size == 256 else 2))
    assert out.shape == (1 if size == 256 else 2, 1, size, size)
    assert torch.isfinite(out).all() and out.abs().max() <= 1.0
    assert out.std() > 0


def test_generator_output_depends_on_mask():
    torch.manual_seed(0)
    cfg = small_cfg()
    G = SPADEGenerator(cfg).eval()
    mask = blocky_mask(1, 64)
    changed = mask.clone()
    changed[:, :32, :32] = (changed[:, :32, :32] + 1) % 4
    with torch.no_grad():
        a, b = G(one_hot(mask, 4)), G(one_hot(changed, 4))
        assert torch.equal(a, G(one_hot(mask, 4)))  # deterministic in eval mode
    diff = (a - b).abs()
    assert diff.max() > 1e-4
    # the change is local: the far corner (outside the receptive-field spread) moves least
    assert diff[..., :32, :32].mean() > diff[..., 48:, 48:].mean()


def test_generator_rejects_wrong_seg():
    G = SPADEGenerator(small_cfg())
    with pytest.raises(ValueError, match=r"\(B,4,H,W\) one-hot"):
        G(torch.zeros(1, 3, 64, 64))


def test_spectral_norm_on_block_convs():
    torch.manual_seed(0)
    G = SPADEGenerator(small_cfg())
    block = G.up_1
    for conv in (block.conv_0, block.conv_1, block.conv_s):
        assert hasattr(conv, "parametrizations") and hasattr(conv.parametrizations, "weight")
    assert not hasattr(G.conv_img, "parametrizations")  # as in the reference: only block convs
    sigma = torch.linalg.matrix_norm(block.conv_0.weight.detach().flatten(1), ord=2)
    assert sigma == pytest.approx(1.0, abs=0.05)


# ------------------------------------------------------------------------------ VAE
@pytest.mark.parametrize("size", [64, 96])
def test_vae_encoder_and_z(size):
    torch.manual_seed(0)
    cfg = small_cfg(image_size=size, use_vae=True)
    G, _, E = build_models(cfg)
    assert isinstance(E, ConvEncoder)
    image = torch.rand(3, 1, size, size) * 2 - 1
    mu, logvar = E(image)
    assert mu.shape == logvar.shape == (3, cfg.z_dim)
    z = reparameterize(mu, logvar)
    assert z.shape == (3, cfg.z_dim)

    G.eval()
    seg = seg_for(cfg, batch=1)
    z1, z2 = torch.randn(1, cfg.z_dim), torch.randn(1, cfg.z_dim)
    with torch.no_grad():
        a, b = G(seg, z1), G(seg, z2)
        assert torch.equal(a, G(seg, z1))
        torch.manual_seed(5)
        r1 = G(seg)  # z drawn from torch's global RNG
        torch.manual_seed(5)
        r2 = G(seg)
    assert a.shape == (1, 1, size, size)
    assert (a - b).abs().max() > 1e-4
    assert torch.equal(r1, r2)


def test_reparameterize_statistics():
    torch.manual_seed(0)
    mu, logvar = torch.full((20000, 2), 3.0), torch.full((20000, 2), 2 * torch.log(torch.tensor(0.5)))
    z = reparameterize(mu, logvar)
    assert z.mean().item() == pytest.approx(3.0, abs=0.02)
    assert z.std().item() == pytest.approx(0.5, abs=0.02)


def test_no_encoder_without_vae():
    assert build_models(small_cfg())[2] is None


# ------------------------------------------------------------------------------ discriminator
def test_discriminator_layout():
    torch.manual_seed(0)
    cfg = small_cfg(num_D=3, n_layers_D=3)
    D = MultiscaleDiscriminator(cfg)
    image = torch.rand(2, 1, 64, 64) * 2 - 1
    preds = D(image, seg_for(cfg))
    assert len(preds) == 3
    for scale in preds:
        assert len(scale) == cfg.n_layers_D + 1
        assert [f.shape[1] for f in scale] == [4, 8, 16, 1]  # ndf, 2ndf, 4ndf, prediction
    # each scale sees the input average-pooled by 2 more than the previous one
    assert preds[0][0].shape[-1] > preds[1][0].shape[-1] > preds[2][0].shape[-1]
    assert preds[0][0].shape[-1] == 33  # 4x4 conv, stride 2, padding 2 on 64


def test_discriminator_width_capped_at_512():
    D = NLayerDiscriminator(small_cfg(ndf=128, n_layers_D=4))
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 512, 512, 1]
    assert all(c.kernel_size == (4, 4) for c in convs)
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in D.modules()) == 3


# ------------------------------------------------------------------------------ determinism, copies
def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_construction_is_deterministic_from_seed():
    cfg = small_cfg(use_vae=True)
    torch.manual_seed(3)
    first = build_models(cfg)
    torch.manual_seed(3)
    second = build_models(cfg)
    torch.manual_seed(4)
    third = build_models(cfg)
    for a, b, c in zip(first, second, third, strict=True):
        assert _states_equal(a, b)
        assert not _states_equal(a, c)


def test_deepcopy_and_state_dict_round_trip():
    torch.manual_seed(0)
    cfg = small_cfg()
    G = SPADEGenerator(cfg)
    ema = copy.deepcopy(G)
    seg = seg_for(cfg)
    G(seg)  # a training-mode forward runs a power iteration on G's buffers only
    assert not _states_equal(G, ema)
    ema.load_state_dict(G.state_dict())
    assert _states_equal(G, ema)
    torch.manual_seed(1)
    fresh = SPADEGenerator(cfg)
    fresh.load_state_dict(G.state_dict())
    G.eval(), ema.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(G(seg), ema(seg)) and torch.equal(G(seg), fresh(seg))


def test_batch_norm_variant_converts_to_sync_batchnorm():
    torch.manual_seed(0)
    G, D, _ = build_models(small_cfg(norm_G="batch", norm_D="batch"))
    g_bn = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
    assert g_bn and all(type(m) is nn.BatchNorm2d and not m.affine for m in g_bn)
    assert all(m.affine for m in D.modules() if isinstance(m, nn.BatchNorm2d))
    G_sync = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(G))
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in G_sync.modules()) == len(g_bn)
    assert not any(type(m) is nn.BatchNorm2d for m in G_sync.modules())
    assert G_sync.state_dict().keys() == G.state_dict().keys()


def test_bf16_autocast_channels_last_forward_backward():
    torch.manual_seed(0)
    cfg = small_cfg()
    G, D, _ = build_models(cfg)
    G.to(memory_format=torch.channels_last)
    D.to(memory_format=torch.channels_last)
    seg = seg_for(cfg).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = G(seg)
        loss = D(fake, seg)[0][-1].float().mean()
    loss.backward()
    assert fake.shape == (2, 1, 64, 64)
    assert all(torch.isfinite(p.grad).all() for p in G.parameters() if p.grad is not None)
    assert G.fc.weight.grad is not None


# ------------------------------------------------------------------------------ generator files
def test_save_load_generator_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = small_cfg(use_vae=True)
    G = SPADEGenerator(cfg)
    G(seg_for(cfg))  # move the spectral-norm buffers away from their initial values
    G.eval()
    path = tmp_path / "sub" / "generator.pt"
    save_generator(path, torch.compile(G), cfg, extra={"epoch": 3, "note": "ema"})
    assert [p.name for p in path.parent.iterdir()] == ["generator.pt"]  # no temp file left

    raw = torch.load(path, weights_only=True)
    assert raw["format"] == GENERATOR_FORMAT and raw["model_config"] == cfg.to_dict()
    assert not any(k.startswith("_orig_mod") for k in raw["state_dict"])

    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    G2, cfg2, extra = load_generator(path)
    assert torch.equal(torch.get_rng_state(), rng_before)  # loading does not consume the RNG
    assert cfg2 == cfg and extra == {"epoch": 3, "note": "ema"}
    assert not G2.training
    seg, z = seg_for(cfg), torch.randn(2, cfg.z_dim)
    with torch.no_grad():
        assert torch.equal(G(seg, z), G2(seg, z))

    save_generator(tmp_path / "again.pt", G2, cfg2, extra=extra)
    assert (tmp_path / "again.pt").read_bytes() == path.read_bytes()  # byte-reproducible


def test_load_generator_refuses_other_files(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}, "epoch": 1}, other)
    with pytest.raises(ValueError, match=r"other\.pt is not a cardiGAN generator file"):
        load_generator(other)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.pt is not a readable cardiGAN generator"):
        load_generator(text)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_generator(tmp_path / "missing.pt")

    torch.manual_seed(0)
    cfg = small_cfg()
    good = tmp_path / "good.pt"
    save_generator(good, SPADEGenerator(cfg), cfg)
    payload = torch.load(good, weights_only=True)
    payload["model_config"]["ngf"] = 8  # weights no longer fit the architecture
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(ValueError, match=r"bad\.pt is a corrupt cardiGAN generator file"):
        load_generator(bad)
