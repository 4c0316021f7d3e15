"""Pieces of the training loop: batches, per-process RNG states, the live loss table and
TensorBoard logs, the checkpoint keys of the training state."""

from __future__ import annotations

import csv
import importlib.util
import logging

import numpy as np
import pytest
import torch
from train_fixtures import write_split

import cardigan.gan.checkpoint as ckpt
from cardigan.gan.checkpoint import REQUIRED_KEYS, STATE_FORMAT, CheckpointError, load_state
from cardigan.gan.state import Batches, Plan, TrainingState, epoch_order
from cardigan.gan.train import loss_columns, train
from cardigan.gan.train_config import TrainConfig
from cardigan.gan.train_log import LossLogger

TINY = dict(epochs=2, batch_size=4, ngf=4, ndf=4, spade_hidden=8, num_D=2, n_layers_D=2,
            z_dim=8, log_every=2, checkpoint_every=2, sample_every=1,
            use_vae=False, texture_noise=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_split(tmp_path_factory.mktemp("data"), patients=6, size=64)


def _run(data, root, **kw):
    return train(images_h5=[data[0]], annos_h5=[data[1]], out_dir=root, state_dir=root / "state",
                 cfg=TrainConfig.from_dict({**TINY, **kw}), image_size=64, threads=1,
                 progress=False)


def test_plan_arithmetic_and_errors():
    p = Plan(frames=13, batch_size=4, epochs=3, rank=1, world=2)
    assert (p.steps_per_epoch, p.total_steps, p.decay_start, p.local_batch) == (3, 9, 3, 2)
    assert [p.epoch_done(s) for s in (1, 3, 4, 6)] == [None, 1, None, 2]
    with pytest.raises(ValueError, match="train.batch_size: 4 is not divisible by the 3"):
        Plan(frames=13, batch_size=4, epochs=1, world=3)
    with pytest.raises(ValueError, match="larger than the 3 training frames"):
        Plan(frames=3, batch_size=4, epochs=1)


def test_the_lr_decays_from_its_share_of_whole_epochs():
    def plan(share, epochs=22):
        return Plan(frames=80, batch_size=2, epochs=epochs, decay_share=share)
    assert plan(0.5).decay_start == 11 * 40
    assert plan(0.5, epochs=19).decay_start == 9 * 40  # rounded down to a whole epoch
    assert plan(0.29, epochs=100).decay_start == 29 * 40  # 0.29 * 100 is 28.99... in floats
    assert plan(0.0).decay_start == 0
    assert plan(1.0).decay_start == plan(1.0).total_steps
    whole = plan(0.0, epochs=1)
    assert [whole.lr(s) for s in (0, 20, 39)] == [1.0, 0.5, 1 / 40]
    assert plan(0.5, epochs=2).lr(39) == 1.0 and plan(0.5, epochs=2).lr(40) == 1.0
    assert plan(0.5, epochs=2).lr(60) == 0.5


def test_batches_follow_the_epoch_order_and_copy_it_once_per_epoch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (10, 8, 8), dtype=np.uint8)
    masks = rng.integers(0, 4, (10, 8, 8), dtype=np.uint8)
    plan = Plan(frames=10, batch_size=4, epochs=2, rank=1, world=2)
    b = Batches(images, masks, plan, seed=3, label_nc=4, device=torch.device("cpu"),
                memory_format=torch.contiguous_format)
    orders = []
    for step in range(plan.total_steps):
        seg, real = b(step)
        orders.append(id(b._order))
        epoch, batch = divmod(step, plan.steps_per_epoch)
        idx = epoch_order(3, epoch, 10)[batch * 4 + 2:batch * 4 + 4]  # rank 1's half
        assert torch.equal(real[:, 0], torch.from_numpy(images[idx]).float() / 127.5 - 1)
        assert torch.equal(seg.argmax(1), torch.from_numpy(masks[idx]).long())
    assert orders[0] == orders[1] != orders[2] == orders[3]  # a new order tensor per epoch only


def test_rng_state_holds_only_this_process_device(monkeypatch):
    """With several GPUs visible, a process saves and restores the state of its own device only
    (it used to save every visible GPU's, which a machine with fewer GPUs could not restore)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state",
                        lambda device: calls.append(("get", str(device))) or torch.ones(2))
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: calls.append(("set", str(device))))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("all GPUs saved"))
    state = ckpt.capture_rng(torch.device("cuda", 3))
    assert torch.equal(state["cuda"], torch.ones(2))
    ckpt.restore_rng(state, torch.device("cuda", 0))  # resumed by a process on another device
    assert calls == [("get", "cuda:3"), ("set", "cuda:0")]
    calls.clear()
    ckpt.restore_rng(ckpt.capture_rng(torch.device("cpu")), torch.device("cuda", 0))
    assert calls == []  # a CPU run's state has no CUDA stream to restore


def test_state_dict_owns_the_checkpoint_keys(data, tmp_path):
    res = _run(data, tmp_path / "a", epochs=1)
    saved = load_state(res.state_path)
    cfg = TrainConfig.from_dict({**TINY, "epochs": 1})
    plan = Plan(frames=12, batch_size=4, epochs=1)
    losses = LossLogger(loss_columns(cfg), log_every=2, device=torch.device("cpu"), world=1,
                        is_main=True, epochs=1, batch_size=4)
    state = TrainingState(cfg, cfg.model_config(64), plan, torch.device("cpu"),
                          torch.contiguous_format, losses)
    state.load_state_dict(saved)
    mine = state.state_dict()
    run_keys = {"fingerprint", "model_config", "settings", "epoch", "batch_in_epoch",
                "steps_per_epoch", "world_size", "rng"}
    assert set(mine) | run_keys == set(REQUIRED_KEYS)
    assert state.step == 3 and mine["log_rows"] == saved["log_rows"]
    for k, v in saved["G"].items():
        assert torch.equal(mine["G"][k], v)


def test_old_state_format_is_refused_clearly(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"format": "cardigan-train-state/1"}, path)
    with pytest.raises(CheckpointError, match="older cardiGAN.*cannot be resumed"):
        load_state(path)
    assert STATE_FORMAT.endswith("/2")


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_live_loss_table_in_the_state_folder(data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cardigan"):
        res = _run(data, tmp_path / "a")
    live = res.state_path.parent / "train_log.csv"
    assert _rows(live) == _rows(tmp_path / "a" / "train_log.csv")
    assert [r["step"] for r in _rows(live)] == ["2", "4", "6"]
    # grids of every epoch are in the state folder while training runs
    assert sorted(p.name for p in (res.state_path.parent / "samples").iterdir()) == [
        "epoch_0001.png", "epoch_0002.png"]
    if importlib.util.find_spec("tensorboard") is None:
        assert "no TensorBoard logs" in caplog.text
        assert not (tmp_path / "a" / "tensorboard").exists()


def test_live_table_after_a_kill_holds_the_checkpoint_rows(data, tmp_path, monkeypatch):
    import cardigan.gan.train as train_mod

    real_step, calls = train_mod.train_step, {"n": 0}

    def dying_step(**kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real_step(**kw)

    monkeypatch.setattr(train_mod, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        _run(data, tmp_path / "a", log_every=1)
    live = next((tmp_path / "a" / "state").glob("*/train_log.csv"))
    assert [r["step"] for r in _rows(live)] == ["1", "2", "3"]  # logged as training went
    monkeypatch.setattr(train_mod, "train_step", real_step)
    _run(data, tmp_path / "a", log_every=1)  # resumes from the checkpoint at 2
    assert [r["step"] for r in _rows(live)] == ["1", "2", "3", "4", "5", "6"]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="the optional tensorboard package is not installed")
def test_tensorboard_scalars_and_grids(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _run(data, tmp_path / "a")
    tb = tmp_path / "a" / "tensorboard"
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = acc.Tags()
    assert "loss/generator/g_total" in tags["scalars"] and "speed/images_per_s" in tags["scalars"]
    assert [e.step for e in acc.Scalars("loss/discriminator/d_total")] == [2, 4, 6]
    assert [e.step for e in acc.Images("samples")] == [3, 6]


def test_r1_every_few_iterations_in_the_loss_table(data, tmp_path):
    """train.r1_gamma: the penalty at iterations 0, r1_every, ...; the table holds its mean over
    the logged iterations (zero where none of them had it)."""
    res = _run(data, tmp_path / "r1", r1_gamma=1.0, r1_every=4)
    rows = _rows(tmp_path / "r1" / "train_log.csv")
    assert [r["step"] for r in rows] == ["2", "4", "6"] and res.step == 6
    r1 = [float(r["d_r1"]) for r in rows]  # iterations 0-1, 2-3, 4-5
    assert r1[0] > 0 and r1[1] == 0 and r1[2] > 0
    assert "d_r1" in loss_columns(TrainConfig.from_dict({**TINY, "r1_gamma": 1.0}))
    assert "d_r1" not in loss_columns(TrainConfig.from_dict(TINY))


def test_the_ema_warm_up_changes_the_average_not_the_training(data, tmp_path):
    """train.ema_warmup: the trained generator is the same, the EMA it keeps for sampling is
    the average its warm-up asks for (a run on another warm-up is another training state)."""
    runs = {k: _run(data, tmp_path / f"k{k}", ema_warmup=k) for k in (10, 3)}
    g10, g3 = runs[10].generator.state_dict(), runs[3].generator.state_dict()
    assert all(torch.equal(g10[k], g3[k]) for k in g10)
    e10, e3 = runs[10].ema.state_dict(), runs[3].ema.state_dict()
    floats = [k for k in e10 if e10[k].is_floating_point() and "weight" in k]
    assert any(not torch.equal(e10[k], e3[k]) for k in floats)
    assert runs[10].fingerprint != runs[3].fingerprint
    # a wider average lies further from the last weights
    def distance(ema, g):
        return sum(float((ema[k] - g[k]).norm()) for k in floats)
    assert distance(e3, g3) > distance(e10, g10)
