"""CUDA-only checks (skipped without a GPU; ``bench/gpu_check.sh`` runs them on one)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from torch import nn
from train_fixtures import write_split

from cardigan.core.config import validate
from cardigan.gan.checkpoint import capture_rng, restore_rng
from cardigan.gan.generator import SPADEGenerator
from cardigan.gan.layers import one_hot, spectral_norm
from cardigan.gan.model_config import ModelConfig
from cardigan.gan.state import Batches, Plan, TrainingState
from cardigan.gan.train import _autocast, loss_columns, train, train_step
from cardigan.gan.train_config import TrainConfig
from cardigan.gan.train_log import LossLogger

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
TINY = dict(epochs=2, batch_size=4, ngf=4, ndf=4, spade_hidden=8, num_D=2, n_layers_D=2,
            z_dim=8, log_every=1, checkpoint_every=2, sample_every=1, device="cuda",
            use_vae=False, texture_noise=False)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig.from_dict({**validate({})["train"], **TINY, **kw})


def test_spectral_norm_fp32_under_cuda_autocast():
    torch.manual_seed(0)
    layer = spectral_norm(nn.Conv2d(6, 5, 3)).cuda()
    torch.manual_seed(0)
    expected = spectral_norm(nn.Conv2d(6, 5, 3)).cuda().weight
    with torch.autocast("cuda", dtype=torch.bfloat16):
        w = layer.weight
        assert torch.mv(torch.ones(2, 2, device="cuda"), torch.ones(2, device="cuda")).dtype \
            == torch.bfloat16  # the policy this guards against
    sn = layer.parametrizations.weight[0]
    assert w.dtype == sn._u.dtype == sn._v.dtype == torch.float32
    torch.testing.assert_close(w, expected)


def test_train_iteration_bf16_channels_last_without_host_sync():
    cfg = _cfg(use_vae=True)
    device = torch.device("cuda")
    images, masks = (np.random.default_rng(0).integers(0, 4, (8, 64, 64), dtype=np.uint8)
                     for _ in range(2))
    plan = Plan(frames=8, batch_size=4, epochs=4)
    mem = torch.channels_last
    losses = LossLogger(loss_columns(cfg), log_every=10**6, device=device, world=1,
                        is_main=True, epochs=4, batch_size=4)
    state = TrainingState(cfg, cfg.model_config(64), plan, device, mem, losses)
    G, D, E, D_frozen = state.modules_to_run(world=1, device=device, compile_=False)
    batches = Batches(images, masks, plan, seed=0, label_nc=4, device=device, memory_format=mem)
    autocast = functools.partial(_autocast, "cuda", True)

    def iteration():
        seg, real = batches(state.step)
        terms = train_step(G=G, D=D, D_frozen=D_frozen, E=E, vgg=None, opt_G=state.opt_G,
                           opt_D=state.opt_D, seg=seg, real=real, cfg=cfg, autocast=autocast)
        state.advance(terms)

    iteration()  # first iteration: lazy CUDA init, cuDNN algorithm choice, epoch order copy
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        iteration()  # same epoch: must not wait for the device anywhere
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(losses.acc).all()


def test_rng_state_is_this_device_only():
    state = capture_rng(torch.device("cuda", 0))
    assert isinstance(state["cuda"], torch.Tensor)
    a = torch.randn(3, device="cuda")
    restore_rng(state, torch.device("cuda", 0))
    assert torch.equal(torch.randn(3, device="cuda"), a)


def test_cached_styles_under_bf16_autocast():
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=64, ngf=4, ndf=4, spade_hidden=8, n_layers_D=2, z_dim=8,
                      use_vae=True)
    G = SPADEGenerator(cfg).cuda().eval().to(memory_format=torch.channels_last)
    seg = one_hot(torch.randint(0, 4, (2, 64, 64), device="cuda"), 4).contiguous(
        memory_format=torch.channels_last)
    z = torch.randn(6, 8, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        many = G(seg, z, cached=G.mask_features(seg))
        single = G(seg.repeat_interleave(3, 0), z)
    torch.testing.assert_close(many.float(), single.float(), rtol=2e-2, atol=2e-2)


def test_tiny_training_run_on_cuda(tmp_path):
    data = write_split(tmp_path / "data", patients=4, size=64)
    res = train(images_h5=[data[0]], annos_h5=[data[1]], out_dir=tmp_path / "out",
                state_dir=tmp_path / "out" / "state", cfg=_cfg(use_vae=True), image_size=64,
                progress=False)
    assert res.step == 4
    resolved = json.loads((tmp_path / "out" / "config.json").read_text())["resolved"]
    assert resolved["device"] == "cuda" and resolved["amp_bf16"] and resolved["channels_last"]
