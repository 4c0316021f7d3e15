"""train.background_classes: pseudo-labels of the unlabelled anatomy from the training images,
the bank in the generator file, and the condition maps sampling builds (own, borrowed, deformed)."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
import torch
from test_sample import cfg as sample_cfg
from test_sample import make_annos
from test_train import run
from train_fixtures import write_split

import cardigan.gan.background as background_mod
from cardigan.core.config import ConfigError
from cardigan.core.defaults import default
from cardigan.data.masks import SourceMask
from cardigan.data.plausibility import AreaRanges
from cardigan.gan.background import BackgroundBank, condition_map, condition_maps, fan
from cardigan.gan.fingerprint import fingerprinted_settings
from cardigan.gan.generator_file import load_generator, save_generator
from cardigan.gan.model import build_models
from cardigan.gan.model_config import ModelConfig
from cardigan.gan.train_config import TrainConfig
from cardigan.synth.deform import AugmentConfig, DeformStats
from cardigan.synth.sample import run_sample, sample_items

SIZE = 96


def fan_frame(rng, *, chamber_level=20, tissue_level=140):
    """A fan (a triangle, black outside), bright-ish tissue inside, a labelled LV (1, 2) and LA
    (3), and an unlabelled dark chamber beside them — the right heart."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    inside = (yy > 4) & (np.abs(xx - SIZE / 2) < 0.55 * (yy - 4)) & (yy < SIZE - 4)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    lv = np.hypot((yy - 40) / 1.6, xx - 56) < 10
    mask[np.hypot((yy - 40) / 1.6, xx - 56) < 13] = 2
    mask[lv] = 1
    mask[np.hypot(yy - 68, xx - 56) < 8] = 3
    chamber = np.hypot(yy - 58, xx - 36) < 9
    level = np.where(inside, tissue_level, 0).astype(np.float64)
    level[chamber] = chamber_level
    level[mask == 1] = level[mask == 3] = 20
    level[mask == 2] = 220
    noisy = level + rng.normal(0, 10, level.shape) * inside
    image = np.where(inside, np.clip(noisy, 1, 255), 0).astype(np.uint8)
    return image, mask, inside, chamber


def test_background_split_by_brightness_inside_the_fan():
    image, mask, inside, chamber = fan_frame(np.random.default_rng(0))
    out = condition_map(image, mask, 2, label_nc=4)
    assert np.array_equal(out[mask > 0], mask[mask > 0])  # the labels stay
    assert (out[~inside & (mask == 0)] == 0).all()  # outside the fan: nothing to draw
    core = chamber & (mask == 0)
    assert np.mean(out[core] == 4) > 0.9  # the dark chamber: the darkest class
    tissue = inside & (mask == 0) & ~chamber
    assert np.mean(out[tissue] == 5) > 0.9  # tissue, up to the fan's edge
    assert set(np.unique(out)) <= {0, 1, 2, 3, 4, 5}
    assert np.array_equal(condition_map(image, mask, 0, 4), mask)


def test_a_black_chamber_stays_inside_the_fan():
    """Zeros inside the fan (a near-black chamber of a good exam) are not "outside"."""
    image, mask, inside, chamber = fan_frame(np.random.default_rng(1), chamber_level=0)
    image[chamber] = 0
    assert fan(image)[chamber].all()
    out = condition_map(image, mask, 2, label_nc=4)
    assert np.mean(out[chamber & (mask == 0)] == 4) > 0.9


def test_three_classes_and_a_flat_image():
    image, mask, inside, _ = fan_frame(np.random.default_rng(2))
    out = condition_map(image, mask, 3, label_nc=4)
    assert set(np.unique(out[inside & (mask == 0)])) <= {4, 5, 6}
    flat = np.where(inside, 100, 0).astype(np.uint8)
    out = condition_map(flat, mask, 2, label_nc=4)  # one grey level: one class, no error
    assert set(np.unique(out[inside & (mask == 0)])) == {4}


def bank_of(n=5, seed=0):
    rng = np.random.default_rng(seed)
    frames = [fan_frame(rng) for _ in range(n)]
    images = np.stack([f[0] for f in frames])
    masks = np.stack([f[1] for f in frames])
    # different anatomies: shift each frame's labels sideways
    for i in range(n):
        masks[i] = np.roll(masks[i], 3 * i, axis=1)
    maps = condition_maps(images, masks, 2, 4)
    ids = [f"patient{i + 1:04d}_4CH_ED" for i in range(n)]
    return BackgroundBank.build(maps, ids, 4), masks, maps, ids


def test_bank_gives_a_training_frame_its_own_map():
    bank, masks, maps, ids = bank_of()
    cond, donor = bank.for_mask(masks[2], ids[2])
    assert donor == ids[2] and np.array_equal(cond, maps[2])


def test_bank_lends_the_best_overlapping_frame_background():
    bank, masks, maps, ids = bank_of()
    user = np.roll(masks[3], 1, axis=1)  # closest to frame 3, not a training frame
    cond, donor = bank.for_mask(user, None)
    assert donor == ids[3]
    assert np.array_equal(cond[user > 0], user[user > 0])  # the user's labels stay
    bg = cond[user == 0]
    assert not np.isin(bg, [1, 2, 3]).any()  # the donor's structures became background classes
    assert np.isin(bg, [0, 4, 5]).all()
    # an id that names a training frame whose labels differ is not trusted
    _, donor = bank.for_mask(user, ids[0])
    assert donor == ids[3]


def test_bank_round_trip_and_coarse_storage(monkeypatch, tmp_path):
    bank, masks, maps, ids = bank_of()
    path = tmp_path / "extra.pt"
    torch.save(bank.to_extra(), path)
    back = BackgroundBank.from_extra(torch.load(path, weights_only=True), 4)
    assert back.ids == bank.ids and back.factor == 1 and np.array_equal(back.maps, bank.maps)
    monkeypatch.setattr(background_mod, "BANK_BYTES", maps[0].size)  # room for ~one frame
    coarse = BackgroundBank.build(maps, ids, 4)
    assert coarse.factor > 1 and coarse.maps.shape[1] == SIZE // coarse.factor
    cond, donor = coarse.for_mask(masks[1], ids[1])
    assert donor == ids[1] and cond.shape == masks[1].shape
    assert np.array_equal(cond[masks[1] > 0], masks[1][masks[1] > 0])
    with pytest.raises(ValueError, match="g.pt: .*no background bank"):
        BackgroundBank.from_extra({}, 4, "g.pt")


def test_deformations_move_the_map_with_the_mask():
    bank, masks, maps, ids = bank_of()
    src = SourceMask("train", "patient0002", "4CH", "ED", masks[1], (0.3, 0.3), "anno")
    aug = AugmentConfig(n=3, rotation_deg=10.0, scale=(0.9, 1.1), translation=0.05,
                        elastic_alpha=2.0, elastic_sigma=8.0, max_tries=20)
    items = list(sample_items([src], aug, AreaRanges({}), 0, 1, DeformStats(), bank))
    assert len(items) == 4 and np.array_equal(items[0].cond, maps[1])
    for it in items[1:]:
        labelled = it.cond < 4
        assert np.array_equal(np.where(labelled, it.cond, 0), it.mask)  # same warp, same pixels
        assert (it.cond[it.mask == 0] != 1).all() and (it.cond >= 4).any()
        assert not np.array_equal(it.mask, items[0].mask)


def test_model_config_and_fingerprint():
    cfg = ModelConfig(image_size=64, background_classes=2)
    assert cfg.cond_nc == 6 and cfg.seg_nc == 6 + cfg.noise_dim
    with pytest.raises(ConfigError, match="background_classes"):
        ModelConfig(image_size=64, background_classes=9)
    off = fingerprinted_settings(TrainConfig.from_dict({"background_classes": 0}), 128, "0" * 64)
    on = fingerprinted_settings(TrainConfig.from_dict({"background_classes": 2}), 128, "0" * 64)
    assert "background_classes" not in off["model"]  # states trained before the key resume
    assert on["model"]["background_classes"] == 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bg")
    data = write_split(root / "data", patients=6, size=64)
    run(data, root / "run", background_classes=2)
    return data, root / "run" / "generator.pt"


def test_training_stores_the_bank_and_sampling_uses_it(trained, tmp_path, caplog):
    data, generator = trained
    G, cfg, extra = load_generator(generator)
    assert cfg.background_classes == 2 and G.cfg.cond_nc == 6
    bank = BackgroundBank.from_extra(extra, cfg.label_nc)
    with h5py.File(data[1]) as f:
        assert len(bank.ids) == len(f.keys()) == 12
    out = tmp_path / "samples.h5"
    user = tmp_path / "user"
    user.mkdir()
    masks = make_annos(tmp_path / "user.h5", n_patients=1, size=64)
    with h5py.File(masks) as f:
        arr = f[sorted(f.keys())[0]][()]
    import SimpleITK as sitk
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(user / "mine.png"))
    with caplog.at_level(logging.INFO, logger="cardigan"):
        summary = run_sample(generator, [data[1]], [data[1]],
                             sample_cfg(mask_path=str(user)), out)
    assert summary["images"] > 12
    with h5py.File(out) as f:
        assert int(f["masks"][()].max()) <= 3  # the exported masks keep the CAMUS labels
        assert f["images"].shape[0] == summary["images"]
    borrowed = [r.message for r in caplog.records if "borrowed" in r.message]
    assert len(borrowed) == 1 and "mine" in borrowed[0]  # the train masks use their own


def test_training_without_classes_has_no_bank(tmp_path):
    data = write_split(tmp_path / "data", patients=2, size=64)
    run(data, tmp_path / "run", epochs=1)  # test_train's TINY: background_classes 0
    _, cfg, extra = load_generator(tmp_path / "run" / "generator.pt")
    assert cfg.cond_nc == cfg.label_nc and background_mod.BACKGROUND_KEY not in extra


def test_a_generator_file_from_before_the_classes_loads_with_none(tmp_path):
    """Files written before ``background_classes`` existed store no such key; they were made
    with four-label conditioning, whatever today's default is."""
    assert default("train", "background_classes") != 0  # else this test proves nothing
    cfg = ModelConfig(image_size=64, background_classes=0, ngf=4, ndf=4, spade_hidden=8,
                      n_layers_D=2, use_vae=False, texture_noise=False)
    path = tmp_path / "old.pt"
    save_generator(path, build_models(cfg)[0], cfg, {})
    payload = torch.load(path, weights_only=True)
    del payload["model_config"]["background_classes"]
    torch.save(payload, path)
    G, loaded, _ = load_generator(path)
    assert loaded == cfg and G.cfg.cond_nc == cfg.label_nc
    assert ModelConfig.from_dict({**cfg.to_dict(), "background_classes": 2}).background_classes == 2
