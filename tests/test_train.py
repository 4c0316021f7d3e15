"""Stage train: outputs, CPU determinism, exact resume, stale-state handling, schedules, EMA."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import write_split

import cardigan.gan.train as train_mod
from cardigan.core.config import config_hash
from cardigan.gan.checkpoint import STATE_NAME, CheckpointError, fingerprint_dir, load_state
from cardigan.gan.fingerprint import fingerprinted_settings
from cardigan.gan.generator_file import load_generator
from cardigan.gan.model_config import ModelConfig
from cardigan.gan.outputs import OUTPUTS
from cardigan.gan.state import ema_decay_at, ema_update, epoch_order, lr_factor
from cardigan.gan.train import train
from cardigan.gan.train_config import TrainConfig
from cardigan.gan.training_data import data_sha256, load_training_data

TINY = dict(epochs=2, batch_size=4, background_classes=0, ngf=4, ndf=4, spade_hidden=8, num_D=2,
            n_layers_D=2, z_dim=8, log_every=1, checkpoint_every=2, sample_every=1,
            use_vae=False, texture_noise=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 frames of 64x64 (6 patients x ED/ES): 3 iterations per epoch at batch 4."""
    return write_split(tmp_path_factory.mktemp("data"), patients=6, size=64)


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory):
    """One finished TINY run (2 epochs = 6 iterations) that tests copy instead of retraining."""
    root = tmp_path_factory.mktemp("baseline")
    return root, run(data, root)


def copy_of(baseline, dest: Path) -> Path:
    shutil.copytree(baseline[0], dest)
    return dest


def run(data, root: Path, image_size: int = 64, **overrides) -> train_mod.TrainResult:
    cfg = TrainConfig.from_dict({**TINY, **overrides})
    return train(images_h5=[data[0]], annos_h5=[data[1]], out_dir=root,
                 state_dir=root / "state", cfg=cfg, image_size=image_size, threads=1,
                 progress=False)


def output_bytes(root: Path) -> dict[str, bytes]:
    files = {name: (root / rel).read_bytes() for name, rel in OUTPUTS.items() if name != "samples"}
    for png in sorted((root / OUTPUTS["samples"]).glob("*.png")):
        files[f"samples/{png.name}"] = png.read_bytes()
    return files


def assert_same_weights(a: dict, b: dict) -> None:
    for part in ("G", "D", "E", "ema"):
        if a[part] is None:
            assert b[part] is None
            continue
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def state_of(result: train_mod.TrainResult) -> dict:
    return load_state(result.state_path)


# --------------------------------------------------------------------------------------------
def test_outputs_and_cpu_determinism(data, baseline, tmp_path, caplog):
    a_root, a = baseline
    with caplog.at_level(logging.INFO, logger="cardigan"):
        b = run(data, tmp_path / "b")
    assert a.step == a.total_steps == 6
    assert_same_weights(state_of(a), state_of(b))
    # every declared output byte-identical across two runs
    assert output_bytes(a_root) == output_bytes(tmp_path / "b")
    # without a terminal: one log line per logging interval, no progress bar
    lines = [r.message for r in caplog.records if " img/s" in r.message]
    assert len(lines) == 6 and lines[0].startswith("epoch 1/2 it 1/6 | g_gan ")

    rows = read_csv(a_root / "train_log.csv")
    assert list(rows[0]) == ["step", "epoch", "g_gan", "g_feat", "g_l1", "g_total", "d_real",
                             "d_fake", "d_total", "lr_G", "lr_D"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [int(r["epoch"]) for r in rows] == [1, 1, 1, 2, 2, 2]
    for r in rows:
        g_terms = float(r["g_gan"]) + float(r["g_feat"]) + float(r["g_l1"])
        assert float(r["g_total"]) == pytest.approx(g_terms, rel=1e-4, abs=1e-5)
        assert float(r["d_total"]) == pytest.approx(float(r["d_real"]) + float(r["d_fake"]),
                                                    rel=1e-4, abs=1e-5)
    thr = read_csv(a_root / "throughput.csv")
    assert [int(r["step"]) for r in thr] == [1, 2, 3, 4, 5, 6]
    assert all(float(r["images_per_s"]) > 0 for r in thr)
    assert sorted(p.name for p in (a_root / "samples").iterdir()) == ["epoch_0001.png",
                                                                    "epoch_0002.png"]
    assert (a_root / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    eff = json.loads((a_root / "config.json").read_text())
    assert eff["train"]["epochs"] == 2 and eff["resolved"]["device"] == "cpu"
    assert eff["resolved"]["total_steps"] == 6 and eff["data"]["frames"] == 12
    assert eff["model_config"] == ModelConfig.from_train_config(TINY, 64).to_dict()

    # generator.pt: the EMA generator, loadable with weights_only, rebuildable
    payload = torch.load(a_root / "generator.pt", weights_only=True)
    assert payload["extra"]["step"] == 6 and payload["extra"]["train"]["ngf"] == 4
    gen, _, _ = load_generator(a_root / "generator.pt")
    ema = state_of(a)["ema"]
    assert all(torch.equal(v, ema[k]) for k, v in gen.state_dict().items())
    seg = torch.zeros(1, 4, 64, 64)
    seg[:, 0] = 1
    assert gen(seg).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("discriminator", ["patchgan", "oasis"])
def test_exact_resume_after_kill(data, tmp_path, monkeypatch, discriminator):
    """Killed during iteration 5 (last checkpoint at 4), resumed: same weights, optimiser state,
    logs and grids bit for bit as an uninterrupted run. With the VAE so that the RNG state
    matters (and LabelMix's coins with the segmentation discriminator); log_every 3 so that the
    resumed run continues a half-accumulated interval."""
    opts = dict(use_vae=True, log_every=3, checkpoint_every=4, discriminator=discriminator)
    full = run(data, tmp_path / "full", **opts)

    real_step = train_mod.train_step
    calls = {"n": 0}

    def dying_step(**kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return real_step(**kwargs)

    monkeypatch.setattr(train_mod, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run(data, tmp_path / "killed", **opts)
    monkeypatch.setattr(train_mod, "train_step", real_step)
    partial = load_state(tmp_path / "killed" / "state" / full.state_path.parent.name / STATE_NAME)
    assert partial["step"] == 4 and partial["epoch"] == 1 and partial["batch_in_epoch"] == 1
    assert not (tmp_path / "killed" / "generator.pt").exists()

    resumed = run(data, tmp_path / "killed", **opts)
    assert resumed.step == 6
    sf, sr = state_of(full), state_of(resumed)
    assert_same_weights(sf, sr)
    for opt in ("opt_G", "opt_D"):
        for k, v in sf[opt]["state"].items():
            for name, t in v.items():
                assert torch.equal(t, sr[opt]["state"][k][name])
    assert output_bytes(tmp_path / "full") == output_bytes(tmp_path / "killed")


def test_epochs_increase_continues(data, baseline, tmp_path, caplog):
    root = copy_of(baseline, tmp_path / "run")
    first = read_csv(root / "train_log.csv")
    with caplog.at_level(logging.INFO, logger="cardigan"):
        res = run(data, root, epochs=4)
    assert "resuming" in caplog.text and "at iteration 6/12" in caplog.text
    assert res.step == 12
    rows = read_csv(root / "train_log.csv")
    assert rows[:6] == first  # the earlier rows are kept
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    # the lr follows the new total's schedule (constant for iterations 0-5, then decaying to 0
    # at 12), where the first run had decayed to 1/3 by its last iteration
    lr = [float(r["lr_G"]) for r in rows]
    base = TrainConfig.from_dict(TINY).lr_G
    assert lr[5] == pytest.approx(base * lr_factor(5, 6, 3), rel=1e-5)
    assert lr[6:] == pytest.approx([base * lr_factor(s, 12, 6) for s in range(6, 12)], rel=1e-5)
    assert sorted(p.name for p in (root / "samples").iterdir()) == [
        f"epoch_{e:04d}.png" for e in (1, 2, 3, 4)]
    assert json.loads((root / "config.json").read_text())["train"]["epochs"] == 4


def test_changed_setting_does_not_reuse_stale_state(data, baseline, tmp_path, caplog):
    root = copy_of(baseline, tmp_path / "run")
    a = baseline[1]
    old = state_of(a)
    with caplog.at_level(logging.INFO, logger="cardigan"):
        b = run(data, root, lr_G=3e-4)
    assert b.fingerprint != a.fingerprint
    assert "training from the start" in caplog.text and "resuming" not in caplog.text
    assert "also holds states of other settings" in caplog.text
    old_copy = root / "state" / a.state_path.parent.name / STATE_NAME
    assert_same_weights(old, load_state(old_copy))  # the old state is left alone
    assert any(not torch.equal(v, state_of(b)["G"][k]) for k, v in old["G"].items())
    # settings that do not change the weights keep using the state (here: already finished)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cardigan"):
        c = run(data, root, lr_G=3e-4, log_every=3, checkpoint_every=5, sample_every=2,
                device="cpu", amp=False, gpus=1)
    assert c.fingerprint == b.fingerprint and "resuming" in caplog.text and c.step == 6


def test_fingerprint_covers_model_settings_and_data(data, tmp_path):
    cfg = TrainConfig.from_dict(TINY)
    images, masks = load_training_data([data[0]], [data[1]], image_size=64,
                                                 label_nc=4)
    h = data_sha256(images, masks)
    base = fingerprinted_settings(cfg, 64, h)
    assert "epochs" not in base["train"] and "lambda_kld" not in base["train"]
    changed_pixel = images.copy()
    changed_pixel[0, 0, 0] ^= 1
    assert data_sha256(changed_pixel, masks) != h
    assert base["train"]["lambda_l1"] == 10.0
    off = TrainConfig.from_dict({**TINY, "lambda_l1": 0.0})
    # off: a state trained before lambda_l1 existed keeps its fingerprint
    assert "lambda_l1" not in fingerprinted_settings(off, 64, h)["train"]
    assert base["train"]["l1_balance"] is True
    # off (or without an L1 term to balance): the states trained before it existed
    unbalanced = TrainConfig.from_dict({**TINY, "l1_balance": False})
    assert "l1_balance" not in fingerprinted_settings(unbalanced, 64, h)["train"]
    assert fingerprinted_settings(off, 64, h) == fingerprinted_settings(
        TrainConfig.from_dict({**TINY, "lambda_l1": 0.0, "l1_balance": False}), 64, h)
    # the half that every state trained before the key existed used
    assert "lr_decay_start" not in base["train"]
    assert "r1_gamma" not in base["train"] and "r1_every" not in base["train"]  # R1 off
    assert "ema_warmup" not in base["train"]  # the warm-up before the key existed
    for change in ({"ngf": 8}, {"seed": 1}, {"batch_size": 2}, {"ema_decay": 0.99},
                   {"lambda_l1": 5.0}, {"lr_decay_start": 0.0}, {"r1_gamma": 1.0},
                   {"l1_balance": False}, {"ema_warmup": 4.0}):
        other = TrainConfig.from_dict({**TINY, **change})
        assert fingerprinted_settings(other, 64, h) != base, change
    for same in ({"epochs": 9}, {"log_every": 7}, {"device": "cpu"}, {"lambda_kld": 1.0},
                 {"r1_every": 4}):
        other = TrainConfig.from_dict({**TINY, **same})
        assert fingerprinted_settings(other, 64, h) == base, same
    # YAML's 1 and 1.0 are the same setting
    as_int = TrainConfig.from_dict({**TINY, "lr_G": 1})
    as_float = TrainConfig.from_dict({**TINY, "lr_G": 1.0})
    assert (fingerprinted_settings(as_int, 64, h)
            == fingerprinted_settings(as_float, 64, h))


def test_fewer_epochs_retrains_and_keeps_old_state(data, baseline, tmp_path, caplog):
    root = copy_of(baseline, tmp_path / "run")
    name = baseline[1].state_path.parent.name
    with caplog.at_level(logging.INFO, logger="cardigan"):
        short = run(data, root, epochs=1)
    assert short.step == 3 and "moved it to" in caplog.text
    assert load_state(root / "state" / f"{name}.superseded-it6" / STATE_NAME)["step"] == 6
    fresh = run(data, tmp_path / "fresh", epochs=1)
    assert_same_weights(state_of(short), state_of(fresh))
    assert output_bytes(root) == output_bytes(tmp_path / "fresh")


def test_lr_schedule_values():
    assert [lr_factor(s, 10, 5) for s in range(10)] == [1, 1, 1, 1, 1, 1.0, 0.8, 0.6, 0.4, 0.2]
    assert lr_factor(10, 10, 5) == 0.0
    assert lr_factor(0, 4, 0) == 1.0 and lr_factor(3, 4, 0) == 0.25


def test_lr_schedule_in_training(baseline):
    rows = read_csv(baseline[0] / "train_log.csv")  # 6 iterations, decay from iteration 3
    expect = [lr_factor(s, 6, 3) for s in range(6)]
    assert expect == [1, 1, 1, 1, pytest.approx(2 / 3), pytest.approx(1 / 3)]
    cfg = TrainConfig.from_dict(TINY)
    assert [float(r["lr_G"]) for r in rows] == pytest.approx([cfg.lr_G * f for f in expect],
                                                             rel=1e-5)
    assert [float(r["lr_D"]) for r in rows] == pytest.approx([cfg.lr_D * f for f in expect],
                                                             rel=1e-5)
    sched = state_of(baseline[1])["sched_G"]
    assert sched["last_epoch"] == 6 and sched["_last_lr"] == [0.0]


def test_ema_update():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    a.register_buffer("u", torch.zeros(2))
    b.register_buffer("u", torch.ones(2))
    w_a, w_b = a.weight.detach().clone(), b.weight.detach().clone()
    ema_update(a, b, 0.9)
    assert torch.allclose(a.weight, 0.9 * w_a + 0.1 * w_b)
    assert torch.equal(a.u, torch.ones(2))  # buffers copied
    assert ema_decay_at(0, 0.999, 10.0) == pytest.approx(0.1)
    assert ema_decay_at(10**6, 0.999, 10.0) == 0.999
    assert all(ema_decay_at(t, 0.99, 10.0) <= ema_decay_at(t + 1, 0.99, 10.0) for t in range(1000))
    # a smaller warm-up k keeps more of the earlier updates: decay (1 + t) / (k + t)
    assert ema_decay_at(0, 0.999, 4.0) == pytest.approx(0.25)
    assert ema_decay_at(100, 0.999, 4.0) > ema_decay_at(100, 0.999, 10.0)
    weights = ema_weights(300, 4.0)
    assert weights.sum() == pytest.approx(1.0)
    # the average's weight falls off like (s / T) ** (k - 1): the last third of a run of 300
    # updates carries 1 - (2/3) ** 3 of it at k = 4, 1 - (2/3) ** 9 at k = 10
    assert weights[200:].sum() == pytest.approx(1 - (2 / 3) ** 3, abs=0.01)
    assert ema_weights(300, 10.0)[200:].sum() == pytest.approx(1 - (2 / 3) ** 9, abs=0.01)


def ema_weights(total: int, warmup: float) -> np.ndarray:
    """The weight of each update's model in the EMA after ``total`` updates (ema_update on
    scalars: the initial weights' share is the remainder)."""
    weights = np.zeros(total)
    for t in range(total):
        decay = ema_decay_at(t, 0.999, warmup)
        weights *= decay
        weights[t] += 1 - decay
    return weights


def test_ema_is_used_for_the_generator_file(baseline):
    state = state_of(baseline[1])
    assert any(not torch.equal(v, state["G"][k]) for k, v in state["ema"].items()
               if v.is_floating_point())


def test_epoch_order_regenerates():
    assert np.array_equal(epoch_order(0, 3, 20), epoch_order(0, 3, 20))
    assert sorted(epoch_order(0, 3, 20)) == list(range(20))
    assert not np.array_equal(epoch_order(0, 3, 20), epoch_order(0, 4, 20))


def test_label_out_of_range_refused_before_training(tmp_path):
    img, ann = write_split(tmp_path / "data", patients=3, size=64, bad_label=5)
    with pytest.raises(ValueError, match=r"patient0003_4CH_gt_channel1.*value 5 >= "
                                         r"train.label_nc=4"):
        run((img, ann), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written, not even a state folder


def test_wrong_image_size_refused(data, tmp_path):
    with pytest.raises(ValueError, match="data.image_size is 128"):
        run(data, tmp_path / "out", image_size=128)


def test_architecture_mismatch_refused(data, baseline, tmp_path):
    a = baseline[1]
    # an explicit resume into a wider generator
    cfg = TrainConfig.from_dict({**TINY, "ngf": 8})
    with pytest.raises(CheckpointError, match=r"train.ngf: checkpoint 4, config 8"):
        train(images_h5=[data[0]], annos_h5=[data[1]], out_dir=tmp_path / "b",
              state_dir=tmp_path / "b" / "state", cfg=cfg, image_size=64, threads=1,
              resume=a.state_path, progress=False)
    # a state whose recorded model contradicts the fingerprint folder it lies in
    other = TrainConfig.from_dict({**TINY, "label_nc": 5})
    images, masks = load_training_data([data[0]], [data[1]], image_size=64,
                                                 label_nc=5)
    fp = config_hash(fingerprinted_settings(other, 64,
                                                      data_sha256(images, masks)))
    target = fingerprint_dir(tmp_path / "c" / "state", fp) / STATE_NAME
    target.parent.mkdir(parents=True)
    shutil.copy(a.state_path, target)
    with pytest.raises(CheckpointError, match=r"train.label_nc: checkpoint 4, config 5"):
        run(data, tmp_path / "c", label_nc=5)


def test_checkpoint_loads_weights_only(baseline):
    state = torch.load(baseline[1].state_path, weights_only=True)
    for key in ("G", "D", "ema", "opt_G", "opt_D", "sched_G", "sched_D", "rng", "log_rows"):
        assert key in state
    assert state["step"] == 6 and state["epoch"] == 2 and state["batch_in_epoch"] == 0
    assert isinstance(state["rng"][0]["torch"], torch.Tensor)


def test_corrupted_checkpoint_is_an_error_not_a_restart(data, baseline, tmp_path):
    root = copy_of(baseline, tmp_path / "run")
    path = root / "state" / baseline[1].state_path.parent.name / STATE_NAME
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"state.pt is corrupt.*delete it"):
        run(data, root, epochs=3)
    assert path.read_bytes() == blob[: len(blob) // 2]  # left for the user to decide


def test_batch_must_split_over_processes(data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setattr(train_mod.dist, "is_initialized", lambda: True)  # pretend torchrun
    with pytest.raises(ValueError, match="train.batch_size: 4 is not divisible by the 3"):
        run(data, tmp_path)


def test_train_config_from_dict():
    cfg = TrainConfig.from_dict({**TINY, "lr_G": 1})
    assert isinstance(cfg.lr_G, float) and cfg.model_config(64).ngf == 4
    with pytest.raises(ValueError, match="train.bogus"):
        TrainConfig.from_dict({"bogus": 1})
