"""Stage extract end to end on small fixtures: files, keys, attributes, splits, metadata."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
from fixtures_camus import SPACING, write_legacy_h5, write_mhd2019, write_nifti2023, write_split

from cardigan.data.extract import METADATA_COLUMNS, extract
from cardigan.data.frames import iter_frames, load_frames, split_paths


def _patients(out, split, view="4CH"):
    return sorted({f.patient for f in iter_frames(*split_paths(out, split, view))})


def test_nifti2023_official(tmp_path):
    root = write_nifti2023(tmp_path / "camus", n=6, split=(4, 1, 1))
    out = tmp_path / "data"
    summary = extract(root, out, views=["2CH", "4CH"], image_size=32, threads=1)
    assert summary.source_format == "nifti2023"
    assert summary.patients == {"train": 4, "valid": 1, "test": 1}
    assert _patients(out, "train") == [f"patient{k:04d}" for k in range(1, 5)]
    assert _patients(out, "valid", "2CH") == ["patient0005"]
    assert _patients(out, "test") == ["patient0006"]
    frames = load_frames(out, "train", ["4CH"])
    assert len(frames) == 8
    for fr in frames:
        assert fr.image.shape == (32, 32) and fr.image.dtype == np.uint8
        assert fr.mask.dtype == np.uint8 and set(np.unique(fr.mask)) <= {0, 1, 2, 3}
        assert fr.image[:4].mean() > fr.image[-4:].mean() + 50  # apex at the top
        assert (fr.mask[:16] == 3).sum() == 0 and (fr.mask[16:] == 3).sum() > 0
        # 60 x 40 frames stretched to 32 x 32: spacing per axis follows the stretch.
        assert fr.spacing == pytest.approx((SPACING[0] * 60 / 32, SPACING[1] * 40 / 32), rel=1e-6)
    with h5py.File(out / "train_4CH.h5") as f:
        ds = f["patient0001_4CH_im_channel1"]
        assert tuple(ds.attrs["original_size"]) == (60, 40)
        assert ds.attrs["original_spacing"] == pytest.approx(SPACING, rel=1e-6)
        assert f.attrs["split"] == "train" and f.attrs["source_format"] == "nifti2023"
    with h5py.File(out / "anno_test_2CH.h5") as f:
        assert sorted(f) == ["patient0006_2CH_gt_channel0", "patient0006_2CH_gt_channel1"]
    meta = pd.read_csv(out / "metadata.csv")
    assert list(meta.columns) == METADATA_COLUMNS
    assert len(meta) == 6 * 2 * 2
    row = meta[(meta.patient == "patient0002") & (meta.view == "4CH") & (meta.instant == "ES")].iloc[0]
    assert (row.split, row.height, row.width, row.frame, row.image_quality, row.ef) == (
        "train", 60, 40, 12, "Good", 55)
    assert row.source_file == "database_nifti/patient0002/patient0002_4CH_ES.nii.gz"
    assert row.spacing_row_resized == pytest.approx(0.3 * 60 / 32, rel=1e-6)
    for split in ("train", "valid", "test"):
        assert (out / f"preview_{split}.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_masks_never_gain_labels(tmp_path):
    root = write_nifti2023(tmp_path / "camus", n=3, split=(1, 1, 1), size=(123, 77))
    out = tmp_path / "data"
    extract(root, out, image_size=17)  # odd downscale
    for split in ("train", "valid", "test"):
        for fr in load_frames(out, split, ["4CH"]):
            assert set(np.unique(fr.mask)) <= {0, 1, 2, 3}
    extract(root, tmp_path / "up", image_size=256)  # upscale
    for fr in load_frames(tmp_path / "up", "train", ["4CH"]):
        assert set(np.unique(fr.mask)) == {0, 1, 2, 3}


def test_reproducible_across_threads(tmp_path):
    root = write_nifti2023(tmp_path / "camus", n=5, split=(3, 1, 1))
    extract(root, tmp_path / "a", image_size=24, threads=1)
    extract(root, tmp_path / "b", image_size=24, threads=2)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_instant_selection_and_es_before_ed(tmp_path):
    from fixtures_camus import write_cfg

    root = write_nifti2023(tmp_path / "camus", n=3, split=(1, 1, 1))
    # A recording that starts in systole: ES frame 3, ED frame 18.
    write_cfg(root / "database_nifti/patient0001/Info_4CH.cfg", ed=18, es=3)
    out = tmp_path / "data"
    extract(root, out, instants=["ES"], image_size=32)
    with h5py.File(out / "train_4CH.h5") as f:
        assert sorted(f) == ["patient0001_4CH_im_channel1"]
    meta = pd.read_csv(out / "metadata.csv")
    assert meta.instant.unique().tolist() == ["ES"]
    assert meta.set_index("patient").loc["patient0001", "frame"] == 3
    extract(root, tmp_path / "both", image_size=32)
    ed, es = load_frames(tmp_path / "both", "train", ["4CH"])
    assert (ed.instant, es.instant) == ("ED", "ES")
    assert (ed.mask == 1).sum() > (es.mask == 1).sum()  # the ED file, not the earlier frame


def test_mhd2019_official_withheld_and_collisions(tmp_path, caplog):
    root = write_mhd2019(tmp_path / "camus", n_train=9, n_test=3, withheld=(3,))
    out = tmp_path / "data"
    with caplog.at_level("INFO", logger="cardigan"):
        summary = extract(root, out, views=["4CH"], image_size=32)
    assert summary.withheld == 1
    assert "left out 1 patient(s) whose ground truth is withheld: testing/patient0003" in caplog.text
    assert _patients(out, "valid") == ["patient0009"]
    assert _patients(out, "test") == ["patient0010", "patient0011"]
    assert len(_patients(out, "train")) == 8
    meta = pd.read_csv(out / "metadata.csv").drop_duplicates("patient").set_index("patient")
    assert meta.loc["patient0010", "source_patient"] == "testing/patient0001"
    assert meta.loc["patient0010", "source_file"] == "testing/patient0001/patient0001_4CH_ED.mhd"
    assert meta.loc["patient0001", "source_patient"] == "training/patient0001"
    # testing/patient0001 (level 15) and training/patient0001 (level 10) stay distinct.
    test_frames = {f.patient: f for f in load_frames(out, "test", ["4CH"], ["ED"])}
    train_frames = {f.patient: f for f in load_frames(out, "train", ["4CH"], ["ED"])}
    diff = test_frames["patient0010"].image.astype(int) - train_frames["patient0001"].image.astype(int)
    assert np.median(diff) == 5


@pytest.mark.parametrize("mode", ["patient_order", "folder"])
def test_mhd2019_seed_and_folder_split_keep_collisions_apart(tmp_path, mode):
    root = write_mhd2019(tmp_path / "camus", n_train=9, n_test=3)
    split = "patient_order"
    if mode == "folder":
        split = str(tmp_path / "split")
        write_split(tmp_path / "split", ["testing/patient0001", "patient0001", "patient0002",
                                         "testing/patient0002", "patient0012"], (3, 1, 1))
    out = tmp_path / "data"
    extract(root, out, image_size=16, split=split)
    everyone = [p for s in ("train", "valid", "test") for p in _patients(out, s)]
    assert len(everyone) == len(set(everyone))
    if mode == "patient_order":
        assert len(_patients(out, "train")) == 10 and _patients(out, "test") == ["patient0012"]
        assert "patient0010" in _patients(out, "train") and "patient0001" in _patients(out, "train")
    else:
        assert _patients(out, "train") == ["patient0001", "patient0002", "patient0010"]
        assert _patients(out, "valid") == ["patient0011"]
        meta = pd.read_csv(out / "metadata.csv")
        assert len(meta) == 5 * 2  # patients not named by the split files are left out


@pytest.mark.parametrize("trailing", [False, True])
def test_legacy_h5_official(tmp_path, trailing):
    path = write_legacy_h5(tmp_path / "dataset_camus.h5", {"train": 3, "valid": 1, "test": 2},
                         trailing_axis=trailing)
    out = tmp_path / "data"
    extract(path, out, views=["2CH", "4CH"], image_size=16)
    assert _patients(out, "train") == ["patient0001", "patient0002", "patient0003"]
    assert _patients(out, "valid") == ["patient0004"]
    assert _patients(out, "test", "2CH") == ["patient0005", "patient0006"]
    with h5py.File(out / "test_4CH.h5") as f:
        ds = f["patient0005_4CH_im_channel0"]
        assert ds.shape == (16, 16) and ds.dtype == np.uint8
        assert tuple(ds.attrs["original_size"]) == (60, 40)
    meta = pd.read_csv(out / "metadata.csv")
    assert meta.source_format.unique().tolist() == ["legacy_h5"]
    assert meta.set_index(["patient", "view", "instant"]).loc[
        ("patient0005", "4CH", "ES"), "source_file"] == "dataset_camus.h5:/test/patient0001/4CH/im[1]"


def test_empty_split_gets_empty_files(tmp_path):
    root = write_nifti2023(tmp_path / "camus", n=2, split=(2, 0, 0))
    out = tmp_path / "data"
    summary = extract(root, out, image_size=16)
    assert summary.patients == {"train": 2, "valid": 0, "test": 0}
    with h5py.File(out / "valid_4CH.h5") as f:
        assert len(f) == 0 and f.attrs["split"] == "valid"
    assert (out / "preview_test.png").is_file()


def test_cli(tmp_path):
    root = write_nifti2023(tmp_path / "camus", n=3, split=(1, 1, 1))
    out = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "cardigan.cli", "extract", str(root), str(out), "--set", "data.views=[2CH]",
         "--set", "data.image_size=32", "--threads", "2"], capture_output=True, text=True,
        cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (out / "anno_valid_2CH.h5").is_file() and not (out / "train_4CH.h5").exists()
    bad = subprocess.run([sys.executable, "-m", "cardigan.cli", "extract", str(tmp_path), str(out)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 1 and "cannot tell the CAMUS form" in bad.stderr
