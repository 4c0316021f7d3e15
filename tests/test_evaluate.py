"""The evaluate stage end to end on tiny hand-made extracted and exported files."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from cardigan.core.labels import STRUCTURES
from cardigan.data.frames import image_key, mask_key, split_paths
from cardigan.evaluate import features, run_evaluate

SIZE = 32
CFG = dict(enabled=True, settings=["real", "synthetic", "mixed"], iterations=3, batch_size=2,
           lr=0.001, seed=0, repeats=2, channels=[4, 8, 16], device="cpu",
           inception_weights=None, mixed_real_fraction=0.5)


def _frame(rng, instant, shift):
    """A crude apical frame: LV cavity, myocardial wall, LA below, speckle-like noise."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = 12 + shift, 16 + shift
    r = 7 if instant == "ED" else 5
    mask = np.zeros((SIZE, SIZE), np.uint8)
    dist = ((yy - cy) / (r + 2.5)) ** 2 + ((xx - cx) / ((r + 2) / 1.6)) ** 2
    mask[dist <= 1] = 2
    mask[((yy - cy) / r) ** 2 + ((xx - cx) / (r / 1.6)) ** 2 <= 1] = 1
    mask[(((yy - cy - r - 6) / 3.5) ** 2 + ((xx - cx) / 4) ** 2 <= 1) & (mask == 0)] = 3
    level = np.array([60, 15, 190, 25], float)[mask]
    image = np.clip(level + rng.normal(0, 15, mask.shape), 0, 255).astype(np.uint8)
    return image, mask


def write_extracted(data_dir, split, n_patients, seed, view="4CH"):
    rng = np.random.default_rng(seed)
    im_path, gt_path = split_paths(data_dir, split, view)
    im_path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(im_path, "w") as fi, h5py.File(gt_path, "w") as fa:
        for p in range(n_patients):
            patient = f"patient{seed * 100 + p + 1:04d}"
            for instant in ("ED", "ES"):
                image, mask = _frame(rng, instant, int(rng.integers(-2, 3)))
                for f, key, arr in ((fi, image_key(patient, view, instant), image),
                                    (fa, mask_key(patient, view, instant), mask)):
                    ds = f.create_dataset(key, data=arr)
                    ds.attrs["spacing"] = (0.6, 0.4)
                    ds.attrs["original_size"] = (SIZE * 2, SIZE * 3)
                    ds.attrs["original_spacing"] = (0.3, 0.133)


def write_synthetic(path, n_synthetic, n_real=0, seed=7):
    """The export contract; ``n_real`` extra rows with is_synthetic false (all-white images)."""
    rng = np.random.default_rng(seed)
    frames = [_frame(rng, ("ED", "ES")[i % 2], int(rng.integers(-2, 3))) for i in range(n_synthetic)]
    images = [f[0] for f in frames] + [np.full((SIZE, SIZE), 255, np.uint8)] * n_real
    masks = [f[1] for f in frames] + [np.zeros((SIZE, SIZE), np.uint8)] * n_real
    n = n_synthetic + n_real
    with h5py.File(path, "w") as f:
        f["images"] = np.stack(images)
        f["masks"] = np.stack(masks)
        f["source_patient"] = [f"patient{i:04d}" for i in range(n)]
        f["view"] = ["4CH"] * n
        f["instant"] = [("ED", "ES")[i % 2] for i in range(n)]
        f["augmentation"] = [json.dumps({"n": 0})] * n
        f["seed"] = np.arange(n)
        f["spacing"] = np.full((n, 2), (0.6, 0.4), np.float32)
        f["is_synthetic"] = np.array([True] * n_synthetic + [False] * n_real)


@pytest.fixture
def inputs(tmp_path):
    data = tmp_path / "data"
    write_extracted(data, "train", 4, seed=1)
    write_extracted(data, "test", 2, seed=2)
    synth = tmp_path / "synthetic.h5"
    write_synthetic(synth, 6, n_real=2)
    return data, synth


def _run(inputs, out, cfg=CFG, source="phantom", threads=1):
    data, synth = inputs
    out.mkdir(exist_ok=True)
    paths = dict(metrics_csv=out / "metrics.csv", dice_png=out / "dice.png",
                 summary_md=out / "summary.md", worst_png=out / "worst.png")
    df = run_evaluate(synth, data, ["4CH"], cfg, source, threads=threads, **paths)
    return df, paths


def test_segmenter_runs_in_worker_processes_give_the_same_results(inputs, tmp_path, caplog):
    """threads=2 trains the U-Nets in two one-thread processes: the same numbers as one after
    another in this process, and the workers' progress lines reach this process's log."""
    one, _ = _run(inputs, tmp_path / "one", threads=1)
    with caplog.at_level("INFO", logger="cardigan"):
        two, _ = _run(inputs, tmp_path / "two", threads=2)
    pd.testing.assert_frame_equal(one, two)
    seeds = {r.getMessage().split(":")[0] for r in caplog.records
             if r.getMessage().startswith("segmenter ")}
    assert seeds == {f"segmenter {s} seed {k}" for s in ("real", "synthetic", "mixed")
                     for k in (0, 1)}


def test_stage_writes_every_promised_row(inputs, tmp_path):
    df, paths = _run(inputs, tmp_path / "out")
    csv = pd.read_csv(paths["metrics_csv"], keep_default_na=False, na_values=[""])
    assert list(csv.columns) == ["setting", "instant", "structure", "metric", "mean", "std", "n"]
    have = set(zip(csv.setting, csv.instant, csv.structure, csv.metric))
    for setting in ("real", "synthetic", "mixed"):
        for instant in ("ED", "ES", "all"):
            for structure in STRUCTURES:
                for metric in ("dice", "dice_seed_std", "hd95", "hd95_undefined"):
                    assert (setting, instant, structure, metric) in have
    for instant in ("ED", "ES", "all"):
        for structure in STRUCTURES:
            assert ("synthetic", instant, structure, "label_fidelity_dice") in have
    for setting in ("synthetic", "mixed"):
        for structure in STRUCTURES:
            assert (setting, "all", structure, "usefulness_dice") in have
    for setting in ("synthetic", "real_test"):
        assert (setting, "all", "all", "frechet_distance_segfeat") in have
        assert (setting, "all", "all", "kid_segfeat") in have
    for setting in ("synthetic", "real"):  # against the real test split
        assert (setting, "all", "all", "frechet_distance_segfeat_test") in have
        assert (setting, "all", "all", "kid_segfeat_test") in have
    for setting in ("real", "synthetic"):
        for region in ("LV_cavity", "myocardium", "LA", "outside"):
            for metric in ("intensity_mean", "intensity_std", "speckle_cv"):
                assert (setting, "all", region, metric) in have
        assert (setting, "all", "all", "brightness_spread") in have
        assert (setting, "all", "all", "feature_spread_segfeat") in have
    assert ("synthetic", "all", "outside", "within_mask_spread") in have
    assert not (csv.metric == "fid_inception").any()
    # two seeds: the seed spread is over 2 runs, the usefulness is a paired difference
    spread = csv[csv.metric == "dice_seed_std"]
    assert (spread.n == 2).all() and (spread["mean"] >= 0).all()
    use = csv[(csv.metric == "usefulness_dice")].set_index(["setting", "structure"])
    dice = csv[(csv.metric == "dice") & (csv.instant == "all")].set_index(["setting", "structure"])
    for st in STRUCTURES:
        assert use.loc[("synthetic", st), "mean"] == pytest.approx(
            dice.loc[("synthetic", st), "mean"] - dice.loc[("real", st), "mean"], abs=1e-5)

    dice = csv[csv.metric == "dice"]
    assert dice["mean"].between(0, 1).all() and (dice.n[dice.instant == "all"] == 4).all()
    assert (dice.n[dice.instant != "all"] == 2).all()
    # Only the 6 generated rows count as synthetic, never the is_synthetic=false ones.
    fid = csv[(csv.metric == "label_fidelity_dice") & (csv.instant == "all")]
    assert (fid.n == 6).all()
    assert csv.set_index(["setting", "metric"]).loc[("synthetic", "kid_segfeat"), "n"] == 6

    assert paths["dice_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["worst_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = paths["summary_md"].read_text()
    assert "Measured on the built-in phantom" in summary
    assert "standard FID (Inception-v3) was not computed" in summary
    assert "## Usefulness" in summary and "synthetic − real" in summary
    assert "## Texture" in summary and "## Diversity" in summary
    assert "0.93" in summary and "0.886" in summary  # references beside ours
    assert "synthetic 6" in summary and "mixed 14" in summary
    assert "a real image with probability 0.5" in summary
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left


def test_stage_is_byte_reproducible(inputs, tmp_path):
    cfg = dict(CFG, settings=["real"])
    _, a = _run(inputs, tmp_path / "a", cfg)
    _, b = _run(inputs, tmp_path / "b", cfg)
    for key in a:
        assert a[key].read_bytes() == b[key].read_bytes(), key


def test_without_real_setting_fidelity_and_distances_are_skipped(inputs, tmp_path):
    df, paths = _run(inputs, tmp_path / "out", dict(CFG, settings=["synthetic"]), source="camus")
    assert set(df[df.metric == "dice"].setting) == {"synthetic"}
    assert not df.metric.isin(["label_fidelity_dice", "kid_segfeat", "frechet_distance_segfeat",
                               "usefulness_dice", "kid_segfeat_test"]).any()
    summary = paths["summary_md"].read_text()
    assert "need the `real`" in summary and "phantom" not in summary


def test_bad_synthetic_file_is_named_and_leaves_no_output(inputs, tmp_path):
    data, _ = inputs
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["images"] = np.zeros((2, SIZE, SIZE), np.uint8)
    with pytest.raises(ValueError, match=r"bad\.h5.*missing dataset"):
        _run((data, bad), tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_image_size_mismatch_is_explained(inputs, tmp_path):
    data, _ = inputs
    small = tmp_path / "small.h5"
    with h5py.File(small, "w") as f:
        f["images"] = np.zeros((2, 16, 16), np.uint8)
        f["masks"] = np.zeros((2, 16, 16), np.uint8)
        f["spacing"] = np.ones((2, 2), np.float32)
        f["instant"] = ["ED", "ES"]
        f["view"] = ["4CH", "4CH"]
        f["is_synthetic"] = [True, True]
    with pytest.raises(ValueError, match="image_size"):
        _run((data, small), tmp_path / "out")


def test_channels_that_do_not_divide_the_image_are_explained(inputs, tmp_path):
    with pytest.raises(ValueError, match="evaluate.channels"):
        _run(inputs, tmp_path / "out", dict(CFG, channels=[2, 2, 2, 2, 2, 2, 2]))


def test_inception_weights_give_the_standard_fid(inputs, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "pt_inception-random.pth"
    torch.save(features.FIDInceptionV3().state_dict(), weights)
    df, paths = _run(inputs, tmp_path / "out", dict(CFG, settings=["synthetic"],
                                                    inception_weights=str(weights)))
    fid = df[df.metric == "fid_inception"].set_index("setting")
    assert set(fid.index) == {"synthetic", "real_test"}
    fid_test = df[df.metric == "fid_inception_test"].set_index("setting")
    assert set(fid_test.index) == {"synthetic", "real"}
    assert np.isfinite(fid["mean"]).all() and fid.loc["synthetic", "n"] == 6
    assert "Standard FID" in paths["summary_md"].read_text()


def test_fid_network_matches_pytorch_fid_layout_and_rejects_wrong_files(tmp_path):
    net = features.FIDInceptionV3()
    keys = net.state_dict().keys()
    # The names and sizes of pytorch-fid's weights file (torchvision Inception3, 1008 classes).
    assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in keys and "AuxLogits.fc.weight" not in keys
    assert net.state_dict()["fc.weight"].shape == (1008, 2048)
    # torchvision's inception_v3(aux_logits=False) has 23,834,568 parameters with 1000 classes.
    assert sum(p.numel() for p in net.parameters()) == 23_834_568 + 8 * 2048 + 8
    x = torch.rand(2, 3, 64, 48)
    assert net.eval()(x).shape == (2, 2048)

    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(ValueError, match="inception_weights.*not a PyTorch state dict"):
        features.load_fid_inception(text)
    other = tmp_path / "unet.pth"
    torch.save(torch.nn.Conv2d(1, 2, 3).state_dict(), other)
    with pytest.raises(ValueError, match="not the FID Inception-v3 weights"):
        features.load_fid_inception(other)
    with pytest.raises(ValueError, match="no such file"):
        features.load_fid_inception(tmp_path / "absent.pth")


def test_augmentation_keeps_image_and_mask_aligned_and_is_seeded():
    from cardigan.evaluate.segmenter import Augment

    rng = np.random.default_rng(0)
    masks = np.stack([_frame(rng, "ED", 0)[1] for _ in range(16)])
    y = torch.from_numpy(masks).long().unsqueeze(1)
    x = (y > 0).float()  # an image that is the mask's foreground
    xa, ya = Augment(3)(x, y)
    xb, yb = Augment(3)(x, y)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xa.shape == x.shape and ya.dtype == torch.long
    assert set(ya.unique().tolist()) <= {0, 1, 2, 3}
    assert not torch.equal(ya, y)  # some samples were warped
    # The same warp moved both: thresholded image and mask foreground agree almost everywhere.
    agree = ((xa > 0.5) == (ya > 0)).float().mean()
    assert agree > 0.98


def test_mixed_batches_hold_the_configured_share_of_real_images():
    from cardigan.evaluate.segmenter import _draw

    gen = torch.Generator().manual_seed(0)
    idx = np.array([_draw(100, 8, gen, (10, 0.5)) for _ in range(500)]).ravel()
    assert idx.min() >= 0 and idx.max() < 100
    assert abs((idx < 10).mean() - 0.5) < 0.03  # uniform draws would give 0.1
    assert len(set(idx[idx < 10])) == 10 and len(set(idx[idx >= 10])) == 90
    uniform = np.array([_draw(100, 8, gen, None) for _ in range(500)]).ravel()
    assert abs((uniform < 10).mean() - 0.1) < 0.03
    with pytest.raises(ValueError, match="both parts"):
        _draw(10, 8, gen, (10, 0.5))


# ------------------------------------------------------------------------------ texture, diversity
def test_speckle_statistic_separates_speckled_from_smooth_images():
    from cardigan.evaluate import texture

    rng = np.random.default_rng(0)
    masks = np.stack([_frame(rng, "ED", 0)[1] for _ in range(4)])
    level = np.array([60, 15, 190, 25], float)[masks]
    smooth = np.clip(level, 0, 255).astype(np.uint8)
    # Rayleigh-distributed amplitude: fully developed speckle
    speckled = np.clip(level * rng.rayleigh(1.0, masks.shape) / 1.25, 0, 255).astype(np.uint8)
    field = texture.imaging_field(speckled)
    s = texture.region_stats(speckled, masks, field)
    f = texture.region_stats(smooth, masks, field)
    for region in ("LV_cavity", "myocardium", "outside"):
        assert np.nanmean(s[region]["speckle_cv"]) > 0.3
        assert np.nanmean(f[region]["speckle_cv"]) < 0.1
        assert np.nanmean(s[region]["intensity_std"]) > np.nanmean(f[region]["intensity_std"])
    assert np.nanmean(f["myocardium"]["intensity_mean"]) == pytest.approx(190)


def test_within_mask_spread_is_zero_for_one_look_and_grows_with_style():
    from cardigan.evaluate import texture

    rng = np.random.default_rng(1)
    image, mask = _frame(rng, "ED", 0)
    masks = np.stack([mask] * 4)
    field = np.ones(mask.shape, bool)
    same = np.stack([image] * 4)
    groups = np.array(["a", "a", "b", "b"])
    assert texture.within_mask_spread(same, masks, groups, field) == (0.0, 0.0, 2)
    gains = np.stack([np.clip(image * g, 0, 255).astype(np.uint8) for g in (0.5, 1.5, 0.5, 1.5)])
    mean, _, n = texture.within_mask_spread(gains, masks, groups, field)
    assert n == 2 and mean > 5
    # no mask sampled twice: nothing to measure
    assert texture.within_mask_spread(same, masks, np.array(list("abcd")), field)[2] == 0


def test_dice_by_image_quality_and_the_worst_image():
    from cardigan.evaluate.report import _quality_section, by_quality

    quality = np.array(["Good", "Poor", "Good", "Medium", ""])
    per_image = {"real": np.array([[0.9, 0.8, 0.95, 0.85, 0.9], [0.9, 0.9, 0.9, 0.9, 0.9]]),
                 "synthetic": np.array([[0.8, 0.5, 0.9, 0.7, 0.8], [0.9, 0.85, 0.9, 0.9, 0.9]])}
    q = by_quality(per_image, ["LV_endo", "LA"], quality)
    assert q["grades"] == [("Good", 2), ("Medium", 1), ("Poor", 1), ("", 1)]
    assert q["mean"]["synthetic"]["Good"] == pytest.approx([0.85, 0.9])
    assert q["mean"]["synthetic"]["Poor"] == pytest.approx([0.5, 0.85])
    assert q["worst"]["real"] == pytest.approx([0.8, 0.9])
    text = "\n".join(_quality_section(None, {"settings": ["real", "synthetic"], "by_quality": q}))
    assert "| synthetic | Poor (1) | 0.500 | 0.850 |" in text
    assert "| real | no grade (1) |" in text
    # the synthetic-trained worst (0.5) is 0.3 below real's (0.8): the verdict says no
    assert "within 0.10 of the real-trained one's worst on every structure: no" in text
    assert "LV_endo -0.300" in text


def test_the_area_predicted_far_from_the_structure():
    from cardigan.evaluate.report import _outside_section, metrics_frame, outside_worst

    def scores(*outside):
        return {"LA": {"outside": np.array(outside)}}

    per_seed = {"real": [scores(0.0, 0.02), scores(0.0, 0.0)],
                "synthetic": [scores(0.1, 0.6), scores(np.nan, 0.4)]}
    worst = outside_worst(per_seed)
    assert worst == {"real": {"LA": pytest.approx(0.01)}, "synthetic": {"LA": pytest.approx(0.5)}}
    rows = [dict(setting=s, instant="all", structure="LA", metric="outside", mean=m, std=0.0, n=2)
            for s, m in (("real", 0.005), ("synthetic", 0.367))]
    text = "\n".join(_outside_section(metrics_frame(rows), {"settings": ["real", "synthetic"],
                                                            "outside_worst": worst}))
    assert "| real | 0.5 (1.0) |" in text and "| synthetic | 36.7 (50.0) |" in text
    assert "more than 5 mm" in text


def test_real_frames_carry_their_grade(tmp_path):
    from cardigan.evaluate.data import load_real

    write_extracted(tmp_path, "test", 2, seed=0)
    real = load_real(tmp_path, "test", ["4CH"])
    assert set(real.quality) == {""}  # no metadata.csv: no grade
    rows = [{"patient": p, "view": "4CH", "instant": i, "image_quality": q}
            for p, q in (("patient0001", "Good"), ("patient0002", "Poor")) for i in ("ED", "ES")]
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", index=False)
    real = load_real(tmp_path, "test", ["4CH"])
    assert sorted(real.quality) == ["Good", "Good", "Poor", "Poor"]
