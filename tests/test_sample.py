"""The sample stage: mask sources, batched deterministic sampling into samples.h5, bad input."""

import hashlib
import json
import logging

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from train_fixtures import field_images

from cardigan.data.masks import MaskError, load_user_masks, toy_heart_mask
from cardigan.gan.appearance import FIELD_LEVEL, Appearance
from cardigan.gan.generator_file import save_generator
from cardigan.gan.model import build_models
from cardigan.gan.model_config import ModelConfig
from cardigan.gan.styles import BANK_KEY, StyleBank
from cardigan.synth.sample import run_sample

SIZE = 64


def make_generator(path, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(**{"image_size": SIZE, "background_classes": 0, "ngf": 4, "ndf": 4,
                         "spade_hidden": 8, "n_layers_D": 2, "z_dim": 8, "use_vae": False,
                         "texture_noise": False, **kw})
    save_generator(path, build_models(cfg)[0], cfg, {"iterations": 3})
    return path


def make_annos(path, n_patients=4, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        for p in range(n_patients):
            for c in (0, 1):
                ds = f.create_dataset(f"patient{p + 1:04d}_4CH_gt_channel{c}",
                                      data=toy_heart_mask(size, rng))
                ds.attrs["spacing"] = [0.5, 0.7]
    return path


def cfg(**kw):
    base = {"samples_per_mask": 1, "batch_size": 3, "seed": 0, "device": "cpu", "mask_path": None,
            "own_styles": 0, "style_source": "real", "grey_levels": "none", "speckle": "none",
            "augment": {"n": 2, "rotation_deg": 8.0, "scale": [0.92, 1.08], "translation": 0.04,
                        "elastic_alpha": 3.0, "elastic_sigma": 8.0, "max_tries": 20}}
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("sample")
    return make_generator(d / "g.pt"), make_annos(d / "anno_train_4CH.h5")


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_samples_file(setup, tmp_path):
    gen, annos = setup
    out = tmp_path / "samples.h5"
    summary = run_sample(gen, [annos], [annos], cfg(), out)
    with h5py.File(out) as f, h5py.File(annos) as a:
        n = f["images"].shape[0]
        assert summary["images"] == n == 8 * 3 - summary["exhausted"] - 2 * summary["source_implausible"]
        assert f["images"].dtype == np.uint8 and f["images"].shape[1:] == (SIZE, SIZE)
        assert f["images"].chunks == (1, SIZE, SIZE) and f["images"].compression == "gzip"
        assert set(np.unique(f["masks"][()])) == {0, 1, 2, 3}
        variants = f["variant"][()]
        assert set(variants) == {0, 1, 2}
        # variant 0 is the source mask itself, in sorted key order
        keys = sorted(a.keys())
        real_rows = np.flatnonzero(variants == 0)
        for row, key in zip(real_rows, keys):
            assert np.array_equal(f["masks"][row], a[key][()])
            assert json.loads(f["augmentation"][row]) == {"identity": True}
        deformed = np.flatnonzero(variants > 0)[0]
        params = json.loads(f["augmentation"][deformed])
        assert {"rotation_deg", "scale", "translation", "elastic_seed"} <= set(params)
        assert f["source_patient"][0].decode() == "patient0001"
        assert np.allclose(f["spacing"][0], [0.5, 0.7])
        assert f["is_synthetic"][()].all()
        stats = json.loads(f.attrs["augment_stats"])
        assert stats["accepted"] == int((variants > 0).sum())
        assert f.attrs["generator_sha256"] == sha(gen)


def test_deterministic_and_batch_size_independent(setup, tmp_path):
    gen, annos = setup
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    run_sample(gen, [annos], [annos], cfg(), a)
    run_sample(gen, [annos], [annos], cfg(), b)
    run_sample(gen, [annos], [annos], cfg(batch_size=5), c)
    assert sha(a) == sha(b)
    with h5py.File(a) as fa, h5py.File(c) as fc:
        for name in ("images", "masks", "seed", "augmentation"):
            assert np.array_equal(fa[name][()], fc[name][()]), name


def test_vae_generator_makes_distinct_samples(tmp_path):
    gen = make_generator(tmp_path / "vae.pt", use_vae=True)
    annos = make_annos(tmp_path / "anno_train_4CH.h5", n_patients=1)
    out = tmp_path / "samples.h5"
    run_sample(gen, [annos], [annos], cfg(samples_per_mask=2, augment={"n": 0}), out)
    with h5py.File(out) as f:
        assert f["images"].shape[0] == 4
        assert np.array_equal(f["masks"][0], f["masks"][1])
        assert f["seed"][0] != f["seed"][1]
        assert not np.array_equal(f["images"][0], f["images"][1])


def test_grey_levels_and_speckle_of_the_real_images(tmp_path):
    """sample.grey_levels / sample.speckle: real take the records the generator file stores,
    and are refused, naming the key, for a file without them."""
    gen = tmp_path / "g.pt"
    torch.manual_seed(0)
    mcfg = ModelConfig(image_size=SIZE, background_classes=0, ngf=4, ndf=4, spade_hidden=8,
                       n_layers_D=2, use_vae=False, texture_noise=False)
    real = field_images(3, SIZE)
    ids = ["patient0001_4CH_ED", "patient0001_4CH_ES", "patient0002_4CH_ED"]
    save_generator(gen, build_models(mcfg)[0], mcfg, Appearance.measure(real, ids).to_extra())
    annos = make_annos(tmp_path / "anno_train_4CH.h5", n_patients=2)
    plain, both = tmp_path / "plain.h5", tmp_path / "both.h5"
    run_sample(gen, [annos], [annos], cfg(augment={"n": 0}), plain)
    run_sample(gen, [annos], [annos], cfg(augment={"n": 0}, grey_levels="real",
                                          speckle="real"), both)
    with h5py.File(plain) as p, h5py.File(both) as b:
        assert [s.decode() for s in p["style"][()]] == ["none"] * 4
        styles = [s.decode() for s in b["style"][()]]
        assert all(s.startswith("none+grey:") and s.split(":")[1] in ids for s in styles)
        assert b.attrs["grey_levels"] == "real" and b.attrs["speckle"] == "real"
        assert np.array_equal(p["masks"][()], b["masks"][()])
        assert not np.array_equal(p["images"][()], b["images"][()])
        # each image now has the grey levels of the real image it names
        for image, style in zip(b["images"][()], styles):
            target = real[ids.index(style.split(":")[1])]
            field = image > FIELD_LEVEL
            assert abs(image[field].mean() - target[target > FIELD_LEVEL].mean()) < 8
    with pytest.raises(ValueError, match="stores no grey levels.*sample.grey_levels: none"):
        run_sample(make_generator(tmp_path / "old.pt"), [annos], [annos],
                   cfg(grey_levels="real"), tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


def test_own_styles_take_the_style_of_the_masks_own_frame(tmp_path):
    """sample.own_styles: the first samples of each mask variant (real and deformed) take the
    style code and grey levels of the frame the mask was drawn on; the other samples are the
    ones drawn without it, byte for byte."""
    torch.manual_seed(0)
    mcfg = ModelConfig(image_size=SIZE, background_classes=0, ngf=4, ndf=4, spade_hidden=8,
                       n_layers_D=2, z_dim=8, use_vae=True, texture_noise=False)
    ids = [f"patient{p:04d}_4CH_{i}" for p in (1, 2, 3) for i in ("ED", "ES")]
    bank = StyleBank(torch.randn(len(ids), 8), torch.full((len(ids), 8), -4.0), tuple(ids))
    extra = {BANK_KEY: bank.to_extra(), **Appearance.measure(field_images(len(ids), SIZE),
                                                             ids).to_extra()}
    gen = tmp_path / "g.pt"
    save_generator(gen, build_models(mcfg)[0], mcfg, extra)
    annos = make_annos(tmp_path / "anno_train_4CH.h5", n_patients=3)
    out = {k: tmp_path / f"own{k}.h5" for k in (0, 1, 2)}
    for k, path in out.items():
        run_sample(gen, [annos], [annos], cfg(samples_per_mask=2, own_styles=k,
                                              augment={"n": 1}, grey_levels="real"), path)
    files = {k: h5py.File(path) for k, path in out.items()}
    try:
        style = {k: [s.decode() for s in f["style"][()]] for k, f in files.items()}
        frames = [f"real:{p.decode()}_4CH_{i.decode()}" for p, i in
                  zip(files[0]["source_patient"][()], files[0]["instant"][()])]
        first = np.arange(len(frames)) % 2 == 0  # each variant's samples come in pairs
        assert len(frames) > 6 * 2  # the real masks and at least one deformation
        assert all(s == f for s, f in zip(style[2], frames))
        assert [s == f for s, f in zip(style[1], frames)][::2] == [True] * (len(frames) // 2)
        assert sum(s == f for s, f in zip(style[0], frames)) < len(frames) // 2
        # the random ones are untouched; the own ones differ where the frames differ
        for name in ("images", "masks", "seed"):
            assert np.array_equal(files[1][name][~first], files[0][name][~first]), name
            assert np.array_equal(files[1][name][first], files[2][name][first]), name
        changed = np.array(style[1]) != np.array(style[0])
        assert changed.any() and not changed[~first].any()
        assert not np.array_equal(files[1]["images"][changed], files[0]["images"][changed])
    finally:
        for f in files.values():
            f.close()
    with pytest.raises(ValueError, match="sample.own_styles: 3 must be between 0 and "
                                         r"sample.samples_per_mask \(2\)"):
        run_sample(gen, [annos], [annos], cfg(samples_per_mask=2, own_styles=3), tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


def test_mask_only_generator_refuses_several_samples_per_mask(setup, tmp_path):
    gen, annos = setup
    with pytest.raises(ValueError, match="samples_per_mask.*mask-only"):
        run_sample(gen, [annos], [annos], cfg(samples_per_mask=2), tmp_path / "s.h5")
    assert list(tmp_path.iterdir()) == []


def test_mask_only_generator_says_so(setup, tmp_path, caplog):
    gen, annos = setup
    with caplog.at_level(logging.INFO, logger="cardigan"):
        run_sample(gen, [annos], [annos], cfg(augment={"n": 0}), tmp_path / "s.h5")
    assert "would be identical" in caplog.text


def test_image_size_mismatch(setup, tmp_path):
    _, annos = setup
    gen = make_generator(tmp_path / "g128.pt", image_size=128)
    with pytest.raises(MaskError, match="64x64 .*128x128 images"):
        run_sample(gen, [annos], [annos], cfg(), tmp_path / "out" / "s.h5")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_label_count_mismatch(setup, tmp_path):
    _, annos = setup
    gen = make_generator(tmp_path / "g3.pt", label_nc=3)
    with pytest.raises(MaskError, match="label_nc=3"):
        run_sample(gen, [annos], [annos], cfg(), tmp_path / "s.h5")


def test_unknown_labels(setup, tmp_path):
    gen, _ = setup
    annos = make_annos(tmp_path / "anno_train_4CH.h5", n_patients=2)
    with h5py.File(annos, "a") as f:
        f["patient0002_4CH_gt_channel1"][0, 0] = 5
    with pytest.raises(MaskError, match=r"patient0002 4CH ES.*\[5\]"):
        run_sample(gen, [annos], [annos], cfg(), tmp_path / "s.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anno_train_4CH.h5"]


def test_empty_mask_source(setup, tmp_path):
    gen, annos = setup
    empty = tmp_path / "anno_train_4CH.h5"
    h5py.File(empty, "w").close()
    with pytest.raises(MaskError, match="no masks"):
        run_sample(gen, [empty], [annos], cfg(), tmp_path / "s.h5")
    (tmp_path / "user").mkdir()
    with pytest.raises(MaskError, match="no masks"):
        run_sample(gen, [], [annos], cfg(mask_path=str(tmp_path / "user")), tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists()


def test_unwritable_output_folder(setup, tmp_path):
    gen, annos = setup
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(OSError, match="not_a_folder"):
        run_sample(gen, [annos], [annos], cfg(), blocker / "samples.h5")


def test_user_masks_folder(setup, tmp_path, caplog):
    gen, annos = setup
    user = tmp_path / "user"
    user.mkdir()
    rng = np.random.default_rng(3)
    big = toy_heart_mask(128, rng)
    img = sitk.GetImageFromArray(big)
    img.SetSpacing((0.3, 0.2))  # (column, row) in ITK order
    sitk.WriteImage(img, str(user / "case01_2CH_ES_gt.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(toy_heart_mask(SIZE, rng)), str(user / "case02.png"))
    masks = load_user_masks(user)
    assert [(m.patient, m.view, m.instant) for m in masks] == [
        ("case01_2CH_ES_gt", "2CH", "ES"), ("case02", "unknown", "unknown")]
    out = tmp_path / "s.h5"
    with caplog.at_level(logging.INFO, logger="cardigan"):
        run_sample(gen, [], [annos], cfg(mask_path=str(user), augment={"n": 0}), out)
    assert "resized 1 user masks" in caplog.text
    with h5py.File(out) as f:
        assert f["images"].shape == (2, SIZE, SIZE)
        assert set(np.unique(f["masks"][0])) == {0, 1, 2, 3}
        assert np.allclose(f["spacing"][0], [0.4, 0.6])  # 128 -> 64 doubles the spacing
        assert np.isnan(f["spacing"][1]).all()  # PNG: unknown
        assert [s.decode() for s in f["source"][()]] == ["user", "user"]


def test_user_masks_refused(tmp_path):
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    arr = np.zeros((8, 8, 3), np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=True), str(rgb / "m.png"))
    with pytest.raises(MaskError, match="m.png.*channels"):
        load_user_masks(rgb)


def test_user_masks_h5(setup, tmp_path):
    gen, annos = setup
    path = tmp_path / "masks.h5"
    rng = np.random.default_rng(4)
    with h5py.File(path, "w") as f:
        f["masks"] = np.stack([toy_heart_mask(SIZE, rng) for _ in range(3)])
    out = tmp_path / "s.h5"
    run_sample(gen, [], [annos], cfg(mask_path=str(path), augment={"n": 1}), out)
    with h5py.File(out) as f:
        assert f["images"].shape[0] >= 3
        assert f["source_patient"][0].decode() == "masks_00000"
