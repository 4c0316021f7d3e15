"""The fused SPADE layout computes the same function as the straightforward one, the mask-only
cache gives the same images, and spectral norm computes in fp32 whatever autocast does.

``Reference*`` below is the unfused layout written out plainly (one hidden conv, one gamma and one
beta conv and one norm per SPADE layer; torch's own spectral norm), as the generator was up to
``cardigan-generator/1``. Built from the same seed it must give the same weights, converted, and
the same outputs and gradients.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

import cardigan.gan.spade as spade_mod
from cardigan.data.masks import bench_masks
from cardigan.gan.generator import SPADEGenerator
from cardigan.gan.generator_file import convert_legacy_state_dict, load_generator
from cardigan.gan.layers import INIT_GAIN, LRELU_SLOPE, SpectralNormFP32, one_hot, spectral_norm
from cardigan.gan.model import build_models
from cardigan.gan.model_config import ModelConfig

SMALL = dict(image_size=64, background_classes=0, ngf=4, ndf=4, spade_hidden=8, n_layers_D=2,
             z_dim=8, use_vae=False, texture_noise=False)


def _conv(cin, cout, k, bias=True, sn=False):
    layer = nn.Conv2d(cin, cout, k, 1, k // 2, bias=bias)
    nn.init.xavier_normal_(layer.weight, gain=INIT_GAIN)
    if bias:
        nn.init.zeros_(layer.bias)
    return torch_spectral_norm(layer) if sn else layer


class ReferenceSPADE(nn.Module):
    def __init__(self, channels, label_nc, hidden, norm):
        super().__init__()
        self.norm = (nn.InstanceNorm2d(channels) if norm == "instance"
                     else nn.BatchNorm2d(channels, affine=False))
        self.shared = nn.Sequential(_conv(label_nc, hidden, 3), nn.ReLU())
        self.gamma = _conv(hidden, channels, 3)
        self.beta = _conv(hidden, channels, 3)

    def forward(self, x, seg):
        actv = self.shared(F.interpolate(seg, size=x.shape[-2:], mode="nearest"))
        return self.norm(x) * (1 + self.gamma(actv)) + self.beta(actv)


class ReferenceBlock(nn.Module):
    def __init__(self, cin, cout, cfg):
        super().__init__()
        mid, args = min(cin, cout), (cfg.label_nc, cfg.spade_hidden, cfg.norm_G)
        self.norm_0 = ReferenceSPADE(cin, *args)
        self.conv_0 = _conv(cin, mid, 3, sn=True)
        self.norm_1 = ReferenceSPADE(mid, *args)
        self.conv_1 = _conv(mid, cout, 3, sn=True)
        self.learned_shortcut = cin != cout
        if self.learned_shortcut:
            self.norm_s = ReferenceSPADE(cin, *args)
            self.conv_s = _conv(cin, cout, 1, bias=False, sn=True)

    def forward(self, x, seg):
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), LRELU_SLOPE))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), LRELU_SLOPE))
        return x_s + dx


class ReferenceGenerator(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg, nf, s = cfg, cfg.ngf, cfg.start_size
        if cfg.use_vae:
            self.fc = nn.Linear(cfg.z_dim, 16 * nf * s * s)
            nn.init.xavier_normal_(self.fc.weight, gain=INIT_GAIN)
            nn.init.zeros_(self.fc.bias)
        else:
            self.fc = _conv(cfg.label_nc, 16 * nf, 3)
        widths = [16, 16, 16, 16, 8, 4, 2, 1]
        names = ["head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3"]
        for name, cin, cout in zip(names, widths[:-1], widths[1:]):
            setattr(self, name, ReferenceBlock(cin * nf, cout * nf, cfg))
        self.conv_img = _conv(nf, 1, 3)

    def forward(self, seg, z=None):
        s = self.cfg.start_size
        if self.cfg.use_vae:
            x = self.fc(z).view(-1, 16 * self.cfg.ngf, s, s)
        else:
            x = self.fc(F.interpolate(seg, size=(s, s), mode="nearest"))
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        x = up(self.head_0(x, seg))
        x = self.G_middle_1(self.G_middle_0(x, seg), seg)
        for name in ("up_0", "up_1", "up_2", "up_3"):
            x = getattr(self, name)(up(x), seg)
        return torch.tanh(self.conv_img(F.leaky_relu(x, LRELU_SLOPE)))


def _seg(batch, size=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 4, (batch, 1, 4, 4), generator=gen).float()
    return one_hot(F.interpolate(coarse, size=size, mode="nearest").long()[:, 0], 4)


def _pair(**kw):
    cfg = ModelConfig(**{**SMALL, **kw})
    torch.manual_seed(0)
    ref = ReferenceGenerator(cfg)
    torch.manual_seed(0)
    new = SPADEGenerator(cfg)
    return cfg, ref, new


@pytest.mark.parametrize("norm_G", ["instance", "batch"])
def test_same_initial_weights_as_the_unfused_layout(norm_G):
    _, ref, new = _pair(norm_G=norm_G, use_vae=True)
    converted = convert_legacy_state_dict(ref.state_dict())
    assert converted.keys() == new.state_dict().keys()
    for k, v in new.state_dict().items():
        assert torch.equal(v, converted[k]), k


@pytest.mark.parametrize("norm_G, use_vae", [("instance", True), ("batch", False)])
def test_same_function_and_gradients_as_the_unfused_layout(norm_G, use_vae):
    _, ref, new = _pair(norm_G=norm_G, use_vae=use_vae)
    # trained-looking weights: perturb the reference, then convert (old file -> new layout)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    new.load_state_dict(convert_legacy_state_dict(ref.state_dict()))
    seg = _seg(3)
    z = torch.randn(3, 8) if use_vae else None
    for mode in ("train", "eval"):
        ref.train(mode == "train")
        new.train(mode == "train")
        out_ref, out_new = ref(seg, z), new(seg, z)
        torch.testing.assert_close(out_new, out_ref, rtol=1e-4, atol=1e-5)
        out_ref.square().sum().backward()
        out_new.square().sum().backward()
        for name in ("fc.weight", "up_2.conv_s.parametrizations.weight.original",
                     "conv_img.weight", "head_0.conv_0.parametrizations.weight.original"):
            g_ref = ref.get_parameter(name).grad
            torch.testing.assert_close(new.get_parameter(name).grad, g_ref, rtol=1e-3,
                                       atol=1e-6 * float(g_ref.abs().max()))
        # the fused convs' gradients are the reference's, concatenated
        g_gb = new.up_1.norm_0.gamma_beta.weight.grad
        g_cat = torch.cat([ref.up_1.norm_0.gamma.weight.grad, ref.up_1.norm_0.beta.weight.grad])
        torch.testing.assert_close(g_gb, g_cat, rtol=1e-3, atol=1e-6 * float(g_cat.abs().max()))
        ref.zero_grad()
        new.zero_grad()
    for k, v in convert_legacy_state_dict(ref.state_dict()).items():  # same buffers after
        torch.testing.assert_close(new.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_old_generator_files_still_load(tmp_path):
    cfg, ref, new = _pair(use_vae=True)
    ref.eval()
    path = tmp_path / "old.pt"
    torch.save({"format": "cardigan-generator/1", "model_config": cfg.to_dict(),
                "state_dict": ref.state_dict(), "extra": {"step": 3}}, path)
    loaded, cfg_loaded, extra = load_generator(path)
    assert cfg_loaded == cfg and extra == {"step": 3}
    seg, z = _seg(2), torch.randn(2, 8)
    torch.testing.assert_close(loaded(seg, z), ref(seg, z), rtol=1e-4, atol=1e-5)


def test_cached_mask_features_give_the_same_images():
    torch.manual_seed(1)
    G = SPADEGenerator(ModelConfig(**{**SMALL, "use_vae": True})).eval()
    seg, z = _seg(2), torch.randn(2, 8)
    with torch.no_grad():
        plain = G(seg, z)
        cached = G.mask_features(seg)
        assert torch.equal(G(seg, z, cached=cached), plain)
        # k = 3 styles per mask: rows i*3 .. i*3+2 belong to mask i
        zk = torch.randn(6, 8)
        many = G(seg, zk, cached=cached)
        one_by_one = G(seg.repeat_interleave(3, dim=0), zk)
        torch.testing.assert_close(many, one_by_one, rtol=1e-5, atol=1e-6)
        assert torch.equal(G(seg, zk), many)  # without a cache: same broadcast
        assert not torch.equal(many[0], many[1])  # the styles differ
    with pytest.raises(ValueError, match="multiple of the 2 masks"):
        G(seg, torch.randn(3, 8))
    with pytest.raises(ValueError, match="pass generator.mask_features"):
        G(seg, z, cached=cached[:3])


def test_cached_features_train_like_uncached():
    """Gradients flow through a cache built inside the same graph (training with k styles)."""
    torch.manual_seed(2)
    G = SPADEGenerator(ModelConfig(**{**SMALL, "use_vae": True}))
    seg, z = _seg(2), torch.randn(4, 8)
    G(seg, z, cached=G.mask_features(seg)).sum().backward()
    assert G.up_3.shared.weight.grad is not None and G.up_3.shared.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ spectral norm
def _cuda_autocast_mv(monkeypatch):
    """Make torch.mv follow CUDA's autocast policy (inputs cast to bf16 inside an autocast
    region, mv being on its lower-precision list), which CPU autocast does not do."""
    real_mv = torch.mv

    def mv(a, b):
        if torch.is_autocast_enabled("cpu"):
            return real_mv(a.bfloat16(), b.bfloat16())
        return real_mv(a, b)

    monkeypatch.setattr(torch, "mv", mv)


def _sn_layer(seed=0):
    torch.manual_seed(seed)
    layer = nn.Conv2d(6, 5, 3)
    return spectral_norm(layer)


def test_spectral_norm_matches_torch_in_fp32():
    torch.manual_seed(0)
    ours = spectral_norm(nn.Conv2d(6, 5, 3))
    torch.manual_seed(0)
    theirs = torch_spectral_norm(nn.Conv2d(6, 5, 3))
    for _ in range(3):  # training forwards: one power iteration each
        assert torch.equal(ours.weight, theirs.weight)
    assert torch.equal(ours.parametrizations.weight[0]._u, theirs.parametrizations.weight[0]._u)
    assert ours.state_dict().keys() == theirs.state_dict().keys()


def test_spectral_norm_is_fp32_under_a_cuda_like_autocast(monkeypatch):
    expected = _sn_layer().weight  # one power iteration, no autocast
    layer = _sn_layer()
    _cuda_autocast_mv(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # nested regions too
            w = layer.weight
    sn = layer.parametrizations.weight[0]
    assert w.dtype == torch.float32 and sn._u.dtype == sn._v.dtype == torch.float32
    assert torch.equal(w, expected)
    # the patched mv does downcast inside autocast (the test would catch torch's own version)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.mv(torch.ones(2, 2), torch.ones(2)).dtype == torch.bfloat16


def test_spectral_norm_computes_in_fp32_from_bf16_vectors():
    layer = _sn_layer().eval()
    sn = layer.parametrizations.weight[0]
    u32, v32 = sn._u.bfloat16().float(), sn._v.bfloat16().float()
    sn._u, sn._v = sn._u.bfloat16(), sn._v.bfloat16()  # as a bf16 power iteration leaves them
    w = layer.weight
    mat = layer.parametrizations.weight.original.flatten(1)
    sigma = torch.vdot(u32, torch.mv(mat, v32))  # fp32 with the bf16-rounded vectors
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, layer.parametrizations.weight.original / sigma, rtol=0, atol=0)
    layer.train()
    w = layer.weight  # a training forward: power iteration from bf16 vectors, in fp32
    assert w.dtype == torch.float32 and torch.isfinite(w).all()


def test_models_use_the_fp32_spectral_norm():
    G, D, E = build_models(ModelConfig(**{**SMALL, "use_vae": True}))
    kinds = {type(p) for m in (G, D, E) for mod in m.modules()
             if hasattr(mod, "parametrizations") for p in mod.parametrizations.weight}
    assert kinds == {SpectralNormFP32}


# --------------------------------------------------------------------------------------------
# SPADE inside one-label regions (the CPU path): the same function as the dense convs
# --------------------------------------------------------------------------------------------
def test_mask_sites_are_the_pixels_whose_window_is_not_one_label(monkeypatch):
    monkeypatch.setattr(spade_mod, "SPARSE_MAX_SHARE", 1.0)  # a small mask is mostly edges
    mask = torch.zeros(1, 20, 24, dtype=torch.long)
    mask[0, 6:14, 5:15] = 1
    mask[0, 9:11, 9:11] = 3
    sites = spade_mod.mask_sites(one_hot(mask, 4))
    assert sites is not None and sites.shape == (1, 20, 24)
    got = {(int(p) // 24, int(p) % 24) for p in sites.pixel}
    padded = F.pad(mask[0], (2, 2, 2, 2), value=-1)  # outside the image counts as an edge
    want = {(y, x) for y in range(20) for x in range(24)
            if padded[y:y + 5, x:x + 5].unique().numel() > 1}
    assert got == want
    assert sites.image.eq(0).all()
    # each site's taps are its 3x3 window in the 1-padded map, row by row
    y, x = divmod(int(sites.pixel[0]), 24)
    assert sites.taps[:9].tolist() == [(y + dy) * 26 + x + dx for dy in range(3) for dx in range(3)]


def test_mask_sites_leave_small_and_mostly_edge_masks_to_the_dense_convs(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    assert spade_mod.mask_sites(one_hot(torch.zeros(2, 8, 8, dtype=torch.long), 4)) is None
    speckled = torch.randint(0, 4, (2, 32, 32), generator=gen)  # every pixel near an edge
    assert spade_mod.mask_sites(one_hot(speckled, 4)) is None
    heart = one_hot(torch.from_numpy(bench_masks("heart", 2, 128)).long(), 4)
    assert spade_mod.mask_sites(heart) is not None
    monkeypatch.setattr(spade_mod, "SPARSE_SPADE", False)
    assert spade_mod.mask_sites(heart) is None


@pytest.mark.parametrize("kw", [dict(use_vae=True, texture_noise=True),
                                dict(use_vae=False, norm_G="batch")])
def test_sparse_spade_is_the_dense_function(kw, monkeypatch):
    """Outputs and every gradient agree to double-precision rounding, including a mask with a
    soft (not one-hot) patch, whose pixels must take the convolution. Every side from 16 px
    takes the sparse path here (at the default share only the largest would)."""
    monkeypatch.setattr(spade_mod, "SPARSE_MAX_SHARE", 1.0)
    cfg = ModelConfig(**{**SMALL, **kw})
    torch.manual_seed(0)
    gen = SPADEGenerator(cfg).double().eval()
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    seg = one_hot(torch.from_numpy(bench_masks("heart", 3, 64)).long(), 4).double()
    seg[1, :, 30:36, 20:26] = 0.25
    z = torch.randn(3, 8, dtype=torch.double) if cfg.use_vae else None
    noise = torch.randn(3, 1, 64, 64, dtype=torch.double) if cfg.texture_noise else None
    assert spade_mod.mask_sites(seg) is not None

    def run():
        out = gen(seg, z, noise)
        out.square().sum().backward()
        grads = {n: p.grad.clone() for n, p in gen.named_parameters() if p.grad is not None}
        gen.zero_grad()
        return out.detach(), grads

    sparse_out, sparse_grads = run()
    monkeypatch.setattr(spade_mod, "SPARSE_SPADE", False)
    dense_out, dense_grads = run()
    torch.testing.assert_close(sparse_out, dense_out, rtol=1e-9, atol=1e-12)
    assert sparse_grads.keys() == dense_grads.keys()
    # (biases before an instance norm get gradients of pure rounding: an absolute floor)
    floor = 1e-9 * max(float(g.abs().max()) for g in dense_grads.values())
    for name, g in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], g, rtol=1e-7, atol=floor, msg=name)


def test_bench_masks():
    heart, blocky = bench_masks("heart", 2, 64), bench_masks("blocky", 2, 64)
    assert heart.shape == blocky.shape == (2, 64, 64) and heart.dtype == blocky.dtype == np.uint8
    assert set(np.unique(heart)) == {0, 1, 2, 3}
    assert (blocky[:, ::8, ::8].repeat(8, 1).repeat(8, 2) == blocky).all()
    with pytest.raises(ValueError, match="unknown mask kind 'dots'"):
        bench_masks("dots", 1, 8)
